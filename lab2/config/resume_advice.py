"""How to continue a stopped run, in the words of the command that started it.

`make train` passes the user's flags through TRAIN_ARGS and the data folder through DATA_DIR, so
"the same command plus --output_dir ..." would be taken by make as its own options. The Makefile sets
LAB2_LAUNCHED_BY=make; then the advice is a complete `make train ...` line rebuilt from this process's
flags. Imports no torch.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence

MAKE_ENV = "LAB2_LAUNCHED_BY"  # set to "make" by the Makefile's train target
MAKE_DEFAULT_DATA_DIR = "./data"  # the Makefile's DATA_DIR default: not repeated in the advice
RESUME_FLAGS = ("--output_dir", "--resume_from_checkpoint")  # replaced, not repeated


def launched_by_make(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(MAKE_ENV) == "make"


def _without(argv: Sequence[str], flags: Sequence[str], first_only: bool = False) -> tuple[list[str], list[str]]:
    """`argv` minus each `flag value` / `flag=value` of `flags` (only the first one with `first_only`), and the
    values removed."""
    kept, removed = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        name, equals, inline = args[i].partition("=")
        if name in flags and not (first_only and removed):
            removed.append(inline if equals else (args[i + 1] if i + 1 < len(args) else ""))
            i += 1 if equals else 2
            continue
        kept.append(args[i])
        i += 1
    return kept, removed


def resume_advice(output_dir, argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> str:
    """The sentence that tells the user how to resume the run in `output_dir`."""
    resume = ["--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"]
    if not launched_by_make(env):
        return f"resume with the same command plus: {shlex.join(resume)}"
    argv = sys.argv[1:] if argv is None else argv
    # The Makefile puts `--data_dir $(DATA_DIR)` before TRAIN_ARGS; a --data_dir in TRAIN_ARGS stays there.
    flags, data_dirs = _without(argv, ("--data_dir",), first_only=True)
    flags, _ = _without(flags, RESUME_FLAGS)
    data_dir = data_dirs[0] if data_dirs else MAKE_DEFAULT_DATA_DIR
    command = ["make", "train"]
    if data_dir != MAKE_DEFAULT_DATA_DIR:
        command.append(f"DATA_DIR={data_dir}")
    train_args = "TRAIN_ARGS=" + shlex.quote(shlex.join([*flags, *resume]))
    return "resume with: " + " ".join([*map(shlex.quote, command), train_args])
