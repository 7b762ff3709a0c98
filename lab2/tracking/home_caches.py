"""Caches and settings folders under a HOME that cannot be written (a read-only mount, a locked-down account).

wandb's core process logs to ~/.cache/wandb; when it cannot create that folder it
logs to stderr instead (17 INFO lines in a short run), and matplotlib prints two
lines about ~/.config/matplotlib. Before either is imported, `redirect_unwritable_caches`
points them at one temporary folder and says so in one line. Variables the user set
to a writable folder are left alone.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

# Variable -> the folder it replaces (relative to HOME) and its subfolder in the temporary one.
REDIRECTED = {
    "XDG_CACHE_HOME": (".cache", "cache"),  # wandb-core's logs (Go's os.UserCacheDir), and others'
    "WANDB_CACHE_DIR": (".cache/wandb", "wandb-cache"),
    "WANDB_CONFIG_DIR": (".config/wandb", "wandb-config"),
    "MPLCONFIGDIR": (".config/matplotlib", "matplotlib"),
}


def can_write(folder: Path) -> bool:
    """Whether `folder` could be written: it, or the nearest folder above it that exists, is writable."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing is not None and existing.is_dir() and os.access(existing, os.W_OK)


def redirect_unwritable_caches(env: MutableMapping[str, str] = os.environ) -> str | None:
    """Point every cache variable whose folder cannot be written at a temporary folder; the note, or None."""
    home = Path(env.get("HOME") or Path.home())
    unwritable = [
        name for name, (default, _) in REDIRECTED.items() if not can_write(Path(env.get(name) or home / default))
    ]
    if not unwritable:
        return None
    folder = Path(tempfile.mkdtemp(prefix="lab2-cache-"))
    for name in unwritable:
        env[name] = str(folder / REDIRECTED[name][1])
    return f"note: {home} cannot be written, so this run's caches (W&B, matplotlib) go to {folder}."
