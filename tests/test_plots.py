import numpy as np
import pytest

from lab2.explain import plots

CLASSES = ["cat", "dog", "ship"]


def test_confusion_matrix_figure_has_labels_counts_and_normalised_colours():
    fig = plots.confusion_matrix_figure(np.array([[5, 1, 0], [2, 3, 1], [0, 0, 6]]), CLASSES)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert {"5", "3", "6"} <= {t.get_text() for t in ax.texts}
    assert "18 images" in ax.get_title()
    assert np.isclose(ax.images[0].get_array()[0, 0], 5 / 6)


def test_class_accuracy_figure():
    fig = plots.class_accuracy_figure([0.5, 1.0, 0.25], CLASSES)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "accuracy (%)" and [p.get_height() for p in ax.patches] == [50.0, 100.0, 25.0]


def test_predictions_figure_colours_right_and_wrong():
    images = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    fig = plots.predictions_figure(
        images, np.array([0, 1, 2]), np.array([0, 2, 2]), np.array([0.9, 0.8, 0.7]), CLASSES, columns=3
    )
    titles = [ax.title for ax in fig.axes[:3]]
    assert titles[0].get_text().startswith("cat (90%)") and "true: cat" in titles[0].get_text()
    assert [t.get_color() for t in titles] == ["tab:green", "tab:red", "tab:green"]


@pytest.mark.parametrize("kind,label", [("grad", "|grad|"), ("weight", "|W|")])
def test_flow_bar_figure(kind, label):
    fig = plots.flow_bar_figure(["a", "b"], [1e-3, 1e-4], [1e-2, 1e-3], kind, step=200)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == label and "step 200" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]


def test_update_ratio_and_heatmap_figures():
    ax = plots.update_ratio_figure(["a", "b"], [1e-3, 1e-2], step=5).axes[0]
    assert ax.get_ylabel() == "update ratio"
    fig = plots.flow_heatmap_figure(
        ["a", "b"], [200, 400, 600], np.array([[1e-3, 2e-3, 3e-3], [1e-4, 2e-4, 0.0]]), "grad_mean"
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "optimizer step" and [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert ax.images[0].get_array().shape == (2, 3)


def test_curves_figure_and_saving(tmp_path):
    metrics = [
        {"epoch": e, "train_loss": 2 / e, "eval_loss": 2.1 / e, "train_acc": 0.1 * e, "eval_acc": 0.09 * e}
        for e in (1, 2, 3)
    ]
    fig = plots.curves_figure(metrics)
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_title() == "Loss" and acc_ax.get_ylabel() == "accuracy (%)"
    assert [line.get_label() for line in acc_ax.lines] == ["train", "eval"]
    path = plots.save_figure(fig, tmp_path / "figures" / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.figure_to_array(fig).shape[2] == 3


def test_class_accuracy_mean_is_labelled_as_the_mean_over_classes():
    ax = plots.class_accuracy_figure([0.5, 1.0, 0.25], CLASSES).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mean over classes 58.3%"]


def test_update_ratio_band_is_the_rule_of_thumb_and_the_warning_range_is_the_flow_checks():
    from matplotlib.patches import Polygon, Rectangle

    from lab2.explain.flow import UPDATE_RATIO_RANGE

    assert plots.UPDATE_RATIO_RANGE == UPDATE_RATIO_RANGE
    ax = plots.update_ratio_figure(["a", "b"], [1e-3, 1e-2], step=5).axes[0]
    band = next(p for p in ax.patches if isinstance(p, (Polygon, Rectangle)) and p.get_alpha() == 0.15)
    ys = band.get_xy()[:, 1] if isinstance(band, Polygon) else [band.get_y(), band.get_y() + band.get_height()]
    assert (min(ys), max(ys)) == pytest.approx((1e-4, 1e-2))  # in data units (axhspan spans y, not x)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("typical: ~1e-3") and "warning outside 1e-05..0.1" in legend


@pytest.mark.parametrize(("snapshots", "warned"), [(1, True), (4, True), (5, False)])
def test_a_heatmap_with_too_few_snapshots_says_so(snapshots, warned):
    steps = list(range(10, 10 * snapshots + 1, 10))
    ax = plots.flow_heatmap_figure(["a"], steps, np.full((1, snapshots), 1e-3), "grad_mean").axes[0]
    assert ("too few for a trend" in ax.get_title()) == warned
