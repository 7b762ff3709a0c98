"""Loading an exported model.safetensors back into a model, and top-k predictions: shared by lab2-eval and
lab2-predict."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from lab2.config.command_line import config_from_dict, validate_config
from lab2.config.flag_types import check_int
from lab2.config.train_config import TrainConfig
from lab2.data.cifar_files import CIFAR10_CLASSES, MAX_CLASSES
from lab2.errors import ManyUserErrors, UserError
from lab2.models import create_model
from lab2.state.checkpoint import read_exported_model


@dataclass
class LoadedModel:
    model: nn.Module
    class_names: tuple[str, ...]
    config: TrainConfig  # the training run's configuration, from the file's metadata
    path: Path


MAX_PROBLEM_LINES = 8  # beyond this, one summary line: a wrong file has hundreds of mismatched tensors


def _json_metadata(metadata: dict, key: str, kind: type, problems: list[str]):
    """metadata[key] parsed as JSON of type `kind`, or None with the problem recorded."""
    try:
        value = json.loads(metadata[key])
    except ValueError as exc:
        problems.append(f"metadata '{key}' is not valid JSON ({exc.msg} at character {exc.pos})")
        return None
    if not isinstance(value, kind):
        problems.append(f"metadata '{key}' must be a JSON {kind.__name__}, got {type(value).__name__}")
        return None
    return value


def _state_problems(model: nn.Module, state: dict) -> list[str]:
    """Missing, unexpected and wrongly shaped tensors of `state` against `model`, one line each."""
    expected = model.state_dict()
    problems = [f"tensor '{k}' is missing" for k in expected if k not in state]
    problems += [f"tensor '{k}' is not part of this model" for k in state if k not in expected]
    problems += [
        f"tensor '{k}' has shape {tuple(state[k].shape)}, the model needs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if len(problems) > MAX_PROBLEM_LINES:
        problems = [
            *problems[: MAX_PROBLEM_LINES - 1],
            f"and {len(problems) - MAX_PROBLEM_LINES + 1} more tensor problems",
        ]
    return problems


def load_exported_model(model_path: str | Path) -> LoadedModel:
    """Build the model a lab2 model.safetensors (or the run folder holding it) describes, weights loaded, in eval mode.

    The metadata (num_classes, class_names, config) and the tensors are checked against
    the model first; every problem found is one line of the ManyUserErrors raised.
    """
    path = Path(model_path)
    file = path / "model.safetensors" if path.is_dir() else path
    state, metadata = read_exported_model(model_path)
    # An older lab2 exported a --torch_compile run with torch.compile's prefix on every name: strip it.
    consume_prefix_in_state_dict_if_present(state, "_orig_mod.")
    problems: list[str] = []
    num_classes = None
    text = metadata.get("num_classes", "10")
    try:
        num_classes = check_int("metadata 'num_classes'", text.strip(), minimum=1, maximum=MAX_CLASSES)
    except UserError as error:
        problems.append(str(error).rstrip("."))
    class_names = CIFAR10_CLASSES
    if "class_names" in metadata:
        names = _json_metadata(metadata, "class_names", list, problems)
        if names is not None and (not names or not all(isinstance(n, str) for n in names)):
            problems.append("metadata 'class_names' must be a non-empty list of strings")
        elif names is not None:
            class_names = tuple(names)
    if num_classes is not None and len(class_names) != num_classes:
        problems.append(f"metadata 'class_names' lists {len(class_names)} classes but 'num_classes' is {num_classes}")
    config = TrainConfig()
    if "config" in metadata:
        values = _json_metadata(metadata, "config", dict, problems)
        if values is not None:
            try:
                config = validate_config(config_from_dict(values))
            except (UserError, TypeError) as error:
                problems.append(f"metadata 'config' is not a valid lab2 configuration ({error})")
    model = None
    try:
        model = create_model(metadata["model"], num_classes or 10)
    except UserError as error:
        problems.append(f"metadata 'model': {error}")
    if model is not None and num_classes is not None:
        problems += _state_problems(model, state)
    if problems:
        raise ManyUserErrors(str(file), problems)
    model.load_state_dict(state)
    model.eval()
    return LoadedModel(model, class_names, config, file)


@torch.no_grad()
def top_k(model: nn.Module, images: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices), each (B, k), for normalised float images (B, 3, 32, 32)."""
    probabilities = model(images).float().softmax(dim=1)
    return probabilities.topk(min(k, probabilities.shape[1]), dim=1)
