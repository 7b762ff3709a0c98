"""Statistics to matplotlib Figures, object API on Agg (no pyplot state: headless, safe on a worker thread); nothing
here reads files or trackers. Names and captions are in lab2.figures. Also the reliability bins the ECE comes from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files and tracker images, never windows
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lab2.state.files import atomic_write

MIN_SNAPSHOTS_FOR_TREND = 5  # a heatmap "over training" with fewer columns says so in its title
UPDATE_RATIO_RANGE = (1e-5, 1e-1)  # outside it lab2.explain.flow warns, and update_ratio_figure draws it
MAX_CLASSES_DRAWN = 30  # above it a figure shows the most confused (or least accurate) classes, and says so
RIGHT, WRONG = "\u2713", "\u2717"  # check mark and cross, beside green and red
MATRICES_PER_ROW = 3  # wider rows would shrink each matrix below legibility on a 1100-pixel page
MEASURES = (("loss", "Loss", "cross-entropy loss", 1), ("acc", "Accuracy", "accuracy (%)", 100))  # key, title, y, scale
STAT_TITLES = {"grad": ("Gradient flow", "|grad|"), "weight": ("Weight magnitudes", "|W|")}


def _axes(width: float, height: float):
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _layer_axes(layers: Sequence[str], ylabel: str, title: str):
    fig, ax = _axes(max(6, 0.8 * len(layers) + 2), 4)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(layers)), list(layers), rotation=45, ha="right")
    ax.set(xlabel="layer", ylabel=ylabel, title=title)
    return fig, ax


def _bar_heights(values: Sequence[float]) -> np.ndarray:
    """Heights for a log axis: a zero is drawn as a sliver, an inf or NaN (a diverged run) not at all."""
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), np.maximum(values, 1e-30), np.nan)


def flow_bar_figure(
    layers: Sequence[str], mean: Sequence[float], maximum: Sequence[float], kind: str, step: int
) -> Figure:
    title, label = STAT_TITLES[kind]
    fig, ax = _layer_axes(layers, label, f"{title} at step {step}")
    x = np.arange(len(layers))
    ax.bar(x - 0.2, _bar_heights(maximum), width=0.4, label=f"max {label}", color="tab:orange")
    ax.bar(x + 0.2, _bar_heights(mean), width=0.4, label=f"mean {label}", color="tab:blue")
    ax.legend()
    return fig


def update_ratio_figure(layers: Sequence[str], ratios: Sequence[float], step: int) -> Figure:
    """||dW|| / ||W|| per layer: the ~1e-3 rule of thumb shaded, the range lab2 warns outside of dotted."""
    fig, ax = _layer_axes(layers, "update ratio", f"Update flow at step {step}")
    ax.axhspan(1e-4, 1e-2, color="tab:green", alpha=0.15, label="typical: ~1e-3 per step (rule of thumb)")
    for bound in UPDATE_RATIO_RANGE:
        ax.axhline(bound, color="tab:red", linestyle=":", linewidth=1)
    ax.plot([], [], color="tab:red", linestyle=":", label="warning outside {:g}..{:g}".format(*UPDATE_RATIO_RANGE))
    ax.bar(np.arange(len(layers)), _bar_heights(ratios), color="tab:purple", label="||dW|| / ||W||")
    ax.legend()
    return fig


def flow_figures(s) -> dict[str, Figure]:  # `s`: a lab2.explain.flow.FlowSnapshot
    return {
        "gradients": flow_bar_figure(s.layers, s.grad_mean, s.grad_max, "grad", s.step),
        "weights": flow_bar_figure(s.layers, s.weight_mean, s.weight_max, "weight", s.step),
        "update_ratio": update_ratio_figure(s.layers, s.update_ratio, s.step),
    }


HEATMAPS = {  # figure name -> (flow statistic, title, colour bar label)
    "heatmap_grad_mean": ("grad_mean", "mean |gradient| per layer over training", "mean |gradient|"),
    # Each layer against its own start: |W| itself is ~1 for BatchNorm scales and ~0.01 for conv weights, so on
    # one colour scale every row looked constant.
    "heatmap_weight_mean": ("weight_change", "weight change per layer from its start", "||W - W0|| / ||W0||"),
    "heatmap_update_ratio": ("update_ratio", "update size per layer over training", "||dW|| / ||W|| of one step"),
}


def flow_heatmap_figure(layers: Sequence[str], steps: Sequence[int], values: np.ndarray, name: str) -> Figure:
    """Heatmap `name` (a HEATMAPS key) of (layers, snapshots) values, log colour scale; blank where not positive
    or not finite (a diverged run's inf gradients)."""
    _, title, label = HEATMAPS[name]
    values = np.asarray(values, dtype=float)
    drawn = np.where((values > 0) & np.isfinite(values), values, np.nan)
    norm = LogNorm(vmin=np.nanmin(drawn), vmax=np.nanmax(drawn)) if np.isfinite(drawn).any() else None
    fig, ax = _axes(max(6, 0.25 * len(steps) + 3), max(3, 0.4 * len(layers) + 1.5))
    image = ax.imshow(drawn, aspect="auto", norm=norm, cmap="viridis", interpolation="nearest")
    ax.set_yticks(np.arange(len(layers)), list(layers))
    # A tick per snapshot, every k-th labelled: labels evenly spaced in columns, so no snapshot looks missing.
    ax.set_xticks(np.arange(len(steps)), minor=True)
    labelled = np.arange(0, len(steps), max(1, -(-len(steps) // 10)))
    ax.set_xticks(labelled, [str(steps[i]) for i in labelled])
    gaps = set(np.diff(steps).tolist())
    ax.set_xlabel("optimizer step" + (f" (a snapshot every {gaps.pop()} steps)" if len(gaps) == 1 else ""))
    ax.set_ylabel("layer")
    if len(steps) < MIN_SNAPSHOTS_FOR_TREND:  # on three lines: one line was cut at both edges of a 6-inch figure
        title += f"\nonly {len(steps)} snapshot(s), too few for a trend:\nlower --flow_log_steps or train longer"
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    return fig


def flow_heatmaps(layers: Sequence[str], steps: Sequence[int], matrix) -> dict[str, Figure]:
    """Every HEATMAPS figure; `matrix(statistic)` gives its (layers, snapshots) values (flow.history_matrix)."""
    return {name: flow_heatmap_figure(layers, steps, matrix(stat), name) for name, (stat, _, _) in HEATMAPS.items()}


def plain(names: Sequence) -> list[str]:
    """Names from the data as plain text: matplotlib reads a name with two `$` (`$x^$`) as math, and fails on it."""
    return [str(name).replace("$", r"\$") for name in names]


def most_confused(confusion: np.ndarray) -> np.ndarray:
    """The indices, in class order, of the MAX_CLASSES_DRAWN classes with the most mistakes (as the true or the
    predicted class): what a matrix of 2,000 classes (a 2,000 x 2,000 image, out of memory) is cut to."""
    confusion = np.asarray(confusion)
    mistakes = confusion.sum(axis=0) + confusion.sum(axis=1) - 2 * np.diag(confusion)
    return np.sort(np.argsort(-mistakes, kind="stable")[:MAX_CLASSES_DRAWN])


def _of_all(shown, total: int, which: str) -> str:
    return f": the {len(shown)} {which} of {total} classes" if len(shown) < total else ""


def confusion_matrix_figure(confusion: np.ndarray, class_names: Sequence[str]) -> Figure:
    """The run's confusion matrix, with a colour bar of the true-class rate."""
    fig = confusion_matrices_figure([("Confusion matrix", confusion)], class_names)
    ax = fig.axes[0]
    title = f"Confusion matrix ({int(np.sum(confusion))} images)"
    ax.set_title(title + _of_all(most_confused(confusion), len(confusion), "most confused"))
    fig.colorbar(ax.images[0], ax=ax, label="fraction of the true class")
    return fig


def confusion_matrices_figure(runs: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str]) -> Figure:
    """Each run's (label, matrix) side by side, row-normalised (rows: true class) and annotated with the raw counts,
    the same classes in each (the most confused over all) on one colour scale (0..1 of the whole true-class row),
    so the same shade means the same rate in every run."""
    shown = most_confused(sum(np.asarray(confusion) for _, confusion in runs))
    size = max(5, 0.5 * len(shown) + 2)
    columns = min(len(runs), MATRICES_PER_ROW)
    rows = -(-len(runs) // columns)
    fig = Figure(figsize=(size * columns + 1, (size + 0.6) * rows), layout="constrained")  # + 1: a colour bar
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(runs) :]:
        ax.axis("off")  # the unused places of the last row
    ticks, names = np.arange(len(shown)), plain(np.asarray(class_names, dtype=object)[shown])
    for ax, (label, confusion) in zip(axes, runs, strict=False):
        confusion = np.asarray(confusion)
        totals = confusion.sum(axis=1, keepdims=True)[shown]
        counts = confusion[np.ix_(shown, shown)]
        normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(ticks, names, rotation=45, ha="right", fontsize=9)
        ax.set_yticks(ticks, names, fontsize=9)
        ax.set(xlabel="predicted class", ylabel="true class")
        if len(shown) <= 20:  # counts stay legible up to about 20 classes
            for (i, j), count in np.ndenumerate(counts):
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=colour)
        ax.set_title(f"{label}\n{int(np.sum(confusion))} images", fontsize=9)
    return fig


def class_accuracy_figure(accuracy: Sequence[float], class_names: Sequence[str]) -> Figure:
    """Bar chart of accuracy per class, in percent, with the mean as a dashed line. A class without test images
    has no accuracy (NaN): no bar, "n/a", and left out of the mean. Above MAX_CLASSES_DRAWN classes, the lowest."""
    accuracy = 100 * np.asarray(accuracy, dtype=float)
    measured = ~np.isnan(accuracy)
    shown = np.argsort(np.where(measured, accuracy, np.inf), kind="stable")[:MAX_CLASSES_DRAWN]
    shown = shown if len(accuracy) > MAX_CLASSES_DRAWN else np.arange(len(accuracy))
    fig, ax = _axes(max(6, 0.6 * len(shown) + 2), 4.5)
    bars = ax.bar(np.arange(len(shown)), np.nan_to_num(accuracy[shown]), color="tab:blue")
    values = [f"{a:.1f}" if ok else "n/a" for a, ok in zip(accuracy[shown], measured[shown], strict=True)]
    ax.bar_label(bars, values, fontsize=8)
    # The macro mean: each class counts once, whatever its size (it differs from the overall accuracy).
    mean = accuracy[measured].mean() if measured.any() else float("nan")
    absent = len(accuracy) - int(measured.sum())
    label = f"mean over classes {mean:.1f}%" + (f" ({absent} without test images left out)" if absent else "")
    ax.axhline(mean, color="tab:red", linestyle="--", label=label)
    ax.set_xticks(np.arange(len(shown)), plain(np.asarray(class_names, dtype=object)[shown]), rotation=45, ha="right")
    ax.set(xlabel="class", ylabel="accuracy (%)", ylim=(0, 105))
    note = "; n/a: no test images" if absent else ""
    ax.set_title(f"Accuracy per class{_of_all(shown, len(accuracy), 'least accurate')}{note}")
    fig.legend(loc="outside lower center")  # inside the axes it covered bars
    return fig


def predictions_figure(
    images: np.ndarray, predictions, labels, confidences, class_names: Sequence[str], columns: int = 8
) -> Figure:
    """Grid of uint8 (K, H, W, 3) images titled '<mark> pred (conf) / true': a check mark and green when right, a
    cross and red when wrong (the mark is the cue that survives colour blindness)."""
    names = plain(class_names)
    rows = max(1, -(-len(images) // columns))
    height = 1.9 * rows + 0.6
    fig = Figure(figsize=(1.6 * columns, height))
    # Fixed margins, not a layout engine: every tile is the same size with a two-line title, and measuring 24
    # titles doubled the time this figure took to draw (1.29 s against 0.59 s for 24 images, one thread, here).
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.85 / height, wspace=0.08, hspace=0.5)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for k, ax in enumerate(axes[: len(images)]):
        ax.imshow(images[k], interpolation="nearest")
        right = predictions[k] == labels[k]
        ax.set_title(
            f"{RIGHT if right else WRONG} {names[predictions[k]]} ({100 * confidences[k]:.0f}%)\n"
            f"true: {names[labels[k]]}",
            fontsize=8,
            color="tab:green" if right else "tab:red",
        )
    fig.suptitle(f"Test predictions ({RIGHT} right, {WRONG} wrong; most confident mistakes first)")
    return fig


def evaluation_figures(confusion: np.ndarray, class_accuracy, samples, class_names: Sequence[str]) -> dict[str, Figure]:
    """confusion_matrix, class_accuracy and predictions (when `samples`, a PredictionSamples, holds images)."""
    figures = {
        "confusion_matrix": confusion_matrix_figure(confusion, class_names),
        "class_accuracy": class_accuracy_figure(class_accuracy, class_names),
    }
    if samples is not None and len(samples.images):
        figures["predictions"] = predictions_figure(
            samples.images, samples.predictions, samples.labels, samples.confidences, class_names
        )
    return figures


def _points(metrics: Sequence[dict], key: str, scale: float) -> tuple[list[float], list[float], list[float]]:
    """(epochs, minutes, values) of the records with a number under `key`; minutes sum epoch_time_s, so a stopped
    and resumed run is not charged for the pause."""
    epochs, minutes, values, elapsed = [], [], [], 0.0
    for record in metrics:
        seconds = record.get("epoch_time_s")
        elapsed += seconds if isinstance(seconds, (int, float)) else 0.0
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and isinstance(record.get("epoch"), (int, float)):
            epochs.append(record["epoch"])
            minutes.append(elapsed / 60)
            values.append(scale * value)
    return epochs, minutes, values


def _per_epoch(ax, ylabel: str, title: str) -> None:
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25


def curves_figure(metrics: Sequence[dict]) -> Figure:
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, (measure, title, ylabel, scale) in zip(fig.subplots(1, 2), MEASURES, strict=True):
        for split in ("train", "eval"):
            epochs, _, values = _points(metrics, f"{split}_{measure}", scale)
            ax.plot(epochs, values, marker="o", label=split)
        ax.legend()
        ax.grid(alpha=0.3)
        _per_epoch(ax, ylabel, title)
    return fig


def comparison_curves_figure(runs: Sequence[tuple[str, Sequence[dict]]]) -> Figure:
    """Loss and accuracy of each (label, metrics.jsonl records) in `runs`, train and eval overlaid: per epoch (top)
    and per minute of training (bottom). One colour and marker per run, eval solid and train dashed, so any pair of
    curves can be told apart in print as well as on screen."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    for i, (label, metrics) in enumerate(runs):
        # 10 colours, then each again with another marker: 11 runs or 40, no two look alike.
        style = {"color": f"C{i % 10}", "marker": "osD^vP*Xph"[i // 10 % 10], "markersize": 3}
        for column, (measure, _, _, scale) in enumerate(MEASURES):
            for split, linestyle in (("eval", "-"), ("train", "--")):
                epochs, minutes, values = _points(metrics, f"{split}_{measure}", scale)
                for ax, xs in zip(axes[:, column], (epochs, minutes), strict=True):
                    ax.plot(xs, values, linestyle=linestyle, label=f"{label} {split}", **style)
    for column, (_, title, ylabel, _) in enumerate(MEASURES):
        _per_epoch(axes[0, column], ylabel, f"{title} per epoch")
        axes[1, column].set(xlabel="training time (minutes)", ylabel=ylabel, title=f"{title} against training time")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    # One legend below the panels, a run per entry: four legends of two entries per run covered the curves.
    runs_shown = [line for line in axes[0, 0].lines if line.get_linestyle() == "-"]
    labels = [line.get_label().removesuffix(" eval") for line in runs_shown]
    if runs_shown:
        fig.legend(runs_shown, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize="small")
    fig.suptitle("Runs side by side: solid = eval, dashed = train")
    return fig


# --------------------------------------------------------------------------- calibration
# Expected calibration error as Guo et al. 2017 define it: the confidences (softmax probability of the predicted
# class) in CALIBRATION_BINS equal bins (lo, hi] over 0..1, ECE = sum over bins of count/N * |accuracy - confidence|.
# Kept as three sums per bin, so the ECE and the diagram come from the same numbers. Not torchmetrics'
# MulticlassCalibrationError at run time: it returns the ECE alone, and its bins are [lo, hi), so a confidence of
# exactly 1.0 (common in float32) falls into a 16th bin; tests/test_calibration.py checks the two where they agree.
CALIBRATION_BINS = 15


@dataclass
class ReliabilityBins:
    counts: np.ndarray  # (bins,) int64: test images per bin
    confidence_sums: np.ndarray  # (bins,) float64
    correct_sums: np.ndarray  # (bins,) int64: how many of them were right

    @property
    def ece(self) -> float:
        total = int(self.counts.sum())
        return float(np.abs(self.correct_sums - self.confidence_sums).sum() / total) if total else 0.0


def reliability_bins(confidences, correct, bins: int = CALIBRATION_BINS) -> ReliabilityBins:
    """Bin (N,) top-class confidences in 0..1 and (N,) booleans (prediction right), torch tensors, into `bins`."""
    import torch  # the pages that draw figures need no torch

    confidences = confidences.detach().double().flatten()
    inner_edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64, device=confidences.device)[1:-1]
    # right=False: edge[i-1] < c <= edge[i], so 1.0 lands in the last bin and 0 (impossible for a softmax) in the first.
    index = torch.bucketize(confidences, inner_edges, right=False)
    sums = [torch.bincount(index, weights=w, minlength=bins) for w in (None, confidences, correct.flatten().double())]
    counts, confidence_sums, correct_sums = (t.cpu().numpy() for t in sums)
    return ReliabilityBins(counts.astype(np.int64), confidence_sums, correct_sums.round().astype(np.int64))


def reliability_figure(bins: ReliabilityBins, logits_note: str = "") -> Figure:
    """Reliability diagram: accuracy against confidence per bin, the gap to the bin's mean confidence, the diagonal
    of perfect calibration, and each bin's image count in a band above the bars (empty bins drawn not at all).
    `logits_note` says which logits were calibrated (e.g. flip-averaged)."""
    filled = bins.counts > 0
    counts = bins.counts[filled]
    accuracy, confidence = bins.correct_sums[filled] / counts, bins.confidence_sums[filled] / counts
    left = np.linspace(0.0, 1.0, len(bins.counts) + 1)[:-1][filled]
    fig, ax = _axes(6, 6)
    bar = {"width": 1 / len(bins.counts), "align": "edge"}
    ax.bar(left, accuracy, **bar, color="tab:blue", edgecolor="black", label="accuracy")
    # Hatched, without a fill: where accuracy is above confidence the gap lies inside the blue bar, and a filled
    # one hid the bar's top (a see-through red made a purple the legend did not have). The blue is the accuracy.
    ax.bar(left, confidence - accuracy, bottom=accuracy, **bar, facecolor="none", edgecolor="tab:red", hatch="//",
           zorder=3, label="gap to the mean confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration", zorder=4)
    for x, count in zip(left, counts, strict=True):  # above 1.0, where no bar reaches
        ax.text(x + bar["width"] / 2, 1.02, str(count), ha="center", va="bottom", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.12), yticks=np.linspace(0, 1, 6), ylabel="accuracy")
    ax.set_xlabel("confidence (softmax probability of the predicted class)")
    note = f"{logits_note}; " if logits_note else ""
    ax.set_title(
        f"Reliability: ECE {bins.ece:.4f} ({len(bins.counts)} bins) over {int(bins.counts.sum())} images\n"
        f"{note}numbers at the top: images per bin"
    )
    fig.legend(loc="outside lower center", ncols=3, fontsize="small")
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def figure_to_array(fig: Figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
