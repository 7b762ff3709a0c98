"""Expected calibration error and the reliability bins: against torchmetrics and NumPy, through evaluate() on
one process and on two (a real torchrun, gloo), plain and flip-averaged (--tta)."""

import json
import os
import signal
import subprocess

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import BIN, REPO, cli_env
from torch import nn
from torchmetrics.classification import MulticlassCalibrationError

from lab2.data.device_dataset import DeviceDataset, device_dataloader
from lab2.engine.evaluation import evaluate, flip_averaged_logits
from lab2.explain.plots import reliability_bins, reliability_figure


def _torchmetrics_ece(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    metric = MulticlassCalibrationError(num_classes=probabilities.shape[1], n_bins=15, norm="l1")
    return float(metric(probabilities, labels))


def _numpy_ece(confidences: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """The textbook loop (Guo et al. 2017): bins (lo, hi]."""
    confidences, correct = confidences.astype(np.float64), correct.astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidences > lo) & (confidences <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidences[inside].mean())
    return total


def _fixed_logits(n=2000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=generator) * torch.rand(n, 1, generator=generator) * 4
    labels = torch.randint(0, 10, (n,), generator=generator)
    labels[: n // 2] = logits[: n // 2].argmax(1)  # half right by construction: a model better than chance
    return logits, labels


def test_ece_matches_torchmetrics_and_numpy_on_fixed_logits():
    logits, labels = _fixed_logits()
    probabilities = logits.softmax(1)
    confidences, predictions = probabilities.max(1)
    bins = reliability_bins(confidences, predictions == labels)
    assert bins.counts.sum() == len(labels) and len(bins.counts) == 15
    assert 0.01 < bins.ece < 0.5  # a real gap, not a trivial 0
    assert abs(bins.ece - _torchmetrics_ece(probabilities, labels)) < 1e-6
    assert abs(bins.ece - _numpy_ece(confidences.numpy(), (predictions == labels).numpy())) < 1e-9


def test_a_confidence_of_exactly_one_is_in_the_last_bin():
    """float32 softmax reaches 1.0 for a confident model: it belongs to the last bin (lo, 1], not a 16th."""
    logits = torch.tensor([[60.0] + [0.0] * 9, [0.0] * 10])
    confidences, predictions = logits.softmax(1).max(1)
    assert confidences[0] == 1.0
    bins = reliability_bins(confidences, predictions == torch.tensor([1, 0]))
    assert bins.counts[-1] == 1 and bins.counts[1] == 1 and bins.counts.sum() == 2
    assert abs(bins.ece - _numpy_ece(confidences.numpy(), np.array([False, True]))) < 1e-9


def test_bins_of_parts_add_up_to_the_bins_of_the_whole():
    """What makes the metric exact over processes: the sums of disjoint shards add up."""
    logits, labels = _fixed_logits(seed=1)
    confidences, predictions = logits.softmax(1).max(1)
    whole = reliability_bins(confidences, predictions == labels)
    a = reliability_bins(confidences[:700], (predictions == labels)[:700])
    b = reliability_bins(confidences[700:], (predictions == labels)[700:])
    assert (a.counts + b.counts == whole.counts).all() and (a.correct_sums + b.correct_sums == whole.correct_sums).all()
    np.testing.assert_allclose(a.confidence_sums + b.confidence_sums, whole.confidence_sums, rtol=1e-12)


def test_reliability_figure_draws_every_filled_bin(tmp_path):
    logits, labels = _fixed_logits()
    confidences, predictions = logits.softmax(1).max(1)
    bins = reliability_bins(confidences, predictions == labels)
    fig = reliability_figure(bins, "flip-averaged logits (--tta)")
    ax = fig.axes[0]
    assert "ECE" in ax.get_title() and "--tta" in ax.get_title()
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(int(c) for c in bins.counts if c)
    fig.savefig(tmp_path / "calibration.png")
    assert (tmp_path / "calibration.png").stat().st_size > 1000


class PixelLogits(nn.Module):
    """Logits read off the image, so the test can compute them itself: pixels (0,0,0) and (0,0,31) hold the
    predicted class (a mirror image keeps it) and pixel (0,0,1) its margin, which counts half once mirrored to
    (0,0,30): flip-averaged logits (tta) are less sharp than plain ones."""

    def forward(self, x):
        margin = x[:, 0, 0, 1] / 40 + x[:, 0, 0, 30] / 80
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long().clamp(0, 9), 10).float() * margin[:, None]


def pixel_dataset(n: int = 203):
    """`n` images (not a multiple of the batch size: Accelerate pads the last batch) and their labels."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10
    predicted = torch.where(torch.rand(n, generator=generator) < 0.7, labels, (labels + 3) % 10)
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = images[:, 0, 0, 31] = predicted.to(torch.uint8)
    images[:, 0, 0, 1] = torch.randint(0, 256, (n,), generator=generator, dtype=torch.uint8)
    dataset = DeviceDataset(images, labels, train=False, mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))
    return dataset, images.float(), labels


def expected_ece(tta: bool) -> float:
    """torchmetrics' ECE of the logits the model gives on the whole set in one process."""
    _, images, labels = pixel_dataset()
    model = PixelLogits()
    logits = flip_averaged_logits(model, images) if tta else model(images)
    return _torchmetrics_ece(logits.softmax(1), labels)


@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_reports_the_ece_of_the_logits_it_predicted_from(tta):
    dataset, _, _ = pixel_dataset()
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(device_dataloader(dataset, 50, shuffle=False))
    result = evaluate(PixelLogits(), loader, accelerator, 10, tta=tta)
    assert result.calibration.counts.sum() == 203
    assert abs(result.ece - expected_ece(tta)) < 1e-6
    assert abs(expected_ece(True) - expected_ece(False)) > 0.01  # tta really calibrates other logits


WORKER = """
import json, sys
from accelerate import Accelerator
from lab2.data.device_dataset import device_dataloader
from lab2.engine.evaluation import evaluate
from test_calibration import PixelLogits, pixel_dataset

accelerator = Accelerator(cpu=True)
dataset, _, _ = pixel_dataset()
loader = accelerator.prepare(device_dataloader(dataset, 16, shuffle=False))
results = {}
for tta in (False, True):
    result = evaluate(PixelLogits(), loader, accelerator, 10, tta=tta)
    results["tta" if tta else "plain"] = {"ece": result.ece, "counts": result.calibration.counts.tolist()}
if accelerator.is_main_process:
    with open(sys.argv[1], "w") as f:
        json.dump({**results, "world": accelerator.num_processes}, f)
# Tear the gloo group down before exit, as lab2's own commands do: a group left to the interpreter's exit can
# abort ("terminate called without an active exception") while its threads are destroyed.
accelerator.end_training()
"""


@pytest.mark.slow
def test_ece_is_exact_over_two_processes(tmp_path):
    """A real 2-process torchrun (gloo): 203 images in batches of 16 per process, so Accelerate pads the last
    batch; the gathered ECE equals the one-process torchmetrics value, of plain and of flip-averaged logits."""
    script, out = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(WORKER)
    env = cli_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    # --standalone: a free port of its own, so tests running beside this one cannot collide with it.
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script), str(out)]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun timed out:\n{output}")
    if process.returncode != 0:
        try:  # a worker torchrun left behind
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pytest.fail(f"torchrun failed ({process.returncode}):\n{output}")
    result = json.loads(out.read_text())
    assert result["world"] == 2
    for tta in (False, True):
        gathered = result["tta" if tta else "plain"]
        assert sum(gathered["counts"]) == 203  # no padding duplicates
        assert abs(gathered["ece"] - expected_ece(tta)) < 1e-6
