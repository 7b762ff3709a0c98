"""Writing files whole: `atomic_write` (a temporary file beside the target, then a rename) with its text and JSON
forms, and the JSONL logs' append and read, which survive a kill or a full disk mid-write."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from lab2.errors import DiskFull, UserError, is_disk_full

# Every output's mode, as any program's: mkstemp, mkdtemp and safetensors alone make 0600/0700 whatever the umask.
# Reading the umask means setting it: the restrictive 0o077 in between, so that a file another thread creates in
# that instant is never more open than the user asked (the umask is process-wide).
_MASK = os.umask(0o077)
os.umask(_MASK)
FILE_MODE, FOLDER_MODE = 0o666 & ~_MASK, 0o777 & ~_MASK


def new_temporary(beside: str | Path, folder: bool = False) -> Path:
    """A new file (or folder) `.<name>.<random>.tmp` beside `beside`, created exclusively: it can never be an entry
    already there, so nothing a user named so is ever taken for lab2's. It has the outputs' mode."""
    beside = Path(beside)
    names = {"dir": beside.parent, "prefix": f".{beside.name}.", "suffix": ".tmp"}
    if folder:
        made = tempfile.mkdtemp(**names)
    else:
        fd, made = tempfile.mkstemp(**names)
        os.close(fd)
    os.chmod(made, FOLDER_MODE if folder else FILE_MODE)
    return Path(made)


def atomic_write(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Write `target` whole or not at all: `write(tmp)` fills a temporary file beside it, synced, then renamed over
    `target`. Any failure removes the temporary file; a full disk is a DiskFull naming the folder. Returns `target`."""
    target = Path(target)
    tmp = None
    try:
        tmp = new_temporary(target)
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, UserError) and is_disk_full(exc, target.parent):
            full = DiskFull(
                f"the disk holding {target.parent} is full: writing {target.name} failed and nothing was left of it; "
                "free space there (or write somewhere else) and run the command again."
            )
            full.path = target  # for training's message, which names the checkpoint to resume from instead
            raise full from exc
        raise
    return target


def write_text(target: str | Path, text: str) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(target: str | Path, data) -> Path:
    return write_text(target, json.dumps(data, indent=2))


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line, in one write() on an O_APPEND descriptor, so that the file never keeps half a line: a
    line torn by an earlier kill is cut off first, and a write that fails part-way (a full disk) is undone."""
    data = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line: cut it off
            start = max(0, size - (1 << 20))
            size = start + os.pread(fd, size - start, start).rfind(b"\n") + 1  # rfind is -1 without a newline
            os.ftruncate(fd, size)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(28, "No space left on device (short write)")
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file; a torn last line (a kill or full disk mid-append) is skipped with a warning.
    Any other line that is not a JSON object is a UserError naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}).") from None
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
            print(f"warning: {path}: the last line is incomplete (an interrupted write); skipped it.", file=sys.stderr)
        else:
            raise UserError(
                f"{path} line {number} is not a JSON record; the file is damaged. Restore it, or delete the line."
            )
    return records


def keep_jsonl(path: str | Path, keep: Callable[[dict], bool]) -> list[dict]:
    """Rewrite a JSONL file with only the records `keep` accepts (used when resuming); return them. A record
    without the field `keep` asks for is dropped."""

    def kept(record: dict) -> bool:
        try:
            return bool(keep(record))
        except (KeyError, TypeError, ValueError):
            return False

    records = [r for r in read_jsonl(path) if kept(r)]
    if Path(path).exists():
        write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return records
