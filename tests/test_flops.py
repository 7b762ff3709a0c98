import subprocess

import pytest
import torch
from conftest import BIN
from torch import nn

from lab2.explain.flops import count_flops, measured_flops
from lab2.models import MODELS, create_model


class GroupedNet(nn.Module):
    """Grouped and depthwise convolutions, a strided conv and a Linear on a token dimension."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(32, 32, 5, stride=2, padding=2, groups=32)
        self.pointwise = nn.Conv2d(32, 8, 1)
        self.tokens = nn.Linear(16, 12)  # applied to (B, 8*16, 16) "tokens"
        self.head = nn.Linear(8 * 16 * 12, 10)

    def forward(self, x):
        x = self.pointwise(self.depthwise(self.grouped(self.stem(x))))  # (B, 8, 16, 16)
        x = self.tokens(x.flatten(1, 2))  # (B, 128, 12)
        return self.head(x.flatten(1))


def test_simple_cnn_is_exactly_161163264():
    report = count_flops(create_model("simple_cnn"))
    assert report.forward_flops == 161_163_264
    assert report.params == 4_441_482
    assert abs(report.gflops_per_sample - 0.1612) < 1e-4


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registered_models_match_flop_counter_mode(name):
    model = create_model(name)
    assert count_flops(model, with_training=False).forward_flops == measured_flops(model)


def test_grouped_and_depthwise_convs_match_flop_counter_mode():
    model = GroupedNet()
    report = count_flops(model, with_training=False)
    assert report.forward_flops == measured_flops(model)
    grouped = next(layer for layer in report.layers if layer.name == "grouped")
    assert grouped.flops == 2 * (16 // 4) * 32 * 9 * 32 * 32


def test_training_flops_are_measured_not_assumed():
    report = count_flops(create_model("simple_cnn"))
    assert report.training_flops == measured_flops(create_model("simple_cnn"), backward=True)
    # The first conv needs no input gradient, so the ratio is a bit under 3.
    assert 2.9 < report.training_flops / report.forward_flops < 3.0


def test_hooks_are_removed_even_when_forward_fails():
    model = GroupedNet()
    with pytest.raises(RuntimeError):
        count_flops(model, input_shape=(1, 3, 31, 7), with_training=False)  # wrong size breaks the head
    assert all(not m._forward_hooks for m in model.modules())


def test_counting_leaves_the_model_untouched():
    model = create_model("simple_cnn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_flops_command_prints_the_table():
    out = subprocess.run(
        [str(BIN / "lab2-flops"), "--model", "simple_cnn"], capture_output=True, text=True, check=True
    ).stdout
    assert "161,163,264" in out and "4,441,482" in out and "2 FLOPs per multiply-add" in out
    assert "conv4" in out and "46.85%" in out
