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
    assert titles[0].get_text().startswith("\u2713 cat (90%)") and "true: cat" in titles[0].get_text()
    assert [t.get_color() for t in titles] == ["tab:green", "tab:red", "tab:green"]
    # A second cue beside the colour, which colour blindness loses: a check mark or a cross, named in the title.
    assert [t.get_text()[0] for t in titles] == ["\u2713", "\u2717", "\u2713"]
    assert "\u2713 right, \u2717 wrong" in fig.get_suptitle()


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
        ["a", "b"], [200, 400, 600], np.array([[1e-3, 2e-3, 3e-3], [1e-4, 2e-4, 0.0]]), "heatmap_grad_mean"
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "optimizer step (a snapshot every 200 steps)" and [
        t.get_text() for t in ax.get_yticklabels()
    ] == ["a", "b"]
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
    fig = plots.class_accuracy_figure([0.5, 1.0, 0.25], CLASSES)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["mean over classes 58.3%"]


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
    ax = plots.flow_heatmap_figure(["a"], steps, np.full((1, snapshots), 1e-3), "heatmap_grad_mean").axes[0]
    assert ("too few for a trend" in ax.get_title()) == warned


# ---------------------------------------------------------------- figures drawn from real statistics (issue 22 §3)


@pytest.fixture(scope="module")
def real(mini_dir):
    """Real statistics: SimpleCNN trained 6 SGD steps on 256 images of the real slice, a flow snapshot at each,
    then evaluated on them (confusion, per-class accuracy, calibration bins, prediction samples)."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator

    from lab2.data.cifar import CIFAR10_MEAN, CIFAR10_STD, read_cifar10_folder
    from lab2.data.device_dataset import DeviceDataset, device_dataloader
    from lab2.engine.evaluation import evaluate
    from lab2.explain.flow import FlowCollector
    from lab2.models import SimpleCNN

    splits = read_cifar10_folder(mini_dir / "cifar-10-batches-py")
    images, labels = splits.test_images[:256], torch.as_tensor(splits.test_labels[:256])
    torch.manual_seed(0)
    model = SimpleCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    flow = FlowCollector(model, histograms="off")
    inputs = (images.float() / 255 - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(CIFAR10_STD)[
        :, None, None
    ]
    for step in range(1, 7):
        batch = slice(64 * (step % 4), 64 * (step % 4 + 1))
        optimizer.zero_grad()
        F.cross_entropy(model(inputs[batch]), labels[batch]).backward()
        flow.before_step()
        optimizer.step()
        flow.after_step(step)
    accelerator = Accelerator(cpu=True)
    dataset = DeviceDataset(images, labels, train=False, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    loader = accelerator.prepare(device_dataloader(dataset, 64, shuffle=False))
    result = evaluate(model, loader, accelerator, 10, num_samples=12, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    return flow, result, list(splits.class_names)


def _extents(fig, artists):
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def test_the_weight_heatmap_shows_each_layers_change_from_its_start_titled_in_words(real):
    from lab2.explain.flow import history_matrix

    flow, _, _ = real
    steps = [s.step for s in flow.history]
    figures = plots.flow_heatmaps(
        flow.history[-1].layers, steps, lambda stat: history_matrix(flow.history, stat).numpy()
    )
    ax = figures["heatmap_weight_mean"].axes[0]
    change = history_matrix(flow.history, "weight_change").numpy()
    assert np.allclose(ax.images[0].get_array(), change) and (change[:, 1:] > change[:, :1]).all()  # it grows
    assert ax.get_title() == "weight change per layer from its start"
    assert figures["heatmap_weight_mean"].axes[1].get_ylabel() == "||W - W0|| / ||W0||"
    assert figures["heatmap_grad_mean"].axes[0].get_title() == "mean |gradient| per layer over training"
    assert all("_" not in f.axes[0].get_title() for f in figures.values())  # words, not variable names


@pytest.mark.parametrize("snapshots", [6, 50])
def test_heatmap_ticks_are_at_snapshot_steps_evenly_labelled(snapshots):
    steps = list(range(10, 10 * snapshots + 1, 10))
    ax = plots.flow_heatmap_figure(["a", "b"], steps, np.full((2, snapshots), 1e-3), "heatmap_grad_mean").axes[0]
    labelled = ax.get_xticks()
    ticks = sorted([*ax.get_xticks(minor=True), *labelled])
    assert ticks == list(range(snapshots))  # a tick per snapshot (labelled or not): none looks missing
    assert len(set(np.diff(labelled))) == 1 and len(labelled) <= 10  # evenly spaced
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(steps[int(i)]) for i in labelled]
    assert ax.get_xlabel() == "optimizer step (a snapshot every 10 steps)"


@pytest.mark.parametrize("snapshots", [1, 3])
def test_a_few_snapshot_heatmap_title_fits_inside_the_figure(snapshots):
    steps = list(range(10, 10 * snapshots + 1, 10))
    for name in plots.HEATMAPS:
        fig = _drawn(plots.flow_heatmap_figure(["conv1", "bn1"], steps, np.full((2, snapshots), 1e-3), name))
        (title,) = _extents(fig, [fig.axes[0].title])
        assert title.x0 >= 0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1, name


def test_calibration_gap_has_the_legends_colour_and_the_counts_clear_the_bars(real):
    _, result, _ = real
    fig = _drawn(plots.reliability_figure(result.calibration, "plain logits"))
    ax = fig.axes[0]
    handles = {t.get_text(): h for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles, strict=True)}
    gap_key = handles["gap to the mean confidence"]
    bars, gaps = ax.containers
    assert len(gaps) and all(p.get_facecolor() == gap_key.get_facecolor() for p in gaps)
    assert all(p.get_hatch() == gap_key.get_hatch() == "//" for p in gaps)
    # No fill, no blend: a gap inside a bar (accuracy above confidence) leaves the bar's blue, up to its top, seen.
    assert all(p.get_facecolor()[3] == 0 and p.get_alpha() in (None, 1) for p in gaps)
    assert all(b.get_facecolor()[3] == 1 for b in bars)
    patches = _extents(fig, [*bars, *gaps])
    counts = _extents(fig, ax.texts)
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(int(c) for c in result.calibration.counts if c)
    assert not any(c.overlaps(p) for c in counts for p in patches)
    assert not any(_extents(fig, [fig.legends[0]])[0].overlaps(p) for p in patches)


def test_the_class_accuracy_legend_covers_no_bar(real):
    _, result, names = real
    fig = _drawn(plots.class_accuracy_figure(result.per_class_accuracy, names))
    ax = fig.axes[0]
    (legend,) = _extents(fig, fig.legends)
    assert not any(legend.overlaps(b) for b in _extents(fig, [*ax.patches, *ax.texts]))


def test_curves_have_integer_epoch_ticks():
    metrics = [
        {"epoch": e, "train_loss": 2 / e, "eval_loss": 2 / e, "train_acc": e / 4, "eval_acc": e / 4} for e in (1, 2, 3)
    ]
    fig = _drawn(plots.curves_figure(metrics))
    for ax in fig.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks())


def test_class_names_matplotlib_would_read_as_math_are_drawn_as_plain_text(real):
    _, result, _ = real
    names = ["$x^$", "a$b$c", "$", "cat", "$\\frac$", "dog", "$$", "$1", "x_$y$", "ship"]
    samples = result.samples
    figures = plots.evaluation_figures(result.confusion, result.per_class_accuracy, samples, names)
    for name, fig in figures.items():
        assert plots.figure_to_array(fig).size, name  # drawing raised on `$x^$` before
    ticks = figures["confusion_matrix"].axes[0].get_xticklabels()
    assert [t._preprocess_math(t.get_text()) for t in ticks][0] == ("$x^$", False)  # shown as written


def test_many_classes_give_a_bounded_figure_that_says_what_it_shows():
    rng = np.random.default_rng(0)
    confusion = np.diag(rng.integers(1, 5, 2000)) + (rng.random((2000, 2000)) < 0.001)
    names = [f"class_{i}" for i in range(2000)]
    fig = plots.confusion_matrix_figure(confusion, names)
    ax = fig.axes[0]
    assert max(fig.get_size_inches()) < 25 and ax.images[0].get_array().shape == (30, 30)
    assert "the 30 most confused of 2000 classes" in ax.get_title()
    shown = plots.most_confused(confusion)
    mistakes = confusion.sum(0) + confusion.sum(1) - 2 * np.diag(confusion)
    assert mistakes[shown].min() >= np.delete(mistakes, shown).max()
    accuracy = np.diag(confusion) / confusion.sum(1)
    fig = plots.class_accuracy_figure(accuracy, names)
    ax = fig.axes[0]
    assert max(fig.get_size_inches()) < 25 and len(ax.patches) == 30
    assert "the 30 least accurate of 2000 classes" in ax.get_title()
    assert max(p.get_height() for p in ax.patches) <= 100 * np.sort(accuracy)[29] + 1e-9
    assert plots.figure_to_array(plots.confusion_matrices_figure([("a", confusion), ("b", confusion)], names)).size


def test_a_class_without_test_images_has_no_accuracy_and_is_left_out_of_the_mean():
    fig = plots.class_accuracy_figure([0.5, float("nan"), 0.25], CLASSES)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["50.0", "n/a", "25.0"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "mean over classes 37.5% (1 without test images left out)"
    ]
    assert "n/a: no test images" in ax.get_title()
