"""A run folder: its file names (`RunPaths`), the one writer's lock, and lab2's one write policy (docs/file-safety.md)
for every command: which folders and files it may write, replace or remove.

lab2 writes a new file, or replaces or removes one it wrote, known by name in a folder it marked as its own
(`.lab2-run.json`, which also says which command's folder it is), by a mark inside the file, by a checkpoint's
manifest or by a list in the marker (the trackers' files, a killed save's temporary folder): never by a name
pattern. A command writes into a missing or empty folder, or one it marked itself; anything else is a UserError
(one line, exit 2), before anything is written.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from contextlib import suppress
from pathlib import Path, PurePosixPath

from lab2.errors import UserError
from lab2.figures import RUN_FIGURES
from lab2.state.files import FILE_MODE, write_json


class RunPaths:
    """Every file a run writes, under one output folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    summary = property(lambda self: self.root / "summary.json")
    flops = property(lambda self: self.root / "flops.json")
    flow = property(lambda self: self.root / "flow.jsonl")
    figures = property(lambda self: self.root / "figures")
    model = property(lambda self: self.root / "model.safetensors")
    checkpoints = property(lambda self: self.root / "checkpoints")
    training_log = property(lambda self: self.root / "training_log.txt")
    report = property(lambda self: self.root / "report.html")
    tensorboard = property(lambda self: self.root / "tensorboard")


# ---- one writer per run folder ----

# Held (fcntl.flock) by the main process of a run for the run's life; the OS drops it when that process dies, so
# a killed run never leaves a stale lock. Never deleted: a new file would let a second writer in.
LOCK = ".lab2-run.lock"


def _flock(root: Path, fd: int, how: int) -> None:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"another lab2 process is writing to {root} (it holds {root / LOCK}); two runs in one folder would mix "
            "their metrics and checkpoints. Wait for it to finish or stop it (Ctrl-C saves a checkpoint), "
            "or choose another --output_dir."
        ) from None


def refuse_if_locked(root: str | Path) -> None:
    """Read-only check: a UserError when a running lab2 process holds `root`'s lock (a shared probe, released)."""
    try:
        fd = os.open(Path(root) / LOCK, os.O_RDONLY)
    except OSError:
        return  # no lock file: no run has written there yet (or it is unreadable; the real lock will tell)
    _flock(Path(root), fd, fcntl.LOCK_SH)
    os.close(fd)  # closing releases the probe


class RunFolderLock:
    """The exclusive lock of one run folder, taken by the main process before it writes anything there."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._fd: int | None = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
        _flock(self.root, self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---- what lab2 owns ----

MARKER = ".lab2-run.json"
# Files a run writes at the top of its folder; its figures/<name>.png are lab2.figures.RUN_FIGURES.
RUN_FILES = (
    *("config.json", "metrics.jsonl", "summary.json", "flops.json", "flow.jsonl", "training_log.txt"),
    *("model.safetensors", "report.html", "wandb_run.json", "mlflow_run.json"),
)
EVAL_FILES = ("eval.json", "confusion_matrix.png", "class_accuracy.png", "predictions.png", "calibration.png")
# Where lab2 points W&B (dir=<run>), MLflow's local file store and TensorBoard: lab2's names, not the trackers'.
TRACKER_FOLDERS = ("wandb", "mlruns", "tensorboard")
# A checkpoint folder, and its list of the files lab2 wrote there (lab2.state.checkpoint writes it).
CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)$")
MANIFEST_FILE = "manifest.json"


def _entries(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


def is_marked(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def _marker(folder: Path) -> dict:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def marked_kind(folder: str | Path) -> str | None:
    """Which command marked `folder` ("run" or "eval"), or None when it is not marked; an unreadable marker
    still marks the folder as lab2's ("unknown")."""
    if not is_marked(folder):
        return None
    kind = _marker(Path(folder)).get("lab2", "unknown")  # a marker without "lab2" is unreadable: {}
    return kind if isinstance(kind, str) else "unknown"


def _update_marker(root: Path, **fields) -> None:
    write_json(root / MARKER, {**(_marker(root) or {"lab2": "run"}), **fields})


def _listed(root: Path, key: str, folders: tuple[str, ...] = TRACKER_FOLDERS) -> set[str]:
    """The names (relative to `root`) the marker lists under `key`, each inside one of `folders` (a hand-edited
    marker reaches no further)."""
    names = _marker(root).get(key)
    parts = [PurePosixPath(n).parts for n in names if isinstance(n, str)] if isinstance(names, list) else []
    return {"/".join(p) for p in parts if len(p) > 1 and p[0] in folders and ".." not in p}


def _tracker_files(root: Path) -> set[str]:
    """The files and links now under the run folder's tracker folders, as names relative to `root` (rglob lists
    a link, never follows it; a linked tracker folder is somewhere else: not lab2's to list)."""
    folders = [root / name for name in TRACKER_FOLDERS if not (root / name).is_symlink()]
    found = [p for folder in folders for p in folder.rglob("*") if p.is_symlink() or not p.is_dir()]
    return {p.relative_to(root).as_posix() for p in found}


def claim(root: str | Path, kind: str = "run") -> None:
    """Create `root` if needed and mark it as lab2's (main process only; after check_output_dir, before the
    trackers start). The marker notes the files already in its tracker folders that are not lab2's."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not is_marked(root):
        write_json(root / MARKER, {"lab2": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    others = _tracker_files(root) - _listed(root, "tracker_files")
    if others or _listed(root, "others_files"):
        _update_marker(root, others_files=sorted(others))


def record_tracker_files(root: str | Path) -> None:
    """After lab2's trackers closed (main process): list in the marker every file in the tracker folders that was
    not there, someone else's, when the run started (claim), as lab2's for --overwrite_output_dir."""
    root = Path(root)
    if marked_kind(root) != "run":  # only a folder lab2 claimed for a run
        return
    files = _tracker_files(root) - _listed(root, "others_files")
    if files != _listed(root, "tracker_files"):
        _update_marker(root, tracker_files=sorted(files))


def _temporaries(root: Path) -> list[Path]:
    """The temporary checkpoint folders the marker lists (record_temporaries), each inside checkpoints/."""
    return [root / name for name in _listed(root, "temporary_checkpoints", ("checkpoints",)) if name.endswith(".tmp")]


def record_temporaries(root: str | Path, folders: list[Path]) -> None:
    """Make a run's marker list exactly `folders`, the temporary checkpoint folders a save fills ([] once done), and
    remove, whole, any it listed before: a killed save's, made by files.new_temporary, so nothing in it is yours."""
    root = Path(root)
    if marked_kind(root) != "run":
        return
    for leftover in set(_temporaries(root)) - set(folders):
        shutil.rmtree(leftover, ignore_errors=True)
    _update_marker(root, temporary_checkpoints=[p.relative_to(root).as_posix() for p in folders])


def manifest_files(folder: str | Path) -> dict[str, dict] | None:
    """{name: {"size", "sha256"}} of the files checkpoint `folder`'s manifest lists, or None when it has no readable
    manifest. A name outside the folder or an entry that is no record makes it unreadable: it reaches nothing."""
    try:
        files = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    names = [PurePosixPath(n) for n in files] if isinstance(files, dict) else []
    inside = all(not n.is_absolute() and ".." not in n.parts for n in names)
    return files if names and inside and all(isinstance(entry, dict) for entry in files.values()) else None


def eval_files(folder: str | Path) -> list[Path]:
    """lab2-eval's files in `folder`/eval, a run's or a checkpoint's: only when lab2-eval marked it, so a folder of
    the user's own of that name keeps its files."""
    out = Path(folder) / "eval"
    return [out / name for name in (*EVAL_FILES, MARKER)] if is_marked(out) else []


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The files lab2 wrote into checkpoint `folder`: lab2-eval's results of it (they go with it), those its
    manifest lists, then the manifest. Nothing without a readable manifest: lab2 cannot tell its files there from
    anyone else's."""
    files = manifest_files(folder)
    listed = [*eval_files(folder), *(Path(folder) / name for name in files or ())] if files else []
    return [p for p in listed if p.is_file()] + ([Path(folder) / MANIFEST_FILE] if files else [])


def _remove_empty_folders(top: Path) -> None:
    for dirpath, _dirs, _files in os.walk(top, topdown=False):  # deepest first
        with suppress(OSError):
            Path(dirpath).rmdir()  # only empty folders: anything a user put there stays


def remove_checkpoint_files(folder: str | Path) -> bool:
    """Delete lab2's files from a checkpoint folder (the manifest last: a removal cut short leaves a checkpoint
    known as damaged, never files nobody lists), then the folders left empty; return whether `folder` is gone."""
    for path in checkpoint_files(folder):
        path.unlink(missing_ok=True)
    _remove_empty_folders(Path(folder))
    return not Path(folder).exists()


def owned_files(root: str | Path) -> list[Path]:
    """Every existing file or folder under `root` that lab2 wrote: known by name, by a checkpoint's manifest or by
    a list in the marker, never by a pattern, and never one reached through a link (it leads to someone's files)."""
    root = Path(root)
    found = [root / name for name in RUN_FILES]
    found += [root / "figures" / f"{figure.name}.png" for figure in RUN_FIGURES]
    found += eval_files(root)
    found += [f for c in _entries(root / "checkpoints") if CHECKPOINT_NAME.match(c.name) for f in checkpoint_files(c)]
    found += _temporaries(root) + [root / name for name in sorted(_listed(root, "tracker_files"))]
    resolved = root.resolve()
    return [
        p
        for p in found
        if (p.exists() or p.is_symlink()) and p.parent.resolve() == resolved.joinpath(p.parent.relative_to(root))
    ]


def remove_owned_files(root: str | Path) -> list[Path]:
    """--overwrite_output_dir: delete lab2's own files under a marked `root`, then its subfolders left empty."""
    root = Path(root)
    if not is_marked(root):
        raise UserError(f"{root} is not a lab2 run folder (no {MARKER}); lab2 removes files only from its own runs.")
    removed = owned_files(root)
    for path in removed:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    _update_marker(root, tracker_files=[], temporary_checkpoints=[])
    for sub in ("figures", "eval", "checkpoints", *TRACKER_FOLDERS):
        _remove_empty_folders(root / sub)
    return removed


# ---- which folders and files a command may write ----


def _occupant(folder: Path, flag: str) -> str | None:
    """Who holds `folder`: None when it is missing or empty, else marked_kind ("foreign" when not marked). A file
    there is a UserError."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file; give a folder.")
    return (marked_kind(folder) or "foreign") if _entries(folder) else None


def _holding(folder: Path) -> str:
    names = sorted(p.name for p in _entries(folder))
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"it holds {len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown})"


def check_output_dir(root: str | Path, resume: bool, overwrite: bool, flag: str = "--output_dir") -> None:
    """Refuse a folder lab2 may not write into, or a run it would clobber; read-only, safe on every process."""
    root = Path(root)
    occupant = _occupant(root, flag)
    if occupant == "foreign":
        raise UserError(
            f"{flag} {root} is not empty and is not a lab2 run folder: {_holding(root)}; lab2 never writes into "
            f"a folder it did not start{', not even with --overwrite_output_dir' if overwrite else ''}. Choose a new "
            "or empty folder (a run of an older lab2 without the .lab2-run.json marker: move it away first)."
        )
    if occupant == "eval":
        raise UserError(f"{flag} {root} is a lab2-eval output folder, not a training run's; choose another {flag}.")
    if occupant is None or resume or overwrite:
        return
    if (root / "summary.json").exists():
        raise UserError(
            f"{flag} {root} holds a finished run; pass --overwrite_output_dir to replace it, or choose another {flag}."
        )
    if any(CHECKPOINT_NAME.match(p.name) and p.is_dir() for p in _entries(root / "checkpoints")):
        raise UserError(
            f"{flag} {root} holds an unfinished run's checkpoints; add --resume_from_checkpoint latest to continue it, "
            "or --overwrite_output_dir to start afresh."
        )


def check_eval_output_dir(out: str | Path) -> None:
    """lab2-eval writes into a missing or empty folder, or one it marked before (a run's eval/ by default)."""
    out = Path(out)
    occupant = _occupant(out, "--output_dir")
    if occupant == "foreign":
        raise UserError(
            f"--output_dir {out} is not empty and is not a lab2-eval folder: {_holding(out)}; "
            "lab2-eval never writes over files it did not write. Choose a new or empty folder."
        )
    if occupant not in (None, "eval"):
        raise UserError(
            f"--output_dir {out} is a lab2 training run's folder; lab2-eval writes only into a folder of its own. "
            f"Leave --output_dir out (it then writes {out / 'eval'}) or choose a new or empty folder."
        )


REPORT_MARK = '<meta name="generator" content="lab2-report">'  # in every page lab2 writes (lab2.report.pages)
EXPORT_MARK = ("written_by", "lab2-export")  # in the safetensors metadata of every file lab2-export writes


def _check_new_file(target: Path, flag: str, command: str, replaceable) -> None:
    """A file a command writes: its folder must exist; the file must be new, or one `replaceable(path)` knows as
    lab2's. Otherwise one UserError; nothing is written."""
    if target.is_dir():
        raise UserError(f"{flag} {target} is a folder; give a file name.")
    if not target.parent.is_dir():
        raise UserError(
            f"{flag} {target}: the folder {target.parent} does not exist; create it first or choose another {flag}."
        )
    if (target.exists() or target.is_symlink()) and not replaceable(target):
        raise UserError(
            f"{target} exists and is not a file {command} wrote; it replaces only its own files, never yours "
            f"or another command's. Choose another {flag}, or move the file away."
        )


def check_report_target(report: str | Path) -> None:
    """lab2-report replaces a report.html in a run folder lab2 marked, or a page it wrote (REPORT_MARK)."""

    def replaceable(path: Path) -> bool:
        if path.name == "report.html" and marked_kind(path.parent) == "run":
            return True
        try:
            with open(path, "rb") as handle:
                return REPORT_MARK.encode() in handle.read(4096)
        except OSError:
            return False

    _check_new_file(Path(report), "--output", "lab2-report", replaceable)


def check_export_target(output: str | Path) -> None:
    """lab2-export writes a new file or replaces one it wrote itself (EXPORT_MARK), never a run's own model."""
    from safetensors import safe_open

    def replaceable(path: Path) -> bool:
        try:
            with safe_open(str(path), framework="pt") as handle:
                return (handle.metadata() or {}).get(EXPORT_MARK[0]) == EXPORT_MARK[1]
        except Exception:  # not a safetensors file at all: certainly not lab2-export's
            return False

    _check_new_file(Path(output), "--output", "lab2-export", replaceable)
