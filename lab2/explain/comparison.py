"""Figures that put several runs side by side (`lab2-report RUN_A RUN_B ... --output compare.html`).

Pure functions from numbers to matplotlib Figures, like lab2.explain.plots: one
colour per run, eval solid and train dashed, so any pair of curves can be told
apart in print as well as on screen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

MATRICES_PER_ROW = 3  # wider rows would shrink each matrix below legibility on a 1100-pixel page
CURVES = (  # (metrics.jsonl key, line style, scale to display)
    ("eval_loss", "-", 1),
    ("train_loss", "--", 1),
    ("eval_acc", "-", 100),
    ("train_acc", "--", 100),
)


def _points(metrics: Sequence[dict], key: str, scale: float) -> tuple[list[float], list[float], list[float]]:
    """(epochs, minutes of training so far, values) of the records that have `key` (--eval_strategy no: no eval points).

    Wall time is the running sum of epoch_time_s, the training time of each epoch,
    so a run that was stopped and resumed is not charged for the pause.
    """
    epochs, minutes, values, elapsed = [], [], [], 0.0
    for record in metrics:
        seconds = record.get("epoch_time_s")
        elapsed += seconds if isinstance(seconds, (int, float)) else 0.0
        value = record.get(key)
        if isinstance(value, (int, float)) and isinstance(record.get("epoch"), (int, float)):
            epochs.append(record["epoch"])
            minutes.append(elapsed / 60)
            values.append(scale * value)
    return epochs, minutes, values


def comparison_curves_figure(runs: Sequence[tuple[str, Sequence[dict]]]) -> Figure:
    """Loss and accuracy of every run, train and eval overlaid: per epoch (top) and per minute of training (bottom).

    `runs`: (label, metrics.jsonl records) per run.
    """
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for (label, metrics), colour in zip(runs, colours, strict=True):
        for key, style, scale in CURVES:
            epochs, minutes, values = _points(metrics, key, scale)
            column = 0 if key.endswith("loss") else 1
            split = key.split("_")[0]
            for row, xs in ((0, epochs), (1, minutes)):
                axes[row, column].plot(
                    xs, values, linestyle=style, marker="o", markersize=3, color=colour, label=f"{label} {split}"
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


def confusion_matrices_figure(runs: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str]) -> Figure:
    """Each run's row-normalised confusion matrix (rows: true class) with its counts, side by side, one colour
    scale (0..1 of the true class) for all, so the same shade means the same rate in every run."""
    size = max(4.5, 0.45 * len(class_names) + 2)
    columns = min(len(runs), MATRICES_PER_ROW)
    rows = -(-len(runs) // columns)
    fig = Figure(figsize=(size * columns, (size + 0.6) * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(runs) :]:
        ax.axis("off")  # the unused places of the last row
    ticks = np.arange(len(class_names))
    for ax, (label, confusion) in zip(axes, runs, strict=False):
        confusion = np.asarray(confusion)
        totals = confusion.sum(axis=1, keepdims=True)
        normalised = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
        ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(ticks, class_names, fontsize=7)
        ax.set(xlabel="predicted class", ylabel="true class")
        ax.set_title(f"{label}\n{int(confusion.sum())} images", fontsize=9)
        if len(class_names) <= 20:  # counts stay legible up to about 20 classes
            for (i, j), count in np.ndenumerate(confusion):
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=6, color=colour)
    return fig
