"""Grad-CAM (lab2.explain.gradcam): the map points where the evidence is, the grid is the predictions grid, and a
training run writes, reports and logs it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import BIN, assert_clean_error, run_cli, train_cmd, write_synthetic_folder
from PIL import Image
from torch import nn

from lab2.data.device_dataset import DeviceDataset, device_dataloader
from lab2.engine.evaluation import evaluate
from lab2.errors import UserError
from lab2.explain import gradcam, plots
from lab2.models import SimpleCNN
from lab2.state.run_folder import owned_files


class TopRightQuadrantNet(nn.Module):
    """A conv net whose logits depend on the top-right 16x16 quadrant of a 32x32 image only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 0.1)  # positive: a bright quadrant gives positive activations
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))  # class 0: more activation, class 1: less
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., :16, 16:] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        features = torch.relu(self.conv(x * self.mask))
        return self.fc(features.mean(dim=(2, 3)))


def test_the_heat_map_is_brightest_in_the_quadrant_the_output_depends_on():
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = gradcam.gradcam_heatmaps(TopRightQuadrantNet(), images, targets=[0, 0, 0])
    assert maps.shape == (3, 32, 32) and maps.min() >= 0 and np.isclose(maps.max(), 1)
    for heat in maps:
        quadrants = {
            "top-left": heat[:16, :16].mean(),
            "top-right": heat[:16, 16:].mean(),
            "bottom-left": heat[16:, :16].mean(),
            "bottom-right": heat[16:, 16:].mean(),
        }
        assert max(quadrants, key=quadrants.get) == "top-right", quadrants
        assert quadrants["top-right"] > 10 * quadrants["bottom-left"]  # not a blur across the whole image
        assert (
            np.unravel_index(heat.argmax(), heat.shape)[0] < 16 and np.unravel_index(heat.argmax(), heat.shape)[1] >= 16
        )


class RegisteredOutOfOrder(nn.Module):
    """`late` is assigned first but runs last: the layer Grad-CAM needs is the last to run, not the last declared."""

    def __init__(self):
        super().__init__()
        self.late = nn.Conv2d(8, 8, 3, padding=1)
        self.early = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.late(torch.relu(self.early(x))).mean(dim=(2, 3)))


def test_the_last_conv_layer_is_found_by_running_the_model():
    model = RegisteredOutOfOrder()
    assert gradcam.last_conv_layer(model, torch.zeros(1, 3, 32, 32)) is model.late
    simple = SimpleCNN()
    assert gradcam.last_conv_layer(simple, torch.zeros(1, 3, 32, 32)) is simple.conv4


def test_a_model_without_a_conv_layer_says_why_not():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(UserError, match="runs no Conv2d layer"):
        gradcam.gradcam_heatmaps(model, torch.zeros(2, 3, 32, 32), targets=[0, 1])


def test_gradcam_leaves_the_model_as_it_found_it():
    model = SimpleCNN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradcam.gradcam_heatmaps(model, torch.randn(4, 3, 32, 32), targets=[0, 1, 2, 3])
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm stats untouched


def test_the_gradcam_grid_has_the_images_titles_and_order_of_the_predictions_grid():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (70,), generator=generator)
    mean, std = (0.49, 0.48, 0.45), (0.2, 0.2, 0.2)
    accelerator = Accelerator(cpu=True)
    dataset = DeviceDataset(images, labels, train=False, mean=mean, std=std)
    loader = accelerator.prepare(device_dataloader(dataset, 32, shuffle=False))
    torch.manual_seed(0)
    model = SimpleCNN()
    result = evaluate(model, loader, accelerator, 10, num_samples=12, mean=mean, std=std)
    samples = result.samples
    classes = [f"class{i}" for i in range(10)]
    predictions = plots.evaluation_figures(result.confusion, result.per_class_accuracy, samples, classes)["predictions"]
    explained = gradcam.gradcam_figure(model, samples, classes)
    assert len(samples.images) == 12 and (samples.predictions != samples.labels).any()
    for k in range(12):
        shown, overlaid = predictions.axes[k], explained.axes[k]
        assert np.array_equal(shown.images[0].get_array(), overlaid.images[0].get_array())
        assert (
            shown.title.get_text() == overlaid.title.get_text()
            and shown.title.get_color() == overlaid.title.get_color()
        )
        assert len(overlaid.images) == 2 and overlaid.images[1].get_array().shape == (32, 32)  # the heat map on top
    # The inputs the maps were computed from are the images shown, as the model saw them.
    shown = torch.from_numpy(samples.images).permute(0, 3, 1, 2).float() / 255
    undone = samples.inputs * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.allclose(shown, undone.clamp(0, 1), atol=1 / 255)


@pytest.mark.slow
def test_a_training_run_writes_reports_and_logs_gradcam(tmp_path):
    from tracker_files import tensorboard_events

    data = write_synthetic_folder(tmp_path / "data", num_train=256, num_test=128)
    out = tmp_path / "run"
    result = run_cli(
        train_cmd(
            "--data_dir", data, "--output_dir", out, "--num_train_epochs", 1,
            "--report_to", "tensorboard", "--flow_log_steps", 0,
        )
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "figures" / "gradcam.png").stat().st_size > 10_000
    page = (out / "report.html").read_text()
    assert "<img alt='gradcam'" in page and "Grad-CAM" in page
    assert "gradcam" in tensorboard_events(out / "tensorboard").Tags()["images"]
    # lab2 knows the file as its own: --overwrite_output_dir removes it rather than leaving a stale one behind.
    assert out / "figures" / "gradcam.png" in owned_files(out)


@pytest.fixture
def lab_model(tmp_path):
    """A course-lab style model_final.pth (a SimpleCNN state dict), the quickest real model lab2-predict reads."""
    torch.manual_seed(0)
    path = tmp_path / "model_final.pth"
    torch.save(SimpleCNN().state_dict(), path)
    return path


def _image(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
def test_predict_explain_writes_one_overlay_per_image_beside_its_top3(lab_model, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, twin = _image(tmp_path / "a" / "cat.png", 0), _image(tmp_path / "b" / "cat.png", 1)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    out = tmp_path / "explained"
    cmd = [str(BIN / "lab2-predict"), "--model_path", lab_model, "--explain", out]
    result = run_cli([*cmd, first, broken, twin])
    assert result.returncode == 1 and "broken.png: not a readable image" in result.stderr  # the others still ran
    assert sorted(p.name for p in out.iterdir()) == ["cat.png-2.gradcam.png", "cat.png.gradcam.png"]
    assert result.stdout.splitlines()[0].endswith(f"-> {out / 'cat.png.gradcam.png'}")
    with Image.open(out / "cat.png.gradcam.png") as png:
        assert png.info["Software"] == "lab2-predict --explain" and png.size[0] > 2 * png.size[1]  # image + bars
    records = json.loads(run_cli([*cmd, "--json", first.parent]).stdout)  # a folder of images: its files' overlays
    assert records[0]["explanation"] == str(out / "cat.png.gradcam.png") and len(records[0]["top_k"]) == 3


@pytest.mark.slow
def test_predict_explain_never_replaces_a_file_it_did_not_write(lab_model, tmp_path):
    image = _image(tmp_path / "dog.png", 2)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "dog.png.gradcam.png"
    mine.write_bytes(b"my own file")
    cmd = [str(BIN / "lab2-predict"), "--model_path", lab_model, image]
    assert_clean_error(run_cli([*cmd, "--explain", out]), "lab2 did not write it")
    assert mine.read_bytes() == b"my own file"
    assert_clean_error(run_cli([*cmd, "--explain", image]), "is a file")
    mine.unlink()
    lookalike = out / ".dog.png.gradcam.png.tmp"  # named like a temporary file, but the user's
    lookalike.write_bytes(b"mine too")
    assert run_cli([*cmd, "--explain", out]).returncode == 0
    assert run_cli([*cmd, "--explain", out]).returncode == 0  # its own file it replaces
    assert sorted(p.name for p in out.iterdir()) == [lookalike.name, mine.name]  # no temporary file left
    assert lookalike.read_bytes() == b"mine too" and mine.stat().st_mode & 0o777 == 0o644


def test_predict_explain_into_its_input_folder_skips_its_own_overlays(lab_model, tmp_path, capsys):
    """Issue 23, item 7: `--explain DIR DIR` predicted its own overlays again (cat.png.gradcam.png.gradcam.png)."""
    from lab2.cli import predict as predict_cli

    folder = tmp_path / "photos"
    folder.mkdir()
    _image(folder / "cat.png", 0)
    _image(folder / "mine.gradcam.png", 1)  # the user's own image with a name like lab2's: still an input
    for _ in range(2):
        with pytest.raises(SystemExit) as exit_:
            predict_cli.main(["--model_path", str(lab_model), "--json", "--explain", str(folder), str(folder)])
        assert exit_.value.code == 0
        records = json.loads(capsys.readouterr().out)
        assert [Path(r["image"]).name for r in records] == ["cat.png", "mine.gradcam.png"]
    names = ["cat.png", "cat.png.gradcam.png", "mine.gradcam.png", "mine.gradcam.png.gradcam.png"]
    assert sorted(p.name for p in folder.iterdir()) == names
