"""Is a checkpoint complete and undamaged? The manifest, its verification, and progress.json's schema.

Every checkpoint carries `manifest.json`, written last (after every rank's
files and progress.json): each file's name, size in bytes and SHA-256. A
checkpoint is complete exactly when its manifest reads and every listed file
has that size and digest; a missing manifest means the save never finished
(or an older lab2 wrote it). So a truncated or garbage model.safetensors, a
0-byte optimizer.bin, an edited progress.json or a deleted random_states_0.pkl
are all caught before Accelerate is asked to load anything.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from lab2.errors import UserError
from lab2.state.files import write_json

MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"
MANIFEST_FORMAT = 1

# progress.json fields: name -> (kind, minimum); "count" is a whole number, "number" a finite float.
PROGRESS_FIELDS = {
    "epoch": ("count", 0),
    "batch_in_epoch": ("count", 0),
    "global_step": ("count", 0),
    "loss_sum": ("number", 0.0),
    "correct": ("number", 0.0),
    "seen": ("number", 0.0),
    "num_classes": ("count", 1),
    "world_size": ("count", 1),
}


def _digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Record every file under `folder` (name, size, SHA-256) in its manifest; call after all else is written."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _digest(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    write_json(folder / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "files": files})
    return folder / MANIFEST_FILE


def checkpoint_problem(folder: str | Path) -> str | None:
    """None when `folder` is a complete, undamaged checkpoint; otherwise the first problem, naming the file."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{manifest_path} is missing (the save did not finish, or an older lab2 wrote it)"
    except (OSError, ValueError) as exc:
        return f"{manifest_path} is unreadable ({type(exc).__name__})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or PROGRESS_FILE not in files:
        return f"{manifest_path} is not a lab2 checkpoint manifest"
    for name, entry in files.items():
        path = folder / name
        if not isinstance(entry, dict) or Path(name).is_absolute() or ".." in Path(name).parts:
            return f"{manifest_path} has a malformed entry for {name!r}"
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != entry.get("size"):
            return f"{path} is {size:,} bytes, the manifest says {entry.get('size')!r} (truncated or replaced)"
        if _digest(path) != entry.get("sha256"):
            return f"{path} does not match its checksum (damaged or edited)"
    try:
        validate_progress(json.loads((folder / PROGRESS_FILE).read_text(encoding="utf-8")), folder)
    except (UserError, ValueError) as exc:
        return str(exc)
    return None


def validate_progress(progress, folder: str | Path) -> dict:
    """`progress` (progress.json's content) if every field has the right type and range; UserError otherwise."""
    where = Path(folder) / PROGRESS_FILE
    if not isinstance(progress, dict):
        raise UserError(f"{where} holds a {type(progress).__name__}, not a progress record")
    for name, (kind, minimum) in PROGRESS_FIELDS.items():
        value = progress.get(name)
        if kind == "count":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        else:
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= minimum
            )
        if not ok:
            wanted = "a whole number" if kind == "count" else "a finite number"
            raise UserError(f"{where}: '{name}' must be {wanted} >= {minimum}, got {value!r}")
    if not isinstance(progress.get("model"), str) or not progress["model"]:
        raise UserError(f"{where}: 'model' must be a model name, got {progress.get('model')!r}")
    position = progress.get("position", {})
    if not isinstance(position, dict):
        raise UserError(f"{where}: 'position' must be a record of settings, got {type(position).__name__}")
    if not isinstance(progress.get("training", {}), dict):
        raise UserError(f"{where}: 'training' must be a record of settings, got {type(progress['training']).__name__}")
    return progress
