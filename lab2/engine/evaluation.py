"""Evaluation: loss, accuracy, confusion matrix, per-class accuracy, calibration (ECE) and prediction samples.

Works with any nn.Module and any loader of (images, labels) batches. With a loader that went through
`accelerator.prepare` (both of lab2's pipelines do), `gather_for_metrics` drops the samples Accelerate duplicated
to even out the last batches, so the counts are exact on any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lab2.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from lab2.explain.plots import ReliabilityBins, reliability_bins


@dataclass
class PredictionSamples:
    """Images picked for the predictions grid: uint8 (K, 32, 32, 3), with predicted/true labels and confidence."""

    images: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    confidences: np.ndarray
    inputs: torch.Tensor | None = None  # the same images as the model saw them (normalised float, CPU): for Grad-CAM


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    num_samples: int
    confusion: np.ndarray  # (C, C) int64: rows are true classes, columns predictions
    calibration: ReliabilityBins | None = None  # of the logits the predictions came from (flip-averaged with tta)
    samples: PredictionSamples | None = None

    @property
    def ece(self) -> float | None:
        """Expected calibration error (15 bins) of the test set; None when there is no calibration."""
        return self.calibration.ece if self.calibration is not None else None

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """NaN for a class without test images: it has no accuracy (0.0 read as a class never predicted right)."""
        totals = self.confusion.sum(axis=1)
        return np.divide(np.diag(self.confusion), totals, out=np.full(len(totals), np.nan), where=totals > 0)

    def class_accuracy(self, class_names) -> dict[str, float | None]:
        """summary.json's and eval.json's per-class accuracy: None (JSON null) for a class without test images."""
        accuracy = self.per_class_accuracy
        return {name: None if np.isnan(a) else float(a) for name, a in zip(class_names, accuracy, strict=False)}


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows true class, columns predicted, via one bincount."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class _SamplePool:
    """Keeps, on the device, the most confident mistakes and the first correct predictions seen."""

    def __init__(self, size: int):
        self.size = size
        self.wrong: list[torch.Tensor] | None = None  # [images, preds, labels, conf]
        self.right: list[torch.Tensor] | None = None

    @staticmethod
    def _merge(pool, new, size, by_confidence):
        merged = new if pool is None else [torch.cat([a, b]) for a, b in zip(pool, new, strict=True)]
        if by_confidence:
            keep = merged[3].topk(min(size, len(merged[3]))).indices
            return [t[keep] for t in merged]
        return [t[:size] for t in merged]

    def add(self, images, predictions, labels, confidences):
        wrong = predictions != labels
        right = ~wrong
        batch = (images, predictions, labels, confidences)
        self.wrong = self._merge(self.wrong, [t[wrong] for t in batch], self.size, True)
        if self.right is None or len(self.right[0]) < self.size:
            self.right = self._merge(self.right, [t[right] for t in batch], self.size, False)

    def result(self, mean, std) -> PredictionSamples | None:
        if self.wrong is None:
            return None
        # Half mistakes (most confident first), half correct; either side fills in when the other runs short.
        n_wrong = min(len(self.wrong[0]), max(self.size // 2, self.size - len(self.right[0])))
        n_right = min(len(self.right[0]), self.size - n_wrong)
        parts = [torch.cat([w[:n_wrong], r[:n_right]]).cpu() for w, r in zip(self.wrong, self.right, strict=True)]
        images = parts[0].float() * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return PredictionSamples(
            images, parts[1].numpy(), parts[2].numpy(), parts[3].float().numpy(), inputs=parts[0].float()
        )


def flip_averaged_logits(model, images: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation (--tta): the mean of the float32 logits of `images` (B, C, H, W) and of their mirror
    images (the width axis flipped, as the training augmentation flips: the model has learnt both views)."""
    return (model(images).float() + model(images.flip(3)).float()) / 2


@torch.no_grad()
def evaluate(
    model, loader, accelerator, num_classes: int, num_samples: int = 0, mean=CIFAR10_MEAN, std=CIFAR10_STD, tta=False
) -> EvalResult:
    """Evaluate `model` over `loader` on every process; the result is identical on all of them.

    `num_samples` > 0 also picks images for the predictions grid (main process; `mean`/`std` undo the normalisation
    for display). `tta` averages each image's logits with its mirror image's (`flip_averaged_logits`): twice the
    forward cost. The loss is the plain cross-entropy of those logits, never label-smoothed, so eval/loss stays
    comparable between recipes; the calibration (ECE) is of their softmax too (with `tta`, the flip-averaged ones).
    """
    model.eval()
    pool = _SamplePool(num_samples) if num_samples and accelerator.is_main_process else None
    outputs: list[tuple[torch.Tensor, ...]] = []
    for images, labels in loader:
        with accelerator.autocast():
            logits = flip_averaged_logits(model, images) if tta else model(images)
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        confidences, predictions = logits.float().softmax(dim=1).max(dim=1)
        if pool is not None:
            pool.add(images, predictions, labels, confidences)
        outputs.append(accelerator.gather_for_metrics((predictions, labels, losses, confidences)))
    model.train()
    predictions, labels, losses, confidences = (torch.cat(column) for column in zip(*outputs, strict=True))
    count = int(labels.numel())
    confusion = confusion_matrix(labels, predictions, num_classes).cpu().numpy()
    return EvalResult(
        loss=float(losses.sum()) / max(count, 1),
        accuracy=float(np.trace(confusion)) / max(count, 1),
        num_samples=count,
        confusion=confusion,
        calibration=reliability_bins(confidences, predictions == labels),
        samples=pool.result(mean, std) if pool is not None else None,
    )


def sync_buffers(accelerator, model) -> None:
    """Give every process rank 0's BatchNorm statistics, so evaluation matches the saved weights."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        for buffer in model.buffers():
            broadcast(buffer, from_process=0)
