"""Where a run's files live (`RunPaths`) and the small, atomic JSON/JSONL writers they use."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from lab2.errors import UserError


class RunPaths:
    """Every file a run writes, under one output folder (the layout in DESIGN.md)."""

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
    wandb = property(lambda self: self.root / "wandb")


def temporary_beside(path: str | Path) -> Path:
    """A new temporary file beside `path`, created with a unique name (O_EXCL): writing it can never replace a
    file that is already there, whoever wrote it. Rename it onto `path` once complete."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp's 0600 would follow the file through the rename
    return Path(name)


def write_json(path: str | Path, data) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill leaves no half-written temporary file behind
        raise


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line so that the file never keeps half a line.

    The line goes out in one write() on an O_APPEND descriptor. A line left
    half-written by an earlier kill is cut off first (readers skip it anyway);
    a write that fails part-way (a full disk) is cut back to the old end before
    the error is raised.
    """
    data = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line: cut it off
            start = max(0, size - (1 << 20))
            size = start + os.pread(fd, size - start, start).rfind(b"\n") + 1  # rfind is -1 without a newline
            os.ftruncate(fd, size)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, "No space left on device (short write)")
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_jsonl(path: str | Path, warn: Callable[[str], None] | None = None) -> list[dict]:
    """The records of a JSONL file; a torn last line (a kill or full disk mid-append) is skipped with a warning.

    Any other line that is not a JSON object is a UserError naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}).") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):  # no newline after it: the append that wrote it was cut short
            (warn or _warn)(f"warning: {path}: the last line is incomplete (an interrupted write); skipped it.")
        else:
            raise UserError(
                f"{path} line {number} is not a JSON record; the file is damaged. Restore it, or delete the line."
            )
    return records


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def keep_jsonl(path: str | Path, keep: Callable[[dict], bool]) -> list[dict]:
    """Rewrite a JSONL file with only the records `keep` accepts (used when resuming); return them."""

    def kept(record: dict) -> bool:
        try:
            return bool(keep(record))
        except (KeyError, TypeError, ValueError):  # a record without the field asked for: drop it
            return False

    records = [r for r in read_jsonl(path) if kept(r)]
    path = Path(path)
    if path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        tmp.replace(path)
    return records
