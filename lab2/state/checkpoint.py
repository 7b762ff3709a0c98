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
system), and only then prunes to `total_limit`. Before the rename it writes
`manifest.json` (lab2.state.checkpoint_check), so damage after the fact (a
truncated file, a deleted one, an edit) is caught before a resume uses it:
`--resume_from_checkpoint latest` takes the newest checkpoint that verifies.

A full disk during a save or the final export is a DiskFull error (exit code
6): the temporary folder or file is removed and the message names the last
good checkpoint to resume from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from lab2.errors import DiskFull, UserError, is_disk_full
from lab2.state.checkpoint_check import (
    MANIFEST_FILE,
    PROGRESS_FILE,
    checkpoint_problem,
    validate_progress,
    write_manifest,
)
from lab2.state.files import temporary_beside, write_json
from lab2.state.run_folder import remove_checkpoint_files

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)$")
MODEL_FILE = "model.safetensors"
# Settings that decide what a mid-epoch position (batch_in_epoch) means: a resume mid-epoch needs them unchanged.
POSITION_SETTINGS = ("per_device_train_batch_size", "seed", "data_pipeline", "num_train_samples", "world_size")


def checkpoint_name(global_step: int) -> str:
    return f"checkpoint_{global_step:08d}"


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Checkpoint folders under `checkpoints_dir`, oldest first (temporary folders are ignored; not verified)."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    # A folder with neither file is not a checkpoint (e.g. only someone's own files left after pruning).
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := CHECKPOINT_PATTERN.match(p.name)) and ((p / MANIFEST_FILE).exists() or (p / PROGRESS_FILE).exists())
    ]
    return [p for _, p in sorted(found)]


def latest_good_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies against its manifest, or None."""
    return next((p for p in reversed(list_checkpoints(checkpoints_dir)) if checkpoint_problem(p) is None), None)


def _last_good_text(checkpoints_dir: Path) -> str:
    good = latest_good_checkpoint(checkpoints_dir)
    return (
        f"the last good checkpoint is {good}; free space, then resume with --resume_from_checkpoint latest"
        if good
        else "no checkpoint was saved before it"
    )


def disk_full_error(exc: BaseException, where: str | Path, checkpoints_dir: str | Path) -> DiskFull:
    """The one-line DiskFull error for a failed write to `where`, naming the last good checkpoint."""
    return DiskFull(
        f"the disk is full: writing {where} failed ({str(exc).splitlines()[0][:120]}); "
        f"the partial file was removed and {_last_good_text(Path(checkpoints_dir))}."
    )


def save_checkpoint(accelerator, checkpoints_dir: str | Path, progress: dict, total_limit: int) -> Path:
    """Save the Accelerate state plus `progress` atomically; call on every process (RNG state is per rank)."""
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / checkpoint_name(progress["global_step"])
    tmp = checkpoints_dir / f".tmp-{final.name}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-save
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(tmp / PROGRESS_FILE, progress)
            write_manifest(tmp)  # last: a folder with a matching manifest is complete
    except Exception as exc:
        if not is_disk_full(exc, checkpoints_dir):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_full_error(exc, tmp, checkpoints_dir) from None
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (e.g. an interrupt right after a scheduled save)
            old = checkpoints_dir / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            if not remove_checkpoint_files(old):  # files lab2 did not write were in it: they stay in the same place
                for leftover in old.iterdir():
                    leftover.rename(final / leftover.name)
                old.rmdir()
        else:
            tmp.rename(final)
        for stale in list_checkpoints(checkpoints_dir)[:-total_limit]:
            remove_checkpoint_files(stale)  # by name: anything else in the folder stays
    accelerator.wait_for_everyone()
    return final


def _print_main(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank resolves the path: one line is enough
        print(message, file=sys.stderr, flush=True)


def resolve_resume_path(resume_from: str, output_dir: str | Path, report=_print_main) -> Path:
    """The checkpoint folder `--resume_from_checkpoint` names, verified against its manifest.

    'latest' is the newest checkpoint that verifies: damaged or incomplete newer ones are
    reported in one line through `report` and skipped. An explicit path that does not
    verify is a UserError naming the damaged file.
    """
    if resume_from == "latest":
        checkpoints = Path(output_dir) / "checkpoints"
        found = list_checkpoints(checkpoints)
        if not found:
            raise UserError(
                f"--resume_from_checkpoint latest: no checkpoint in {checkpoints}; "
                "check --output_dir, or start without --resume_from_checkpoint."
            )
        skipped = []
        for path in reversed(found):
            problem = checkpoint_problem(path)
            if problem is None:
                if skipped:
                    report(
                        f"warning: skipped {len(skipped)} damaged checkpoint(s), newest first: {'; '.join(skipped)}; "
                        f"resuming from {path.name}."
                    )
                return path
            skipped.append(f"{path.name}: {problem}")
        raise UserError(
            f"--resume_from_checkpoint latest: no checkpoint in {checkpoints} is complete ({'; '.join(skipped)}); "
            "start afresh with --overwrite_output_dir."
        )
    path = Path(resume_from)
    if not path.is_dir():
        raise UserError(
            f"--resume_from_checkpoint {resume_from}: no such folder; give a checkpoint folder or 'latest'."
        )
    if not (path / PROGRESS_FILE).is_file():
        raise UserError(
            f"--resume_from_checkpoint {resume_from}: not a lab2 checkpoint (no {PROGRESS_FILE}); "
            f"give a folder like <output_dir>/checkpoints/checkpoint_00000391, or 'latest'."
        )
    problem = checkpoint_problem(path)
    if problem:
        raise UserError(
            f"--resume_from_checkpoint {resume_from} is damaged: {problem}; "
            "give another checkpoint, or 'latest' for the newest good one."
        )
    return path


def read_progress(path: str | Path) -> dict:
    """progress.json of checkpoint `path`, with every field checked (UserError naming the field otherwise)."""
    try:
        progress = json.loads((Path(path) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is unreadable ({exc}); resume from an older one or start afresh.") from None
    try:
        return validate_progress(progress, path)
    except UserError as error:
        raise UserError(f"{error}; resume from an older checkpoint or start afresh.") from None


def position_settings(cfg, num_train_samples: int, world_size: int) -> dict:
    """The settings that give a mid-epoch position its meaning; saved in progress.json as 'position'."""
    values = {"num_train_samples": num_train_samples, "world_size": world_size}
    return {name: values[name] if name in values else getattr(cfg, name) for name in POSITION_SETTINGS}


def check_compatible(
    progress: dict, path: Path, model_name: str, num_classes: int, world_size: int, position: dict | None = None
) -> None:
    """Refuse a checkpoint from another model or class count, or a mid-epoch one whose position means
    something else in this run (another process count, batch size, seed, pipeline or training-set size)."""
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
    saved = progress.get("position") or {}
    if progress.get("batch_in_epoch", 0) and position:
        changed = [
            f"--{k} {saved[k]} -> {position[k]}"
            for k in POSITION_SETTINGS
            if k in saved and k in position and saved[k] != position[k]
        ]
        if changed:
            raise UserError(
                f"checkpoint {path} was saved mid-epoch "
                f"(batch {progress['batch_in_epoch']} of epoch {progress['epoch'] + 1}) and "
                f"{', '.join(changed)} changes what that position means; resume with the checkpoint's settings, "
                "or from an end-of-epoch checkpoint."
            )


def export_model(accelerator, model, path: str | Path, metadata: dict) -> Path:
    """Write the unwrapped model's weights as safetensors, with string `metadata`, atomically (main process)."""
    # The plain module's names: unwrap_model keeps torch.compile's wrapper by default, whose keys start with
    # `_orig_mod.`, and lab2-eval / lab2-predict build the plain model. Called on every process.
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    state = accelerator.get_state_dict(plain, unwrap=False)
    path = Path(path)
    if accelerator.is_main_process:
        try:
            save_model_file(state, path, metadata)
        except Exception as exc:
            if is_disk_full(exc, path.parent):
                raise disk_full_error(exc, path, path.parent / "checkpoints") from None
            raise
    accelerator.wait_for_everyone()
    return path


def save_model_file(state: dict[str, torch.Tensor], path: str | Path, metadata: dict) -> Path:
    """Write a state dict as safetensors with string `metadata`, atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = temporary_beside(path)  # a unique name: lab2-export writes into folders that are not lab2's
    try:
        # safetensors refuses shared or non-contiguous storage; copies are cheap at this size.
        data = safetensors_bytes(
            {k: v.detach().contiguous().cpu() for k, v in state.items()},
            metadata={k: str(v) for k, v in metadata.items()},
        )
        # Written by open(), not safetensors' save_file (which creates its file 0600): the file gets the
        # permissions of every other output (0644 under the usual umask 022).
        with open(tmp, "wb") as file:
            file.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave half a file behind (a full disk, an interrupt)
        raise
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
        raise UserError(
            f"{path} is not a readable safetensors file ({exc}); re-export it or pick another run."
        ) from None
    if "model" not in metadata:
        raise UserError(f"{path} has no lab2 metadata (model name); it was not written by lab2.")
    return tensors, metadata
