"""lab2's one write policy: which folders and files every command may write, replace or remove.

The rule (README, "Your files are safe"), for lab2-train, lab2-eval, lab2-export, lab2-report and the trackers:

- lab2 writes a new file, or replaces or removes a file it wrote: known by name in a folder it marked as its
  own (the marker `.lab2-run.json`, which also says which command's folder it is), or by a marker inside the
  file (lab2-export's metadata, lab2-report's <meta name="generator">);
- folders: a command writes into a missing or empty folder, or one it marked itself;
- `--overwrite_output_dir` removes only the files lab2 and its trackers write, by name (`owned_files`;
  the trackers' names are in lab2.state.tracker_files), never a whole folder holding something else;
- anything else is a UserError (one line, exit 2), before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from lab2.errors import UserError
from lab2.figures import RUN_FIGURES
from lab2.state.run_paths import RunPaths, write_json
from lab2.state.tracker_files import mlflow_files, wandb_files

MARKER = ".lab2-run.json"
# Files a run writes at the top of its folder; its figures/<name>.png are lab2.figures.RUN_FIGURES.
RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "summary.json",
    "flops.json",
    "flow.jsonl",
    "training_log.txt",
    "model.safetensors",
    "report.html",
    "wandb_run.json",
    "mlflow_run.json",
)
EVAL_FILES = ("eval.json", "confusion_matrix.png", "class_accuracy.png", "predictions.png", "calibration.png")
# Folder entries written by lab2's checkpoints and TensorBoard, by name pattern inside their own subfolders.
CHECKPOINT_ENTRY = re.compile(r"^(\.tmp-|\.old-)?checkpoint_\d+$")
TENSORBOARD_ENTRY = re.compile(r"^(events\.out\.tfevents\..+|hparams\.yml)$")
TEMPORARY = re.compile(r"^\.(.+)\.tmp$|^\.write-test-\d+$")
# Files inside a checkpoint folder: Accelerate's save_state names, lab2's progress and manifest, temporary JSON.
CHECKPOINT_FILE = re.compile(
    r"^((model|optimizer|scheduler|scaler|sampler|random_states|custom_checkpoint|dl_state_dict|pytorch_model)"
    r"(_\d+)?\.(safetensors|bin|pt|pkl)|progress\.json|manifest\.json|\.(progress|manifest)\.json\.tmp)$"
)


def is_marked(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def marked_kind(folder: str | Path) -> str | None:
    """Which command marked `folder` ("run" or "eval"), or None when it is not marked; an unreadable marker
    still marks the folder as lab2's ("unknown")."""
    if not is_marked(folder):
        return None
    try:
        kind = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8")).get("lab2", "run")
    except (OSError, ValueError, AttributeError):
        return "unknown"
    return kind if isinstance(kind, str) else "unknown"


def _visible_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _foreign_summary(folder: Path) -> str:
    names = _visible_entries(folder)
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown})"


def check_output_dir(root: str | Path, resume: bool, overwrite: bool, flag: str = "--output_dir") -> None:
    """Refuse a folder lab2 may not write into, or a run it would clobber; read-only, safe on every process."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{flag} {root} is a file; give a folder.")
    if not root.exists() or not _visible_entries(root):
        return
    if not is_marked(root):
        raise UserError(
            f"{flag} {root} is not empty and is not a lab2 run folder: it holds {_foreign_summary(root)}; lab2 never "
            f"writes into a folder it did not start{', not even with --overwrite_output_dir' if overwrite else ''}. "
            "Choose a new or empty folder "
            "(a run of an older lab2 without the .lab2-run.json marker: move it away first)."
        )
    if marked_kind(root) == "eval":
        raise UserError(f"{flag} {root} is a lab2-eval output folder, not a training run's; choose another {flag}.")
    if resume or overwrite:
        return
    paths = RunPaths(root)
    if paths.summary.exists():
        raise UserError(
            f"{flag} {root} holds a finished run; pass --overwrite_output_dir to replace it, or choose another {flag}."
        )
    if paths.checkpoints.is_dir() and any(
        CHECKPOINT_ENTRY.match(p.name) and p.name.startswith("checkpoint_") for p in paths.checkpoints.iterdir()
    ):
        raise UserError(
            f"{flag} {root} holds an unfinished run's checkpoints; add --resume_from_checkpoint latest to continue it, "
            "or --overwrite_output_dir to start afresh."
        )


def claim(root: str | Path, kind: str = "run") -> None:
    """Create `root` if needed and mark it as lab2's (main process only; after check_output_dir)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not is_marked(root):
        write_json(root / MARKER, {"lab2": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def owned_files(root: str | Path) -> list[Path]:
    """Every existing file or folder under `root` that lab2 writes, found by name (never a user's file)."""
    root = Path(root)
    found = [root / name for name in RUN_FILES]
    found += [root / "figures" / f"{figure.name}.png" for figure in RUN_FIGURES]
    found += [root / "eval" / name for name in (*EVAL_FILES, MARKER)]
    found += [p for p in root.iterdir() if TEMPORARY.match(p.name)] if root.is_dir() else []
    checkpoints, wandb = root / "checkpoints", root / "wandb"
    for checkpoint in (
        (p for p in checkpoints.iterdir() if CHECKPOINT_ENTRY.match(p.name)) if checkpoints.is_dir() else ()
    ):
        found += (
            [p for p in checkpoint.iterdir() if CHECKPOINT_FILE.match(p.name)] if checkpoint.is_dir() else [checkpoint]
        )
    found += wandb_files(wandb)
    found += mlflow_files(root / "mlruns", {*RUN_FILES, *(f"{figure.name}.png" for figure in RUN_FIGURES)})
    tensorboard = root / "tensorboard"
    if tensorboard.is_dir():
        found += [p for p in tensorboard.rglob("*") if p.is_file() and TENSORBOARD_ENTRY.match(p.name)]
    return [p for p in found if p.exists() or p.is_symlink()]


def remove_owned_files(root: str | Path) -> list[Path]:
    """--overwrite_output_dir: delete lab2's own files under a marked `root`, then its subfolders left empty."""
    root = Path(root)
    if not is_marked(root):
        raise UserError(f"{root} is not a lab2 run folder (no {MARKER}); lab2 removes files only from its own runs.")
    removed = owned_files(root)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for sub in ("figures", "eval", "checkpoints", "wandb", "tensorboard", "mlruns"):
        folder = root / sub
        for dirpath, _dirs, _files in os.walk(folder, topdown=False):  # deepest first
            try:
                Path(dirpath).rmdir()  # only empty folders: anything a user put there stays
            except OSError:
                pass
    return removed


def remove_checkpoint_files(folder: str | Path) -> bool:
    """Delete lab2's files from a checkpoint folder, and the folder once empty; return whether it is gone.

    A file someone else put into a checkpoint folder is left where it is.
    """
    folder = Path(folder)
    for path in folder.iterdir():
        if CHECKPOINT_FILE.match(path.name) and path.is_file():
            path.unlink()
    try:
        folder.rmdir()
        return True
    except OSError:
        return False


def check_eval_output_dir(out: str | Path) -> None:
    """lab2-eval writes into a missing or empty folder, or one it marked before (a run's eval/ by default)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} is a file; give a folder.")
    kind = marked_kind(out)
    if not _visible_entries(out) or kind == "eval":
        return
    if kind is not None:
        raise UserError(
            f"--output_dir {out} is a lab2 training run's folder; lab2-eval writes only into a folder of its own. "
            f"Leave --output_dir out (it then writes {out / 'eval'}) or choose a new or empty folder."
        )
    raise UserError(
        f"--output_dir {out} is not empty and is not a lab2-eval folder: it holds {_foreign_summary(out)}; "
        "lab2-eval never writes over files it did not write. Choose a new or empty folder."
    )


REPORT_MARK = '<meta name="generator" content="lab2-report">'  # in every page lab2 writes (lab2.report.pages)
EXPORT_MARK = ("written_by", "lab2-export")  # in the safetensors metadata of every file lab2-export writes


def _carries_report_mark(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return REPORT_MARK.encode() in handle.read(4096)
    except OSError:
        return False


def _carries_export_mark(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(EXPORT_MARK[0]) == EXPORT_MARK[1]
    except Exception:  # not a safetensors file at all: certainly not lab2-export's
        return False


def check_new_file(target: Path, flag: str, command: str, replaceable) -> None:
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
    report = Path(report)
    check_new_file(
        report,
        "--output",
        "lab2-report",
        lambda path: _carries_report_mark(path) or (path.name == "report.html" and marked_kind(path.parent) == "run"),
    )


def check_export_target(output: str | Path, flag: str = "--output") -> None:
    """lab2-export writes a new file or replaces one it wrote itself (EXPORT_MARK), never a run's own model."""
    check_new_file(Path(output), flag, "lab2-export", _carries_export_mark)
