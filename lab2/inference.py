"""Loading an exported model.safetensors back into a model, and top-k predictions: shared by lab2-eval and lab2-predict."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lab2.checkpoint import read_exported_model
from lab2.config import TrainConfig, config_from_dict
from lab2.data import CIFAR10_CLASSES
from lab2.models import create_model


@dataclass
class LoadedModel:
    model: nn.Module
    class_names: tuple[str, ...]
    config: TrainConfig  # the training run's configuration, from the file's metadata
    path: Path


def load_exported_model(model_path: str | Path) -> LoadedModel:
    """Build the model a lab2 model.safetensors (or the run folder holding it) describes, weights loaded, in eval mode."""
    state, metadata = read_exported_model(model_path)
    model = create_model(metadata["model"], int(metadata["num_classes"]))
    model.load_state_dict(state)
    model.eval()
    class_names = tuple(json.loads(metadata["class_names"])) if "class_names" in metadata else CIFAR10_CLASSES
    config = config_from_dict(json.loads(metadata["config"])) if "config" in metadata else TrainConfig()
    path = Path(model_path)
    return LoadedModel(model, class_names, config, path / "model.safetensors" if path.is_dir() else path)


@torch.no_grad()
def top_k(model: nn.Module, images: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices), each (B, k), for normalised float images (B, 3, 32, 32)."""
    probabilities = model(images).float().softmax(dim=1)
    return probabilities.topk(min(k, probabilities.shape[1]), dim=1)
