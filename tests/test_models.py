import pytest
import torch
import torch.nn.functional as F

from lab2.errors import UserError
from lab2.explain.flops import count_flops
from lab2.models import MODELS, SimpleCNN, create_model


def test_simple_cnn_has_the_course_lab_counts():
    model = SimpleCNN()
    assert sum(p.numel() for p in model.parameters()) == 4_441_482
    assert count_flops(model, with_training=False).forward_flops == 161_163_264


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = SimpleCNN()
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_head_follows_the_number_of_classes():
    assert create_model("simple_cnn", num_classes=100)(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_unknown_model_lists_the_choices():
    with pytest.raises(UserError, match="simple_cnn"):
        create_model("resnet9000")


def test_registry_is_not_empty():
    assert "simple_cnn" in MODELS


def test_the_command_lines_model_names_are_the_registrys():
    """--model's choices live in lab2.config (no torch for --help); they must name exactly the registered models."""
    from lab2.config import MODEL_NAMES

    assert sorted(MODEL_NAMES) == sorted(MODELS)
