"""Checkpoints (Accelerate state, for resuming) and the safetensors export, both written atomically.

Checkpoint layout: `<output_dir>/checkpoints/checkpoint_<global step, 8 digits>/`,
holding what `accelerator.save_state` writes (model as safetensors, optimizer,
scaler, per-rank RNG states) plus `progress.json` (epoch, batch in epoch,
global step, running sums, model name).

Why not `ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=...)`:
Accelerate then writes straight into the final folder and deletes the oldest
checkpoint *before* writing the new one, so a process killed mid-save can leave
a half-written newest folder and, with total_limit=1, no good one at all. Here
every rank writes into a hidden temporary folder, the main process adds
`progress.json` and renames it into place (an atomic rename on one file
system), and only then prunes to `total_limit`. A folder without the leading
dot is therefore always complete.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lab2.errors import UserError
from lab2.outputs import write_json

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)$")
PROGRESS_FILE = "progress.json"
MODEL_FILE = "model.safetensors"


def checkpoint_name(global_step: int) -> str:
    return f"checkpoint_{global_step:08d}"


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `checkpoints_dir`, oldest first (temporary folders are ignored)."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and (p / PROGRESS_FILE).exists()]
    return [p for _, p in sorted(found)]


def save_checkpoint(accelerator, checkpoints_dir: str | Path, progress: dict, total_limit: int) -> Path:
    """Save the Accelerate state plus `progress` atomically; call on every process (RNG state is per rank)."""
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / checkpoint_name(progress["global_step"])
    tmp = checkpoints_dir / f".tmp-{final.name}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / PROGRESS_FILE, progress)
        if final.exists():  # the same step saved again (e.g. an interrupt right after a scheduled save)
            old = checkpoints_dir / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        for stale in list_checkpoints(checkpoints_dir)[:-total_limit]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume_path(resume_from: str, output_dir: str | Path) -> Path:
    """The checkpoint folder `--resume_from_checkpoint` names ('latest' or a path), checked."""
    if resume_from == "latest":
        found = list_checkpoints(Path(output_dir) / "checkpoints")
        if not found:
            raise UserError(
                f"--resume_from_checkpoint latest: no checkpoint in {Path(output_dir) / 'checkpoints'}; "
                "check --output_dir, or start without --resume_from_checkpoint."
            )
        return found[-1]
    path = Path(resume_from)
    if not path.is_dir():
        raise UserError(f"--resume_from_checkpoint {resume_from}: no such folder; give a checkpoint folder or 'latest'.")
    if not (path / PROGRESS_FILE).is_file():
        raise UserError(
            f"--resume_from_checkpoint {resume_from}: not a lab2 checkpoint (no {PROGRESS_FILE}); "
            f"give a folder like <output_dir>/checkpoints/checkpoint_00000391, or 'latest'."
        )
    return path


def read_progress(path: str | Path) -> dict:
    try:
        return json.loads((Path(path) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint {path} is unreadable ({exc}); resume from an older one or start afresh.") from None


def check_compatible(progress: dict, path: Path, model_name: str, num_classes: int, world_size: int) -> None:
    """Refuse a checkpoint from another model, class count, or (mid-epoch) another process count."""
    if progress.get("model") != model_name or progress.get("num_classes") != num_classes:
        raise UserError(
            f"checkpoint {path} is from model {progress.get('model')!r} with {progress.get('num_classes')} classes, "
            f"but this run is {model_name!r} with {num_classes}; pass the matching --model or another checkpoint."
        )
    if progress.get("batch_in_epoch", 0) and progress.get("world_size") != world_size:
        raise UserError(
            f"checkpoint {path} was saved mid-epoch by {progress.get('world_size')} processes; resume it with the "
            f"same number of processes (this run has {world_size}), or from an end-of-epoch checkpoint."
        )


def export_model(accelerator, model, path: str | Path, metadata: dict) -> Path:
    """Write the unwrapped model's weights as safetensors, with string `metadata`, atomically (main process)."""
    state = accelerator.get_state_dict(model)  # gathers and unwraps (DDP, torch.compile) on every process
    path = Path(path)
    if accelerator.is_main_process:
        save_model_file(state, path, metadata)
    accelerator.wait_for_everyone()
    return path


def save_model_file(state: dict[str, torch.Tensor], path: str | Path, metadata: dict) -> Path:
    """Write a state dict as safetensors with string `metadata`, atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    # safetensors refuses shared or non-contiguous storage; copies are cheap at this size.
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    tmp.replace(path)
    return path


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
        raise UserError(f"{path} is not a readable safetensors file ({exc}); re-export it or pick another run.") from None
    if "model" not in metadata:
        raise UserError(f"{path} has no lab2 metadata (model name); it was not written by lab2.")
    return tensors, metadata
