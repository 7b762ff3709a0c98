"""The course lab's `model_final.pth` in lab2: load it safely, and `lab2-export` it to a lab2 model.safetensors.

    lab2-export model_final.pth [--output model.safetensors] [--model simple_cnn] [--class_names a,b,...]

The lab saved its weights with `torch.save(model.state_dict(), "model_final.pth")`.
lab2's SimpleCNN carries the lab's module names (conv1, bn1, ... fc2), so that
state dict loads as it is. It is read with `torch.load(weights_only=True)`:
only tensors and plain containers are unpickled, never code. The export adds
the metadata lab2-eval and lab2-predict read (model name, classes, a config
with lab2's defaults), so the file then works like any run's model.safetensors.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from lab2.config.train_config import TrainConfig
from lab2.data.cifar_files import CIFAR10_CLASSES
from lab2.errors import UserError
from lab2.models import create_model
from lab2.state.checkpoint import save_model_file
from lab2.state.model_file import LoadedModel, load_exported_model
from lab2.state.run_folder import EXPORT_MARK, check_export_target

LAB_SUFFIXES = (".pth", ".pt")


def is_lab_checkpoint(path: str | Path) -> bool:
    """Whether `path` names a torch.save file (by its suffix) rather than a lab2 run folder or safetensors file."""
    return Path(path).suffix in LAB_SUFFIXES


def read_lab_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `torch.save(model.state_dict(), path)` file, read with weights_only=True, on the CPU.

    A `module.` prefix (a model saved while wrapped in DataParallel/DDP) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--model_path {path}: no such file; give the lab's model_final.pth, a run folder or a model.safetensors."
        )
    try:
        with (
            warnings.catch_warnings()
        ):  # torch warns about a plain pickle's protocol before refusing it: one line is ours
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refuses anything that is not tensors and containers
        if not zipfile.is_zipfile(path):  # pickle.dump's output, not torch.save's archive
            raise UserError(
                f"{path} is a plain pickle file, not a torch.save file, and was not loaded (unpickling it could run "
                "code); where you trust it, re-save the weights with torch.save(model.state_dict(), path)."
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path} holds more than weights and was not loaded ({first}); load only files you trust, as a state dict."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise UserError(
            f"{path} is not a readable torch.save file "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})."
        ) from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"{path} is not a state dict (a dict of tensors); save it with torch.save(model.state_dict(), ...)."
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_lab_model(
    path: str | Path, model_name: str = "simple_cnn", class_names: tuple[str, ...] = CIFAR10_CLASSES
) -> LoadedModel:
    """lab2's `model_name` with the lab's saved weights, in eval mode; the head size comes from the file (fc2)."""
    state = read_lab_state_dict(path)
    head = state.get("fc2.weight")
    num_classes = head.shape[0] if head is not None else len(class_names)
    if num_classes != len(class_names):
        raise UserError(
            f"{path} has {num_classes} output classes but {len(class_names)} class names were given; "
            f"pass --class_names with {num_classes} names."
        )
    model = create_model(model_name, num_classes)
    missing, unexpected = (
        sorted(keys) for keys in (model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys())
    )
    if missing or unexpected:
        raise UserError(
            f"{path} does not hold a {model_name} state dict (missing: {', '.join(missing[:4]) or 'none'}; "
            f"unexpected: {', '.join(unexpected[:4]) or 'none'}); "
            "it must come from the lab's SimpleCNN (conv1, bn1, ... fc2)."
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # same names, other shapes
        raise UserError(f"{path} does not fit {model_name}: {str(exc).splitlines()[-1].strip()}") from None
    model.eval()
    config = TrainConfig(model=model_name)
    return LoadedModel(model, tuple(class_names), config, Path(path))


def load_model_file(model_path: str | Path) -> LoadedModel:
    """Any model lab2 can read: the lab's .pth state dict, a run folder, or a lab2 model.safetensors."""
    return load_lab_model(model_path) if is_lab_checkpoint(model_path) else load_exported_model(model_path)


def export_lab_model(
    source: str | Path,
    output: str | Path,
    model_name: str = "simple_cnn",
    class_names: tuple[str, ...] = CIFAR10_CLASSES,
) -> Path:
    """Write the lab's state dict at `source` as a lab2 model.safetensors at `output`, with lab2's metadata."""
    loaded = load_lab_model(source, model_name, class_names)
    check_export_target(output)  # a new file, or one lab2-export wrote: never a user's or a run's own model
    metadata = {
        "model": model_name,
        "num_classes": len(loaded.class_names),
        "class_names": json.dumps(list(loaded.class_names)),
        "config": json.dumps(loaded.config.to_dict()),
        "source": f"lab state dict {Path(source).name}",
        EXPORT_MARK[0]: EXPORT_MARK[1],  # lets a later export replace this file, and only this kind of file
        "format": "pt",
    }
    return save_model_file(loaded.model.state_dict(), output, metadata)
