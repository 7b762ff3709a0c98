"""Checkpoints (Accelerate state plus progress.json, for resuming) and the model export, written atomically.

`checkpoints/checkpoint_<global step, 8 digits>/` is filled under a temporary name, gets `manifest.json` (each
file's size and SHA-256) last, is renamed into place, and only then are old ones pruned: not Accelerate's
automatic_checkpoint_naming, which writes into the final folder and prunes first (docs/resume.md, "Why checkpoints
are built this way"). A checkpoint is complete exactly when every file its manifest lists matches.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

from lab2.errors import DiskFull, UserError, is_disk_full
from lab2.state.files import FILE_MODE, new_temporary, write_json
from lab2.state.model_file import save_model_file
from lab2.state.run_folder import (
    CHECKPOINT_NAME,
    MANIFEST_FILE,
    manifest_files,
    record_temporaries,
    remove_checkpoint_files,
)

PROGRESS_FILE = "progress.json"
# progress.json's numeric fields: COUNTS whole numbers with their minimum, SUMS finite floats >= 0.
COUNTS = {"epoch": 0, "batch_in_epoch": 0, "global_step": 0, "num_classes": 1, "world_size": 1}
SUMS = ("loss_sum", "correct", "seen")


def print_once(message: str) -> None:
    """One line on stderr from the first process only (under torchrun every rank runs the same code)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def _digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Record every file under `folder` (name, size, SHA-256) in its manifest; call after all else is written.
    Each file gets the outputs' mode first (safetensors makes its files 0600 whatever the umask)."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        os.chmod(path, FILE_MODE)
        files[str(path.relative_to(folder))] = {"size": path.stat().st_size, "sha256": _digest(path)}
    return write_json(folder / MANIFEST_FILE, {"format": 1, "files": files})


def checkpoint_problem(folder: str | Path) -> str | None:
    """None when `folder` is a complete, undamaged checkpoint; otherwise the first problem, naming the file."""
    folder, manifest = Path(folder), Path(folder) / MANIFEST_FILE
    files = manifest_files(folder)
    if not manifest.exists():
        return f"{manifest} is missing (the save did not finish, or an older lab2 wrote it)"
    if files is None or PROGRESS_FILE not in files:
        return f"{manifest} is not a readable lab2 checkpoint manifest"
    for name, entry in files.items():
        if not (path := folder / name).is_file():
            return f"{path} is missing"
        if (size := path.stat().st_size) != entry.get("size"):
            return f"{path} is {size:,} bytes, the manifest says {entry.get('size')!r} (truncated or replaced)"
        if _digest(path) != entry.get("sha256"):
            return f"{path} does not match its checksum (damaged or edited)"
    return _read_progress(folder)[1]


def _read_progress(folder: Path) -> tuple[dict, str | None]:
    """(progress.json's record, None), or (whatever was read, the first problem of its fields)."""
    where = folder / PROGRESS_FILE
    try:
        progress = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {}, f"{where} is unreadable ({exc})"
    if not isinstance(progress, dict):
        return {}, f"{where} holds a {type(progress).__name__}, not a progress record"
    for name in (*COUNTS, *SUMS):
        value, minimum = progress.get(name), COUNTS.get(name, 0)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (number and value >= minimum and (name in SUMS or isinstance(value, int))):
            wanted = "a finite number" if name in SUMS else "a whole number"
            return progress, f"{where}: '{name}' must be {wanted} >= {minimum}, got {value!r}"
    if not isinstance(progress.get("model"), str) or not progress["model"]:
        return progress, f"{where}: 'model' must be a model name, got {progress.get('model')!r}"
    for name in ("position", "training"):
        if not isinstance(progress.get(name, {}), dict):
            return progress, f"{where}: '{name}' must be a record of settings, got {type(progress[name]).__name__}"
    return progress, None


def read_progress(path: str | Path) -> dict:
    """progress.json of checkpoint `path`, with every field checked (UserError naming the field otherwise)."""
    progress, problem = _read_progress(Path(path))
    if problem:
        raise UserError(f"{problem}; resume from an older checkpoint or start afresh.")
    return progress


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Checkpoint folders under `checkpoints_dir`, oldest first (temporary folders are ignored; not verified).
    A folder with neither manifest nor progress.json is none (e.g. only someone's own files left after pruning)."""
    folder = Path(checkpoints_dir)
    found = [
        (int(m.group(1)), p)
        for p in (folder.iterdir() if folder.is_dir() else ())
        if (m := CHECKPOINT_NAME.match(p.name)) and ((p / MANIFEST_FILE).exists() or (p / PROGRESS_FILE).exists())
    ]
    return [p for _, p in sorted(found)]


def _newest_good(checkpoints_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies against its manifest (or None), and 'name: problem' of each newer one."""
    skipped = []
    for path in reversed(list_checkpoints(checkpoints_dir)):
        if (problem := checkpoint_problem(path)) is None:
            return path, skipped
        skipped.append(f"{path.name}: {problem}")
    return None, skipped


def latest_good_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    return _newest_good(checkpoints_dir)[0]


def disk_full_error(exc: BaseException, where: str | Path, checkpoints_dir: str | Path) -> DiskFull:
    """The one-line DiskFull error for a failed write to `where`, naming the last good checkpoint."""
    if isinstance(exc, DiskFull) and exc.__cause__ is not None:  # atomic_write's: say the disk's own error
        exc = exc.__cause__
    good = latest_good_checkpoint(checkpoints_dir)
    after = f"the last good checkpoint is {good}; free space, then resume with --resume_from_checkpoint latest"
    return DiskFull(
        f"the disk is full: writing {where} failed ({str(exc).splitlines()[0][:120]}); "
        f"what it had written was removed, and {after if good else 'no checkpoint was saved before it'}."
    )


def save_checkpoint(accelerator, checkpoints_dir: str | Path, progress: dict, total_limit: int) -> Path:
    """Save the Accelerate state plus `progress` atomically; call on every process (RNG state is per rank)."""
    checkpoints_dir = Path(checkpoints_dir)
    root, main = checkpoints_dir.parent, accelerator.is_main_process
    final = checkpoints_dir / f"checkpoint_{progress['global_step']:08d}"
    if main:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
    name = [str(new_temporary(final, folder=True)) if main else None]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(name)
    tmp = Path(name[0])
    if main:
        record_temporaries(root, [tmp])  # before anything is written into it; removes a killed save's folder
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            write_json(tmp / PROGRESS_FILE, progress)
            write_manifest(tmp)  # last: a folder with a matching manifest is complete
    except Exception as exc:
        if not is_disk_full(exc, checkpoints_dir):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_full_error(exc, final, checkpoints_dir) from None  # its name: the temporary one is gone
    if main:
        if final.exists():  # the same step saved again (e.g. an interrupt right after a scheduled save)
            # Not recorded as temporary: killed before the end, `old` keeps the good checkpoint and any file of the
            # user's in it, under its hidden name (only `tmp`, all lab2's, is removed by the next save).
            old = new_temporary(final, folder=True)
            final.replace(old)  # onto the new, empty folder
            tmp.rename(final)
            if not remove_checkpoint_files(old):  # files lab2 did not write were in it: they stay in the same place
                for leftover in old.iterdir():
                    leftover.rename(final / leftover.name)
                old.rmdir()
        else:
            tmp.rename(final)
        record_temporaries(root, [])
        for stale in list_checkpoints(checkpoints_dir)[:-total_limit]:
            remove_checkpoint_files(stale)  # its manifest's files: anything else in the folder stays
    accelerator.wait_for_everyone()
    return final


def resolve_resume_path(resume_from: str, output_dir: str | Path, report=print_once) -> Path:
    """The checkpoint folder `--resume_from_checkpoint` names, verified against its manifest: 'latest' is the
    newest that verifies (newer damaged ones are skipped, said in one line through `report`)."""
    if resume_from == "latest":
        checkpoints = Path(output_dir) / "checkpoints"
        good, skipped = _newest_good(checkpoints)
        if good is None and skipped:
            raise UserError(
                f"--resume_from_checkpoint latest: no checkpoint in {checkpoints} is complete ({'; '.join(skipped)}); "
                "start afresh with --overwrite_output_dir."
            )
        if good is None:
            raise UserError(
                f"--resume_from_checkpoint latest: no checkpoint in {checkpoints}; "
                "check --output_dir, or start without --resume_from_checkpoint."
            )
        if skipped:
            report(
                f"warning: skipped {len(skipped)} damaged checkpoint(s), newest first: {'; '.join(skipped)}; "
                f"resuming from {good.name}."
            )
        return good
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
    if problem := checkpoint_problem(path):
        raise UserError(
            f"--resume_from_checkpoint {resume_from} is damaged: {problem}; "
            "give another checkpoint, or 'latest' for the newest good one."
        )
    return path


def export_model(accelerator, model, path: str | Path, metadata: dict) -> Path:
    """Write the unwrapped model's weights as safetensors, with string `metadata`, atomically; call on every
    process (the main one writes)."""
    # The plain module's names: unwrap_model keeps torch.compile's wrapper by default, whose keys start with
    # `_orig_mod.`, and lab2-eval / lab2-predict build the plain model.
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
