"""The exceptions that end a run early and their exit codes: a `UserError` is printed as one line without a
traceback; `TrainingStopped` and `Diverged` travel from the loop to lab2.api (exit codes on the command line,
exceptions from lab2.train). Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from typing import NoReturn

# Exit codes are part of the command-line contract (docs/resume.md, "Exit codes").
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 3
EXIT_DIVERGED = 4
EXIT_PEER_LOST = 5  # a distributed run lost another process (killed node, network, timeout)
EXIT_DISK_FULL = 6  # the disk filled up; the message names the last good checkpoint


class UserError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""

    exit_code = EXIT_USER_ERROR


class ManyUserErrors(UserError):
    """Several independent problems with one input: each is printed as its own `error:` line."""

    def __init__(self, subject: str, problems: list[str]):
        super().__init__(f"{subject}: " + "; ".join(problems))
        self.lines = [f"{subject}: {problem}" for problem in problems]


class SecondInterrupt(KeyboardInterrupt):
    """A second Ctrl-C while a stop is under way (lab2.engine.distributed.StopRequest): lab2 stops at once."""


class TrainingStopped(Exception):
    """A stop was requested (SIGINT/SIGTERM) and the loop saved a checkpoint before leaving."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, signal_name: str | None = None):
        super().__init__(f"stopped by {signal_name or 'a signal'}")


class Diverged(Exception):
    """The loss became NaN or inf at optimizer step `step`; no checkpoint holds the bad weights."""

    exit_code = EXIT_DIVERGED

    def __init__(self, step: int):
        super().__init__(f"the loss became NaN/inf at step {step}")
        self.step = step


class DiskFull(UserError):
    """The disk filled up while lab2 wrote a file; the message says where and what survived."""

    exit_code = EXIT_DISK_FULL


def is_disk_full(exc: BaseException, folder=None) -> bool:
    """Whether `exc` (or one it wraps) means a full disk or quota: torch.save says ENOSPC as "file write failed"
    (counted when `folder` has almost no space left), safetensors as "StorageFull"."""
    import errno
    import shutil
    from contextlib import suppress

    while exc is not None:  # the exception, then what it was raised from or during
        text = str(exc)
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
            return True
        if "StorageFull" in text or isinstance(exc, DiskFull):
            return True
        if "file write failed" in text and folder is not None:
            with suppress(OSError):
                return shutil.disk_usage(folder).free < 16 * 2**20
        exc = exc.__cause__ or exc.__context__
    return False


def exit_with_user_error(error: UserError, prog: str = "lab2") -> NoReturn:
    """Print `error` as one line on stderr and exit with its code (EXIT_USER_ERROR, or EXIT_DISK_FULL)."""
    for line in getattr(error, "lines", None) or [str(error)]:
        message = " ".join(line.split())  # one line, whatever the message held
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(error.exit_code)
