"""The model files lab2 reads (a run's model.safetensors, its metadata checked, or the course lab's
`model_final.pth`), lab2-export from the latter to the former, and top-k predictions.

The lab's weights are read with `torch.load(weights_only=True)`: tensors and plain containers only, never code.
SimpleCNN carries the lab's module names (conv1, bn1, ... fc2), so its state dict loads as it is; the export adds
the metadata lab2-eval and lab2-predict read (model name, classes, a config with lab2's defaults).
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from lab2.config import TrainConfig, check_number
from lab2.data.cifar_files import CIFAR10_CLASSES, MAX_CLASSES
from lab2.errors import ManyUserErrors, UserError
from lab2.flags import config_from_dict, validate_config
from lab2.models import create_model
from lab2.state.files import atomic_write
from lab2.state.run_folder import EXPORT_MARK, check_export_target


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
    """The model a lab2 model.safetensors (or the run folder holding it) describes, loaded, in eval mode. Every
    problem of the metadata and the tensors is one line of one ManyUserErrors."""
    path = Path(model_path)
    file = path / "model.safetensors" if path.is_dir() else path
    state, metadata = read_exported_model(model_path)
    # An older lab2 exported a --torch_compile run with torch.compile's prefix on every name: strip it.
    consume_prefix_in_state_dict_if_present(state, "_orig_mod.")
    problems: list[str] = []
    num_classes = None
    text = metadata.get("num_classes", "10")
    try:
        num_classes = check_number("metadata 'num_classes'", text.strip(), minimum=1, maximum=MAX_CLASSES)
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


# ---- the course lab's model_final.pth ----

LAB_SUFFIXES = (".pth", ".pt")


def is_lab_checkpoint(path: str | Path) -> bool:
    """Whether `path` names a torch.save file (by its suffix) rather than a lab2 run folder or safetensors file."""
    return Path(path).suffix in LAB_SUFFIXES


def read_lab_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `torch.save(model.state_dict(), path)` file, read with weights_only=True, on the CPU, without
    the `module.` prefix of a model saved while wrapped in DataParallel/DDP."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--model_path {path}: no such file; give the lab's model_final.pth, a run folder or a model.safetensors."
        )
    try:
        with warnings.catch_warnings():  # torch warns about a plain pickle before refusing it: the one line is ours
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
    problems = _state_problems(model, state)
    if problems:
        raise UserError(
            f"{path} does not hold a {model_name} state dict ({'; '.join(problems[:3])}); "
            "it must come from the lab's SimpleCNN (conv1, bn1, ... fc2)."
        )
    model.load_state_dict(state)
    model.eval()
    config = TrainConfig(model=model_name)
    return LoadedModel(model, tuple(class_names), config, Path(path))


def load_model_file(model_path: str | Path) -> LoadedModel:
    """Any model lab2 can read: the lab's .pth state dict, a run folder, or a lab2 model.safetensors."""
    return load_lab_model(model_path) if is_lab_checkpoint(model_path) else load_exported_model(model_path)


def load_run_model(model_path: str | Path) -> LoadedModel:
    """load_model_file, and a run folder stopped before its model.safetensors (Ctrl-C, SIGTERM): its newest complete
    checkpoint's weights with the run's config.json, said in one line on stderr. The checkpoint holds no class names:
    they come from the run's CIFAR folder, else CIFAR-10's ten, else the label numbers."""
    # Imported here: lab2.state.checkpoint imports this module.
    import os
    import sys

    from safetensors.torch import load_file

    from lab2.data.cifar import find_cifar10_folder
    from lab2.data.cifar_files import read_class_names
    from lab2.state.checkpoint import latest_good_checkpoint, read_progress

    run = Path(model_path)
    if not run.is_dir() or (run / MODEL_FILE).exists():
        return load_model_file(model_path)
    if not (run / "config.json").is_file():
        raise UserError(
            f"{run} is not a lab2 run folder: a run folder holds config.json with model.safetensors (a "
            "finished run) or checkpoints/ (a stopped one); give a run's --output_dir, a .safetensors or a .pth file."
        )
    checkpoint = latest_good_checkpoint(run / "checkpoints")
    if checkpoint is None:
        raise UserError(
            f"{run}: no such file {MODEL_FILE} and no complete checkpoint in {run / 'checkpoints'} (the "
            "run stopped before its first save); train it again, or give a finished run's folder."
        )
    progress = read_progress(checkpoint)
    try:
        config = validate_config(config_from_dict(json.loads((run / "config.json").read_text(encoding="utf-8"))))
    except (OSError, ValueError, TypeError, UserError) as exc:
        raise UserError(f"{run / 'config.json'} is not a readable lab2 configuration ({exc}).") from None
    folder = None if config.dataset_name else find_cifar10_folder(config.data_dir)
    names = read_class_names(folder) if folder else CIFAR10_CLASSES
    if len(names) != progress["num_classes"]:
        names = tuple(map(str, range(progress["num_classes"])))
    state = load_file(checkpoint / MODEL_FILE)
    consume_prefix_in_state_dict_if_present(state, "_orig_mod.")  # a --torch_compile run's names
    model = create_model(progress["model"], progress["num_classes"])
    model.load_state_dict(state)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank loads it: one line is enough
        print(
            f"lab2: no {MODEL_FILE} in {run} (the run did not finish); using {checkpoint.relative_to(run)} "
            f"(epoch {progress['epoch'] + 1}, batch {progress['batch_in_epoch']}, step {progress['global_step']})",
            file=sys.stderr,
            flush=True,
        )
    return LoadedModel(model.eval(), names, config, checkpoint / MODEL_FILE)


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


MODEL_FILE = "model.safetensors"


def save_model_file(state: dict[str, torch.Tensor], path: str | Path, metadata: dict) -> Path:
    """Write a state dict as safetensors with string `metadata`, atomically (temporary name, then rename)."""
    # safetensors refuses shared or non-contiguous storage; copies are cheap at this size. Bytes written through
    # atomic_write, not safetensors' save_file (which creates its file 0600): the permissions of every other output.
    data = safetensors_bytes(
        {k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata={k: str(v) for k, v in metadata.items()}
    )
    return atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def read_exported_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a model.safetensors file; a run folder may be given for its model."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise UserError(f"--model_path {path}: no such file; give a run folder or its {MODEL_FILE}.")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except Exception as exc:  # safetensors raises its own SafetensorError for damaged headers
        raise UserError(
            f"{path} is not a readable safetensors file ({exc}); re-export it or pick another run."
        ) from None
    if "model" not in metadata:
        raise UserError(f"{path} has no lab2 metadata (model name); it was not written by lab2.")
    return tensors, metadata
