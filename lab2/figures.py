"""Every figure lab2 draws, in one table: its name, its caption, the page that shows it, when the trackers get it.

The run's figures are files, figures/<name>.png, which report.html shows in this order and which
`--overwrite_output_dir` may remove (lab2.state.run_folder); the trackers log them under the same names. A new
figure is one entry here and one drawing function in lab2.explain.plots. Plain data: every layer may import it.
"""

from __future__ import annotations

from typing import NamedTuple


class FigureInfo(NamedTuple):
    name: str
    caption: str
    page: str = "report"  # "report": a run's figures/<name>.png, shown on report.html; "compare": that page only
    every_snapshot: bool = False  # logged at every flow snapshot while training, so not again at the end


FIGURES = (
    FigureInfo("curves", "Loss and accuracy per epoch (train vs eval)"),
    FigureInfo("confusion_matrix", "Confusion matrix on the test split (rows: true class)"),
    FigureInfo("class_accuracy", "Accuracy per class"),
    FigureInfo(
        "calibration", "Reliability diagram: accuracy against confidence per bin (15 bins), with the images per bin"
    ),
    FigureInfo(
        "predictions", "Sample test predictions: most confident mistakes (\u2717, red) and correct ones (\u2713, green)"
    ),
    FigureInfo(
        "gradcam", "Grad-CAM (last Conv2d) on the same predictions: red is where the predicted class's score came from"
    ),
    FigureInfo("gradients", "Gradient flow: mean and max |grad| per layer (last snapshot)", every_snapshot=True),
    FigureInfo("weights", "Weight magnitudes: mean and max |W| per layer (last snapshot)", every_snapshot=True),
    FigureInfo("update_ratio", "Update flow: ||dW|| / ||W|| per layer (last snapshot)", every_snapshot=True),
    FigureInfo("heatmap_grad_mean", "Mean |gradient| per layer over training (layers x snapshots)"),
    FigureInfo(
        "heatmap_weight_mean", "Weight change per layer from its start, ||W - W0|| / ||W0|| (layers x snapshots)"
    ),
    FigureInfo("heatmap_update_ratio", "Update size per layer over training, ||dW|| / ||W|| (layers x snapshots)"),
    FigureInfo(
        "comparison_curves",
        "Per epoch (top) and against training time (bottom, the sum of epoch times)",
        page="compare",
    ),
    FigureInfo("confusion_matrices", "Each run's confusion matrix, shaded by the true-class rate", page="compare"),
)
RUN_FIGURES = tuple(f for f in FIGURES if f.page == "report")  # figures/<name>.png, in the report's order
SNAPSHOT_FIGURES = frozenset(f.name for f in FIGURES if f.every_snapshot)
CAPTIONS = {f.name: f.caption for f in FIGURES}
