import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, train_cmd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from tracker_files import tensorboard_events

from lab2.config import HISTOGRAM_CHOICES, TrainConfig
from lab2.explain.flow import (
    FlowCollector,
    FlowHealth,
    FlowSnapshot,
    flow_parameters,
    history_figures,
    history_matrix,
    read_flow_history,
)
from lab2.models import SimpleCNN
from lab2.state.files import append_jsonl


def _batch():
    torch.manual_seed(0)
    return torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))


LAB_BARS = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "fc1", "fc2"]


def test_flow_has_the_labs_ten_layers_in_model_order():
    """The lab's flow figures have 10 bars: every layer's weight, the BatchNorm scales included, no biases."""
    assert [n for n, _ in flow_parameters(SimpleCNN())] == [f"{layer}.weight" for layer in LAB_BARS]
    x, y = _batch()
    model = SimpleCNN()
    F.cross_entropy(model(x), y).backward()
    collector = FlowCollector(model)
    collector.before_step()
    snapshot = collector.after_step(step=1)
    assert snapshot.layers == LAB_BARS and list(snapshot.to_record()["layers"]) == LAB_BARS
    i = snapshot.layers.index("bn3")
    assert abs(snapshot.grad_mean[i] - model.bn3.weight.grad.abs().mean().item()) < 1e-9


def test_snapshot_values_match_a_direct_computation():
    torch.manual_seed(1)
    model = SimpleCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    collector = FlowCollector(model)
    weight = model.fc1.weight
    expected_grad = weight.grad.abs().mean().item(), weight.grad.abs().max().item()
    before = weight.detach().clone()
    collector.before_step()
    optimizer.step()
    snapshot = collector.after_step(step=1)
    i = snapshot.layers.index("fc1")
    assert abs(snapshot.grad_mean[i] - expected_grad[0]) < 1e-9 and abs(snapshot.grad_max[i] - expected_grad[1]) < 1e-9
    assert abs(snapshot.weight_mean[i] - before.abs().mean().item()) < 1e-7
    ratio = ((weight.detach() - before).norm() / before.norm()).item()
    assert abs(snapshot.update_ratio[i] - ratio) < 1e-6
    assert history_matrix(collector.history, "grad_mean").shape == (10, 1)
    # The change from the weights the collector started with, taken at snapshot time after the steps in between.
    start = collector.start[i].clone()
    optimizer.step()
    collector.before_step()
    optimizer.step()
    snapshot = collector.after_step(step=3)
    change = ((weight.detach() - start).norm() / start.norm()).item()
    assert change > snapshot.update_ratio[i] > 0 and abs(snapshot.weight_change[i] - change) < 1e-6


def test_a_flow_jsonl_written_before_weight_change_reads_back_as_blank(tmp_path):
    record = _snapshot(200, 1e-4, 1e-3).to_record()
    for layer in record["layers"].values():
        del layer["weight_change"]
    append_jsonl(tmp_path / "flow.jsonl", record)
    (old,) = read_flow_history(tmp_path / "flow.jsonl")
    assert old.grad_mean == [1e-4, 1e-3] and np.isnan(old.weight_change).all()


def test_records_lab2_did_not_write_are_skipped_with_one_warning_and_the_rest_draw(tmp_path, capsys):
    """A hand-edited or foreign flow.jsonl (null or text statistics, no layers, a text step) gave a traceback in
    lab2-report and on resume; now its odd records are skipped, and an inf gradient (a diverged run) draws blank."""
    path = tmp_path / "flow.jsonl"
    good = _snapshot(10, 1e-4, 1e-3).to_record()
    append_jsonl(path, good)
    for layers in ({n: {**v, "grad_mean": None} for n, v in good["layers"].items()}, {}, [1, 2], "abc"):
        append_jsonl(path, {**good, "layers": layers})
    append_jsonl(path, {**good, "step": "x"})
    diverged = _snapshot(30, float("inf"), 1e-3).to_record()
    append_jsonl(path, diverged)
    history = read_flow_history(path)
    assert [s.step for s in history] == [10, 30]
    assert capsys.readouterr().err.count("skipped 5 record(s) that are not flow snapshots lab2 wrote") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an inf bar warned in matplotlib's transforms
        figures = history_figures(history)
        FigureCanvasAgg(figures["gradients"]).draw()
    image = figures["heatmap_grad_mean"].axes[0].images[0].get_array()
    assert np.isnan(image.filled(np.nan)[0, 1]) and np.isfinite(image.filled(np.nan)[0, 0])


def test_scaled_gradients_are_read_unscaled():
    """What the loop does under fp16: unscale the GradScaler's gradients, then read them."""
    x, y = _batch()
    torch.manual_seed(2)
    reference = SimpleCNN()
    scaled = SimpleCNN()
    scaled.load_state_dict(reference.state_dict())
    opt_ref = torch.optim.Adam(reference.parameters())
    opt_scaled = torch.optim.Adam(scaled.parameters())
    torch.manual_seed(5)  # the same dropout mask for both models
    F.cross_entropy(reference(x), y).backward()
    ref_collector = FlowCollector(reference)
    ref_collector.before_step()
    opt_ref.step()
    ref = ref_collector.after_step(1)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    torch.manual_seed(5)
    scaler.scale(F.cross_entropy(scaled(x), y)).backward()
    collector = FlowCollector(scaled)
    collector.before_step()  # reading before unscaling shows gradients 4096x too large
    wrong = collector.after_step(0)
    scaler.unscale_(opt_scaled)  # accelerator.unscale_gradients() does exactly this
    collector.before_step()
    scaler.step(opt_scaled)  # knows the gradients are unscaled already: no double unscale
    scaler.update()
    right = collector.after_step(1)
    assert all(abs(w / r - 4096) < 1 for w, r in zip(wrong.grad_mean, ref.grad_mean, strict=True))
    for a, b in zip(right.grad_mean, ref.grad_mean, strict=True):
        assert abs(a - b) <= 1e-6 * b
    for a, b in zip(right.update_ratio, ref.update_ratio, strict=True):
        assert abs(a - b) <= 1e-4 * b  # the same Adam step was taken


def _snapshot(step, grad, ratio):
    return FlowSnapshot(step, ["a", "b"], [grad, 1e-3], [grad, 1e-3], [1.0, 1.0], [1.0, 1.0], [ratio, 1e-3], [0.1, 0.2])


def test_health_warns_once_after_consecutive_bad_snapshots():
    health = FlowHealth(patience=2)
    assert health.check(_snapshot(1, 1e-9, 1e-3)) == []  # one bad snapshot is not yet a trend
    assert health.check(_snapshot(2, 1e-3, 1e-3)) == []  # the streak is broken
    assert health.check(_snapshot(3, 1e-9, 1e-3)) == []
    warnings = health.check(_snapshot(4, 1e-9, 1e-3))
    assert (
        len(warnings) == 1 and "layer a" in warnings[0] and "vanishing" not in warnings[0] and "< 1e-07" in warnings[0]
    )
    assert health.check(_snapshot(5, 1e-9, 1e-3)) == []  # warned once only
    health.check(_snapshot(6, 5e3, 0.5))
    messages = health.check(_snapshot(7, 5e3, 0.5))
    assert any("> 1000" in m for m in messages) and any("update ratio" in m for m in messages)


def test_flow_jsonl_round_trip(tmp_path):
    snapshot = _snapshot(200, 1e-4, 1e-3)
    append_jsonl(tmp_path / "flow.jsonl", snapshot.to_record())
    append_jsonl(tmp_path / "flow.jsonl", _snapshot(400, 2e-4, 2e-3).to_record())
    history = read_flow_history(tmp_path / "flow.jsonl")
    assert [s.step for s in history] == [200, 400] and history[0] == snapshot


def test_histograms_match_numpy_and_come_with_the_snapshot():
    torch.manual_seed(3)
    model = SimpleCNN()
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    collector = FlowCollector(model)
    grad, weight = model.fc2.weight.grad.clone(), model.fc2.weight.detach().clone()
    bias, bn_grad = model.fc2.bias.detach().clone(), model.bn2.bias.grad.clone()
    collector.before_step()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    snapshot = collector.after_step(step=7)
    # All parameter tensors by default, as wandb.watch(log="all"): weights, biases, BatchNorm.
    assert len(list(model.parameters())) == 20  # 4 conv, 4 BatchNorm, 2 linear; weight and bias each
    assert set(snapshot.histograms) == {
        f"{kind}/{name}" for kind in ("gradients", "parameters") for name, _ in model.named_parameters()
    }
    cases = {
        "gradients/fc2.weight": grad,
        "parameters/fc2.weight": weight,
        "parameters/fc2.bias": bias,
        "gradients/bn2.bias": bn_grad,
    }
    for key, tensor in cases.items():
        histogram = snapshot.histograms[key]
        values = tensor.double().numpy().ravel()
        counts, edges = np.histogram(values, bins=64, range=(values.min(), values.max()))
        assert len(histogram.counts) == 64 and histogram.num == values.size
        np.testing.assert_allclose(histogram.edges, edges, rtol=1e-6)
        # Values on a bin edge may fall either side after float32 rounding; nothing else may differ.
        assert np.abs(histogram.counts - counts).sum() <= 2
        assert abs(histogram.total - values.sum()) < 1e-3 * np.abs(values).sum()
        assert abs(histogram.total_squares - np.square(values).sum()) < 1e-4 * np.square(values).sum()


def test_histograms_can_be_limited_to_weights_or_turned_off():
    model = SimpleCNN()
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    keys = {}
    for which in ("all", "on", "weights", "off"):
        collector = FlowCollector(model, histograms=which)
        collector.before_step()
        keys[which] = set(collector.after_step(step=1).histograms)
    assert len(keys["all"]) == 40 and keys["on"] == keys["all"]  # "on", the old spelling, means all
    assert keys["weights"] == {f"{kind}/{layer}.weight" for kind in ("gradients", "parameters") for layer in LAB_BARS}
    assert keys["off"] == set()


def test_histogram_choices_are_the_flags_choices():
    field = next(f for f in TrainConfig.__dataclass_fields__.values() if f.name == "log_histograms")
    assert field.metadata["choices"] == HISTOGRAM_CHOICES and field.default == "all"


def test_a_non_finite_tensor_gets_no_histogram():
    model = SimpleCNN()
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    model.fc2.weight.grad[0, 0] = float("nan")
    collector = FlowCollector(model)
    collector.before_step()
    histograms = collector.after_step(step=1).histograms
    assert (
        "gradients/fc2.weight" not in histograms
        and "parameters/fc2.weight" in histograms
        and "gradients/fc1.weight" in histograms
    )


def test_heatmap_of_a_history_whose_early_snapshots_lack_the_batchnorm_layers():
    """A run resumed from a flow.jsonl written before BatchNorm was tracked: 6 layers first, then 10."""
    from lab2.explain.plots import flow_heatmap_figure

    model = SimpleCNN()
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    collector = FlowCollector(model)
    six = [layer for layer in LAB_BARS if not layer.startswith("bn")]
    old = FlowSnapshot(100, six, [1e-3] * 6, [1e-2] * 6, [0.1] * 6, [1.0] * 6, [1e-3] * 6, [float("nan")] * 6)
    collector.history = [old]
    collector.before_step()
    collector.after_step(step=200)
    matrix = history_matrix(collector.history, "grad_mean")
    assert matrix.shape == (10, 2)
    assert torch.isnan(matrix[LAB_BARS.index("bn1"), 0]) and matrix[LAB_BARS.index("conv1"), 0] == 1e-3
    assert not torch.isnan(matrix[:, 1]).any()
    fig = flow_heatmap_figure(LAB_BARS, [100, 200], matrix.numpy(), "heatmap_grad_mean")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == LAB_BARS


@pytest.mark.slow
def test_log_histograms_weights_through_the_program(mini_dir, tmp_path):
    """--log_histograms weights reaches the collector: TensorBoard holds the 10 weight tensors' histograms only."""
    out = tmp_path / "run"
    flags = ["--data_dir", mini_dir, "--max_train_samples", 64, "--per_device_train_batch_size", 32]
    flags += ["--max_eval_samples", 64, "--num_train_epochs", 1, "--flow_log_steps", 1, "--output_dir", out]
    result = run_cli(train_cmd(*flags, "--report_to", "tensorboard", "--log_histograms", "weights"))
    assert result.returncode == 0, result.stdout + result.stderr
    tags = set(tensorboard_events(out / "tensorboard").Tags()["histograms"])
    assert tags == {f"{kind}/{layer}.weight" for kind in ("gradients", "parameters") for layer in LAB_BARS}
