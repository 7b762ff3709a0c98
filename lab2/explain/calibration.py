"""Calibration: can the model's confidence be trusted? Expected calibration error and the reliability diagram.

The usual definition (Guo et al. 2017): split the confidences (softmax probability of the predicted class) into
CALIBRATION_BINS equal bins (lo, hi] over 0..1, and

    ECE = sum over bins of (count / N) * |accuracy(bin) - mean confidence(bin)|

The bins are kept as three sums (count, confidence, correct), so the ECE and the diagram come from the same numbers.
The test-set samples come gathered from every process (without Accelerate's padding duplicates): exact on any count.

Why not torchmetrics' MulticlassCalibrationError at run time: it returns the ECE alone (the diagram needs the bins),
and its bins are [lo, hi), so a confidence of exactly 1.0 (common in float32) falls into a 16th bin.
tests/test_calibration.py checks this module against it wherever the two definitions agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CALIBRATION_BINS = 15


@dataclass
class ReliabilityBins:
    """Per-bin sums over the test set: samples, their confidences, and how many were right."""

    counts: np.ndarray  # (bins,) int64
    confidence_sums: np.ndarray  # (bins,) float64
    correct_sums: np.ndarray  # (bins,) int64

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, len(self.counts) + 1)

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracy per bin (0 where the bin is empty)."""
        return np.divide(self.correct_sums, self.counts, out=np.zeros(len(self.counts)), where=self.counts > 0)

    @property
    def confidence(self) -> np.ndarray:
        """Mean confidence per bin (0 where the bin is empty)."""
        return np.divide(self.confidence_sums, self.counts, out=np.zeros(len(self.counts)), where=self.counts > 0)

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean gap between accuracy and confidence."""
        total = int(self.counts.sum())
        return float(np.abs(self.correct_sums - self.confidence_sums).sum() / total) if total else 0.0


def reliability_bins(confidences: torch.Tensor, correct: torch.Tensor, bins: int = CALIBRATION_BINS) -> ReliabilityBins:
    """Bin (N,) top-class confidences in 0..1 and (N,) booleans (prediction right) into `bins` bins (lo, hi]."""
    confidences = confidences.detach().double().flatten()
    inner_edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64, device=confidences.device)[1:-1]
    # right=False: edge[i-1] < c <= edge[i], so 1.0 lands in the last bin and 0 (impossible for a softmax) in the first.
    index = torch.bucketize(confidences, inner_edges, right=False)
    counts = torch.bincount(index, minlength=bins)
    confidence_sums = torch.bincount(index, weights=confidences, minlength=bins)
    correct_sums = torch.bincount(index, weights=correct.detach().flatten().double(), minlength=bins)
    return ReliabilityBins(
        counts.cpu().numpy().astype(np.int64),
        confidence_sums.cpu().numpy(),
        correct_sums.cpu().numpy().round().astype(np.int64),
    )


def reliability_figure(bins: ReliabilityBins, logits_note: str = ""):
    """Reliability diagram: accuracy against confidence per bin, the diagonal of perfect calibration, and each
    bin's sample count above its bar. `logits_note` says which logits were calibrated (e.g. flip-averaged)."""
    from matplotlib.figure import Figure  # matplotlib only where a figure is drawn, not for the metric

    filled = bins.counts > 0
    left, accuracy, counts = bins.edges[:-1][filled], bins.accuracy[filled], bins.counts[filled]
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.add_subplot()
    bar = {"width": bins.edges[1] - bins.edges[0], "align": "edge"}
    ax.bar(left, accuracy, **bar, edgecolor="black", label="accuracy")
    gap = bins.confidence[filled] - accuracy
    ax.bar(left, gap, bottom=accuracy, **bar, color="tab:red", alpha=0.3, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    for x, y, count in zip(left, accuracy, counts, strict=True):
        ax.text(x + bar["width"] / 2, min(y, 0.93) + 0.02, str(count), ha="center", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), ylabel="accuracy")
    ax.set_xlabel("confidence (softmax probability of the predicted class)")
    note = f"{logits_note}; " if logits_note else ""
    ax.set_title(
        f"Reliability: ECE {bins.ece:.4f} ({len(bins.counts)} bins) over {int(bins.counts.sum())} images\n"
        f"{note}numbers: images per bin"
    )
    ax.legend(loc="upper left")
    return fig
