"""The model files lab2 reads and writes: a run's model.safetensors (its metadata checked), a stopped run's newest
checkpoint, the course lab's `model_final.pth`; and top-k predictions.

The lab's weights are read with `torch.load(weights_only=True)`: tensors and plain containers only, never code.
SimpleCNN carries the lab's module names (conv1, bn1, ... fc2), so its state dict loads as it is.
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
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from lab2.config import TrainConfig, check_number
from lab2.data.cifar import find_cifar10_folder
from lab2.data.cifar_files import CIFAR10_CLASSES, MAX_CLASSES, read_class_names
from lab2.errors import ManyUserErrors, UserError
from lab2.flags import config_from_dict, validate_config
from lab2.models import create_model
from lab2.state.files import atomic_write

MODEL_FILE = "model.safetensors"
MAX_PROBLEM_LINES = 8  # beyond this, one summary line: a wrong file has hundreds of mismatched tensors


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on the CPU
    class_names: tuple[str, ...]
    config: TrainConfig  # the training run's configuration, from the file's metadata
    path: Path  # the file the weights came from


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
    path = Path(path) / MODEL_FILE if Path(path).is_dir() else Path(path)
    if not path.is_file():
        raise UserError(f"--model_path {path}: no such file; give a run folder or its {MODEL_FILE}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError for damaged headers
        raise UserError(
            f"{path} is not a readable safetensors file ({exc}); re-export it or pick another run."
        ) from None
    if "model" not in metadata:
        raise UserError(f"{path} has no lab2 metadata (model name); it was not written by lab2.")
    return tensors, metadata


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
        more = len(problems) - MAX_PROBLEM_LINES + 1
        problems = [*problems[: MAX_PROBLEM_LINES - 1], f"and {more} more tensor problems"]
    return problems


def _json_metadata(metadata: dict, key: str, kind: type, problems: list[str]):
    """metadata[key] parsed as JSON of type `kind`; None when it is absent, or with the problem recorded."""
    if key not in metadata:
        return None
    try:
        value = json.loads(metadata[key])
    except ValueError as exc:
        problems.append(f"metadata '{key}' is not valid JSON ({exc.msg} at character {exc.pos})")
        return None
    if not isinstance(value, kind):
        problems.append(f"metadata '{key}' must be a JSON {kind.__name__}, got {type(value).__name__}")
        return None
    return value


def load_exported_model(model_path: str | Path) -> LoadedModel:
    """The model a lab2 model.safetensors (or the run folder holding it) describes, loaded, in eval mode. Every
    problem of the metadata and the tensors is one line of one ManyUserErrors."""
    file = Path(model_path) / MODEL_FILE if Path(model_path).is_dir() else Path(model_path)
    state, metadata = read_exported_model(file)
    consume_prefix_in_state_dict_if_present(state, "_orig_mod.")  # an older lab2's export of a --torch_compile run
    problems: list[str] = []
    try:
        text = metadata.get("num_classes", "10").strip()
        num_classes = check_number("metadata 'num_classes'", text, minimum=1, maximum=MAX_CLASSES)
    except UserError as error:
        num_classes = None
        problems.append(str(error).rstrip("."))
    class_names, names = CIFAR10_CLASSES, _json_metadata(metadata, "class_names", list, problems)
    if names is not None and (not names or not all(isinstance(n, str) for n in names)):
        problems.append("metadata 'class_names' must be a non-empty list of strings")
    elif names is not None:
        class_names = tuple(names)
    if num_classes is not None and len(class_names) != num_classes:
        problems.append(f"metadata 'class_names' lists {len(class_names)} classes but 'num_classes' is {num_classes}")
    config = TrainConfig()
    if (values := _json_metadata(metadata, "config", dict, problems)) is not None:
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
    return LoadedModel(model.eval(), class_names, config, file)


# ---- the course lab's model_final.pth ----


def is_lab_checkpoint(path: str | Path) -> bool:
    """Whether `path` names a torch.save file (by its suffix) rather than a lab2 run folder or safetensors file."""
    return Path(path).suffix in (".pth", ".pt")


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
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise UserError(
            f"{path} holds more than weights and was not loaded ({first}); load only files you trust, as a state dict."
        ) from None
    except Exception as exc:  # torch's legacy reader fails on other bytes in any way (KeyError: 101 for "hello")
        first = (str(exc) or type(exc).__name__).splitlines()[0]
        raise UserError(f"{path} is not a readable torch.save file ({first}).") from None
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
    if problems := _state_problems(model, state):
        raise UserError(
            f"{path} does not hold a {model_name} state dict ({'; '.join(problems[:3])}); "
            "it must come from the lab's SimpleCNN (conv1, bn1, ... fc2)."
        )
    model.load_state_dict(state)
    return LoadedModel(model.eval(), tuple(class_names), TrainConfig(model=model_name), Path(path))


# ---- what lab2-eval, lab2-predict and lab2-export read ----


MODEL_PATH_HELP = "a run folder or one of its checkpoints, a model.safetensors or a model_final.pth"


def load_run_model(model_path: str | Path) -> LoadedModel:
    """Any model lab2 can read: the lab's .pth, a model.safetensors, a run folder, one of its checkpoints, or a
    stopped run's folder (its newest complete checkpoint). A checkpoint is read with the run's config.json (said on
    stderr; class names from the run's CIFAR folder, else CIFAR-10's ten, else the label numbers: it holds none)."""
    checkpoint = Path(model_path)
    # One checkpoint of a run, <run>/checkpoints/checkpoint_N: resolved, so that "." or a link finds its run.
    given = any((checkpoint / name).is_file() for name in ("progress.json", "manifest.json"))
    checkpoint = checkpoint.resolve() if given else checkpoint
    run = checkpoint.parent.parent if given else checkpoint
    if not given and (not run.is_dir() or (run / MODEL_FILE).exists()):
        return load_lab_model(run) if is_lab_checkpoint(run) else load_exported_model(run)
    # A late import: lab2.state.checkpoint imports this module.
    from lab2.state.checkpoint import checkpoint_problem, latest_good_checkpoint, print_once, read_progress

    if given and not (run / "config.json").is_file():
        raise UserError(
            f"{checkpoint} is read with its run's config.json, and {run / 'config.json'} is missing; give "
            "the checkpoint inside its run folder (<run>/checkpoints/), or the run folder."
        )
    if not (run / "config.json").is_file():
        raise UserError(
            f"{run} is not a lab2 run folder: a run folder holds config.json with model.safetensors (a "
            "finished run) or checkpoints/ (a stopped one); give a run's --output_dir, a .safetensors or a .pth file."
        )
    if given and (problem := checkpoint_problem(checkpoint)):
        raise UserError(f"{problem}; give another checkpoint, or the run folder for its newest complete one.")
    checkpoint = checkpoint if given else latest_good_checkpoint(run / "checkpoints")
    if checkpoint is None:
        raise UserError(
            f"{run}: no such file {MODEL_FILE} and no complete checkpoint in {run / 'checkpoints'} (the "
            "run stopped before its first save); train it again, or give a finished run's folder."
        )
    progress = read_progress(checkpoint)
    try:
        config = validate_config(config_from_dict(json.loads((run / "config.json").read_text(encoding="utf-8"))))
    except (OSError, ValueError, TypeError, AttributeError, UserError) as exc:
        raise UserError(f"{run / 'config.json'} is not a readable lab2 configuration ({exc}).") from None
    folder = None if config.dataset_name else find_cifar10_folder(config.data_dir)
    names = read_class_names(folder) if folder else CIFAR10_CLASSES
    if len(names) != progress["num_classes"]:
        names = tuple(map(str, range(progress["num_classes"])))
    model = create_model(progress["model"], progress["num_classes"])
    try:  # its manifest passed: a file rewritten with its manifest still gets one line
        state = load_file(checkpoint / MODEL_FILE)
        consume_prefix_in_state_dict_if_present(state, "_orig_mod.")  # a --torch_compile run's names
        model.load_state_dict(state)
    except Exception as exc:
        first = (str(exc) or type(exc).__name__).splitlines()[0][:200]
        raise UserError(f"{checkpoint} does not hold the model its progress.json names ({first}).") from None
    why = "" if given else f"no {MODEL_FILE} in {run} (the run did not finish); "
    print_once(
        f"lab2: {why}using {checkpoint.relative_to(run)} "
        f"(epoch {progress['epoch'] + 1}, batch {progress['batch_in_epoch']}, step {progress['global_step']})"
    )
    return LoadedModel(model.eval(), names, config, checkpoint / MODEL_FILE)


@torch.no_grad()
def top_k(model: nn.Module, images: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices), each (B, k), for normalised float images (B, 3, 32, 32)."""
    probabilities = model(images).float().softmax(dim=1)
    return probabilities.topk(min(k, probabilities.shape[1]), dim=1)
