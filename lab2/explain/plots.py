"""Pure functions from statistics to matplotlib Figures; nothing here reads files or trackers.

Figures are built with the object API (no pyplot state), on the Agg backend,
so they work headless and in worker processes. Callers save or log them and
then `close` them. Their names and captions are in lab2.figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
MATRICES_PER_ROW = 3  # wider rows would shrink each matrix below legibility on a 1100-pixel page
CURVES = (  # the comparison's curves: (metrics.jsonl key, line style, scale to display)
    ("eval_loss", "-", 1),
    ("train_loss", "--", 1),
    ("eval_acc", "-", 100),
    ("train_acc", "--", 100),
)

STAT_TITLES = {
    "grad": ("Gradient flow", "|grad|"),
    "weight": ("Weight magnitudes", "|W|"),
}


def _layer_axes(layers: Sequence[str], ylabel: str, title: str):
    """A figure with one log-scale axes whose x ticks are the layers: the flow bar charts' frame."""
    fig = Figure(figsize=(max(6, 0.8 * len(layers) + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(layers)), list(layers), rotation=45, ha="right")
    ax.set(xlabel="layer", ylabel=ylabel, title=title)
    return fig, ax


def flow_bar_figure(
    layers: Sequence[str], mean: Sequence[float], maximum: Sequence[float], kind: str, step: int
) -> Figure:
    """Bar chart over layers of mean and max of |grad| (kind='grad') or |W| (kind='weight'), log scale."""
    title, label = STAT_TITLES[kind]
    fig, ax = _layer_axes(layers, label, f"{title} at step {step}")
    x = np.arange(len(layers))
    ax.bar(x - 0.2, np.maximum(maximum, 1e-30), width=0.4, label=f"max {label}", color="tab:orange")
    ax.bar(x + 0.2, np.maximum(mean, 1e-30), width=0.4, label=f"mean {label}", color="tab:blue")
    ax.legend()
    return fig


def update_ratio_figure(layers: Sequence[str], ratios: Sequence[float], step: int) -> Figure:
    """Bar chart of ||dW|| / ||W|| per layer, log scale: the ~1e-3 rule of thumb shaded (1e-4..1e-2), and the
    range outside which lab2 warns (UPDATE_RATIO_RANGE) as dotted lines."""
    fig, ax = _layer_axes(layers, "update ratio", f"Update flow at step {step}")
    ax.axhspan(1e-4, 1e-2, color="tab:green", alpha=0.15, label="typical: ~1e-3 per step (rule of thumb)")
    low, high = UPDATE_RATIO_RANGE
    for bound in UPDATE_RATIO_RANGE:
        ax.axhline(bound, color="tab:red", linestyle=":", linewidth=1)
    ax.plot([], [], color="tab:red", linestyle=":", label=f"warning outside {low:g}..{high:g}")
    ax.bar(np.arange(len(layers)), np.maximum(ratios, 1e-30), color="tab:purple", label="||dW|| / ||W||")
    ax.legend()
    return fig


def flow_figures(snapshot) -> dict[str, Figure]:
    """The `gradients`, `weights` and `update_ratio` bar charts of one lab2.explain.flow.FlowSnapshot, keyed by their
    names."""
    s = snapshot
    return {
        "gradients": flow_bar_figure(s.layers, s.grad_mean, s.grad_max, "grad", s.step),
        "weights": flow_bar_figure(s.layers, s.weight_mean, s.weight_max, "weight", s.step),
        "update_ratio": update_ratio_figure(s.layers, s.update_ratio, s.step),
    }


def flow_heatmap_figure(layers: Sequence[str], steps: Sequence[int], values: np.ndarray, statistic: str) -> Figure:
    """Heatmap of one flow statistic, layers x snapshots, log colour scale: the whole history in one picture."""
    values = np.asarray(values, dtype=float)
    positive = values[values > 0]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    fig = Figure(figsize=(max(6, 0.25 * len(steps) + 3), max(3, 0.4 * len(layers) + 1.5)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(
        np.where(values > 0, values, np.nan), aspect="auto", norm=norm, cmap="viridis", interpolation="nearest"
    )
    ax.set_yticks(np.arange(len(layers)), list(layers))
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 8)).astype(int)) if len(steps) else []
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("layer")
    ax.set_title(f"{statistic} over training")
    if len(steps) < MIN_SNAPSHOTS_FOR_TREND:
        ax.set_title(
            f"{statistic} over training: only {len(steps)} snapshot(s), too few for a trend; "
            "lower --flow_log_steps or train longer",
            fontsize="small",
        )
    fig.colorbar(image, ax=ax, label=statistic)
    return fig


def draw_confusion(ax, confusion: np.ndarray, class_names: Sequence[str], fontsize: float = 8):
    """One row-normalised confusion matrix (rows: true class) on `ax`, annotated with the raw counts; returns the
    image, for a colour bar. Every run's matrix and each run's on the comparison page are drawn by it."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    image = ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=fontsize + 2)
    ax.set_yticks(ticks, class_names, fontsize=fontsize + 2)
    ax.set(xlabel="predicted class", ylabel="true class")
    if len(class_names) <= 20:  # counts stay legible up to about 20 classes
        for (i, j), count in np.ndenumerate(confusion):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=fontsize, color=colour)
    return image


def confusion_matrix_figure(confusion: np.ndarray, class_names: Sequence[str]) -> Figure:
    """The run's confusion matrix, with a colour bar of the true-class rate."""
    size = max(5, 0.6 * len(class_names) + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    image = draw_confusion(ax, confusion, class_names)
    ax.set_title(f"Confusion matrix ({int(np.sum(confusion))} images)")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    return fig


def confusion_matrices_figure(runs: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str]) -> Figure:
    """Each run's confusion matrix, side by side, on one colour scale (0..1 of the true class) for all, so the
    same shade means the same rate in every run. `runs`: (label, matrix) per run."""
    size = max(4.5, 0.45 * len(class_names) + 2)
    columns = min(len(runs), MATRICES_PER_ROW)
    rows = -(-len(runs) // columns)
    fig = Figure(figsize=(size * columns, (size + 0.6) * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(runs) :]:
        ax.axis("off")  # the unused places of the last row
    for ax, (label, confusion) in zip(axes, runs, strict=False):
        draw_confusion(ax, confusion, class_names, fontsize=6)
        ax.set_title(f"{label}\n{int(np.sum(confusion))} images", fontsize=9)
    return fig


def class_accuracy_figure(accuracy: Sequence[float], class_names: Sequence[str]) -> Figure:
    """Bar chart of accuracy per class, in percent, with the mean as a dashed line."""
    accuracy = 100 * np.asarray(accuracy, dtype=float)
    fig = Figure(figsize=(max(6, 0.6 * len(class_names) + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(np.arange(len(class_names)), accuracy, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    # The macro mean: each class counts once, whatever its size (it differs from the overall accuracy).
    ax.axhline(accuracy.mean(), color="tab:red", linestyle="--", label=f"mean over classes {accuracy.mean():.1f}%")
    ax.set_xticks(np.arange(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_ylim(0, 105)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per class")
    ax.legend(loc="lower right")
    return fig


def predictions_figure(
    images: np.ndarray, predictions, labels, confidences, class_names: Sequence[str], columns: int = 8
) -> Figure:
    """Grid of uint8 (K, H, W, 3) images titled 'pred (conf) / true', green when right, red when wrong."""
    count = len(images)
    rows = max(1, int(np.ceil(count / columns)))
    height = 1.9 * rows + 0.6
    fig = Figure(figsize=(1.6 * columns, height))
    # Fixed margins, not a layout engine: every tile is the same size with a two-line title, and measuring 24
    # titles doubled the time this figure took to draw (1.29 s against 0.59 s for 24 images, one thread, here).
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.85 / height, wspace=0.08, hspace=0.5)
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= count:
            continue
        ax.imshow(images[k], interpolation="nearest")
        right = predictions[k] == labels[k]
        ax.set_title(
            f"{class_names[predictions[k]]} ({100 * confidences[k]:.0f}%)\ntrue: {class_names[labels[k]]}",
            fontsize=8,
            color="tab:green" if right else "tab:red",
        )
    fig.suptitle("Test predictions (most confident mistakes first)")
    return fig


def evaluation_figures(confusion: np.ndarray, class_accuracy, samples, class_names: Sequence[str]) -> dict[str, Figure]:
    """confusion_matrix, class_accuracy and (when `samples` holds images) predictions, keyed by their file/tracker
    names.

    `samples` has .images, .predictions, .labels and .confidences (lab2.engine.evaluation.PredictionSamples) or is None.
    """
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
    """(epochs, minutes of training so far, values) of the records with a number under `key` (--eval_strategy no:
    no eval points).

    Wall time is the running sum of epoch_time_s, the training time of each epoch,
    so a run that was stopped and resumed is not charged for the pause.
    """
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


def curves_figure(metrics: Sequence[dict]) -> Figure:
    """Loss and accuracy per epoch, train vs eval, from one run's metrics.jsonl records."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, measure, scale in ((loss_ax, "loss", 1), (acc_ax, "acc", 100)):
        for split in ("train", "eval"):
            epochs, _, values = _points(metrics, f"{split}_{measure}", scale)
            ax.plot(epochs, values, marker="o", label=split)
        ax.legend()
        ax.grid(alpha=0.3)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    return fig


def comparison_curves_figure(runs: Sequence[tuple[str, Sequence[dict]]]) -> Figure:
    """Loss and accuracy of every run, train and eval overlaid: per epoch (top) and per minute of training (bottom).

    `runs`: (label, metrics.jsonl records) per run. One colour and marker per run, eval solid and train dashed,
    so any pair of curves can be told apart in print as well as on screen.
    """
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    for i, (label, metrics) in enumerate(runs):
        # 10 colours, then each again with another marker: 11 runs or 40, no two look alike.
        colour, marker = f"C{i % 10}", "osD^vP*Xph"[i // 10 % 10]
        for key, style, scale in CURVES:
            epochs, minutes, values = _points(metrics, key, scale)
            column = 0 if key.endswith("loss") else 1
            split = key.split("_")[0]
            for row, xs in ((0, epochs), (1, minutes)):
                axes[row, column].plot(
                    xs, values, linestyle=style, marker=marker, markersize=3, color=colour, label=f"{label} {split}"
                )
    for column, (title, ylabel) in enumerate((("Loss", "cross-entropy loss"), ("Accuracy", "accuracy (%)"))):
        axes[0, column].set(xlabel="epoch", ylabel=ylabel, title=f"{title} per epoch")
        axes[0, column].xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.2
        axes[1, column].set(xlabel="training time (minutes)", ylabel=ylabel, title=f"{title} against wall time")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle("Runs side by side: solid = eval, dashed = train")
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as PNG atomically (temporary name, then rename) and return the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB uint8 (H, W, 3) pixels of `fig`, for trackers that take arrays."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
