"""The command line from lab2.config's TrainConfig (grouped --help, lab2's one-line errors, the number types of
every command), the same checks for flags given from Python (lab2.train) or a config.json, and how to resume."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lab2.config import (
    GROUPS,
    STEP_FLAGS,
    TrainConfig,
    check_number,
    check_steps,
    check_values,
    field_type,
    recipe_values,
)
from lab2.errors import EXIT_USER_ERROR, UserError


def _checked(check: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse `type=` from `check(text)`, which raises UserError naming the flag: argparse prints that line."""

    def parse(text: str):
        try:
            return check(text)
        except UserError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def number_flag(flag: str, kind: type = int, **bounds) -> Callable[[str], int | float]:
    """The argparse type of a numeric flag of any lab2 command: ASCII text, a finite `kind` inside `bounds`."""
    return _checked(functools.partial(check_number, flag, kind=kind, **bounds))


class Parser(argparse.ArgumentParser):
    """argparse with lab2's bad-input contract: one `prog: error: ...` line and exit 2, no usage block (checked
    types name the flag themselves, so argparse's "argument --x:" prefix is dropped for them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)  # `--num_train_ep` was taken: a typo picked a flag

    def error(self, message: str):
        message = re.sub(r"^argument (--\w+): (\1 )", r"\2", message)
        print(f"{self.prog}: error: {' '.join(message.split())} (see --help)", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


EXAMPLES = """examples:
  the lab's recipe (SimpleCNN, Adam 1e-3, batch 128, 30 epochs) on CIFAR-10 in ./data (downloaded if missing):
    %(prog)s --data_dir ./data
  the fast recipe (15 epochs, one-cycle AdamW, label smoothing, test-time flips):
    %(prog)s --data_dir ./data --recipe fast
  synthetic images, no download: checks the pipeline, its accuracy means nothing:
    %(prog)s --dataset fake --num_train_epochs 1 --report_to none
  continue a stopped run (give its other flags again too):
    %(prog)s --output_dir runs/NAME --resume_from_checkpoint latest

Under `make train`, these flags go in TRAIN_ARGS="..." and the data folder in DATA_DIR=...
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Each default once, none for an empty or None one (the help says what it means); the epilog as written."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or "") or action.default in (None, ""):
            return action.help
        return super()._get_help_string(action)


def _program_name() -> str:
    """lab2-train or train_accelerate.py, as the user typed it; `python -m lab2.api` as typed too (its argv[0]
    is the module's file, api.py, which is no command)."""
    path = sys.argv[0].replace(os.sep, "/") if sys.argv else ""
    if path.endswith("lab2/api.py"):
        return "python -m lab2.api"
    return os.path.basename(path) if os.path.basename(path) not in ("", "__main__.py", "-c") else "train_accelerate.py"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog or _program_name(),
        usage="%(prog)s [options]    (the options are grouped below; examples at the end)",
        description="Train a CIFAR-10 CNN with Hugging Face Accelerate and explain it.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    sections = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in dataclasses.fields(TrainConfig):
        kind, flag = field_type(f)[0], f"--{f.name}"
        # Values are checked at parse time too, so that a bad one is argparse's one line and exit 2.
        if kind is bool:  # --flag / --no-flag: a recipe may switch a flag on that the user wants off
            how = {"action": argparse.BooleanOptionalAction}
        elif kind in (int, float):
            how = {"type": number_flag(flag, kind, **f.metadata["bounds"]), "metavar": "N" if kind is int else "X"}
        else:  # text: --help shows its choices, or its name
            steps = _checked(functools.partial(check_steps, f.name)) if f.name in STEP_FLAGS else str
            how = {"type": steps, "choices": f.metadata["choices"]}
        sections[f.metadata["group"]].add_argument(flag, default=f.default, help=f.metadata["help"], **how)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse flags into a validated TrainConfig (bad flags: one `error:` line and exit 2; bad values: UserError)."""
    values = vars(build_parser().parse_args(argv))
    # The flags given explicitly (they win over --recipe): parsed again with every default suppressed.
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    values.update(recipe_values(values["recipe"], set(vars(probe.parse_args(argv)))))
    return _finish(TrainConfig(**values))


def _finish(cfg: TrainConfig) -> TrainConfig:
    """Validate, then fill in the run name and output folder (default: from the time of the run)."""
    check_values(cfg)
    if cfg.resume_from_checkpoint and cfg.output_dir:
        # A resumed run keeps its name, and its tracker project where --project_name is not given (WANDB_PROJECT
        # may have chosen it): another one would continue the W&B run in a second project.
        saved = _saved_config(Path(cfg.output_dir) / "config.json")
        cfg.run_name = cfg.run_name or saved.get("run_name", "")
        if cfg.project_name == TrainConfig.project_name:
            cfg.project_name = saved.get("project_name", cfg.project_name)
    if not cfg.run_name:
        cfg.run_name = f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not cfg.output_dir:
        cfg.output_dir = str(Path("runs") / cfg.run_name)
    return cfg


def _saved_config(config_file: Path) -> dict[str, str]:
    """The non-empty run_name and project_name a run folder's config.json holds ({} without the file, or for one
    that is not lab2's: the resume says so)."""
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        return {k: saved[k] for k in ("run_name", "project_name") if isinstance(saved.get(k), str) and saved[k]}
    except (OSError, ValueError, AttributeError):
        return {}


def config_from_flags(**flags) -> TrainConfig:
    """A TrainConfig from flags given as Python values (lab2.train), with the command line's checks and defaults
    (or --recipe's values); UserError naming the flag for an unknown name, a wrong type or an invalid value."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in (name for name in flags if name not in fields):
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown flag {name!r}; {hint}the flags are lab2.config.TrainConfig's fields (see --help).")
    # None is "not given" (a notebook's `resume_from_checkpoint=None`): the flag keeps its default or recipe value.
    values = {name: value for name, value in flags.items() if value is not None}
    return _finish(TrainConfig(**{**recipe_values(values.get("recipe", "none"), set(values)), **values}))


def config_from_dict(values: dict) -> TrainConfig:
    """Rebuild a TrainConfig from `config.json` (unknown keys from newer versions are ignored)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names})


validate_config = check_values  # a `cfg` read from a file, checked as the command line checks flags


# How to resume, in the words of the command that started the run: `make train` takes the flags in TRAIN_ARGS
# and the folder in DATA_DIR (make would take "--output_dir ..." as its own option), so under make
# (LAB2_LAUNCHED_BY=make) the advice is a whole `make train ...` line rebuilt from this process's flags.
MAKE_ENV = "LAB2_LAUNCHED_BY"  # set to "make" by the Makefile's train target
MAKE_DEFAULT_DATA_DIR = "./data"  # the Makefile's DATA_DIR default: not repeated in the advice
RESUME_FLAGS = ("--output_dir", "--resume_from_checkpoint")  # replaced, not repeated


def launched_by_make(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(MAKE_ENV) == "make"


def resume_advice(output_dir, argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> str:
    resume = ["--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"]
    if not launched_by_make(env):
        return f"resume with the same command plus: {shlex.join(resume)}"
    argv = list(sys.argv[1:] if argv is None else argv)
    # The Makefile runs `train_accelerate.py --data_dir $(DATA_DIR) $(TRAIN_ARGS)`: a --data_dir in TRAIN_ARGS
    # comes after make's own and stays in TRAIN_ARGS.
    data_dir, argv = (argv[1], argv[2:]) if argv[1:] and argv[0] == "--data_dir" else (MAKE_DEFAULT_DATA_DIR, argv)
    flags, args = [], iter(argv)
    for arg in args:
        name, equals, _ = arg.partition("=")
        if name not in RESUME_FLAGS:
            flags.append(arg)
        elif not equals:
            next(args, None)  # its value
    command = ["make", "train", *([f"DATA_DIR={data_dir}"] if data_dir != MAKE_DEFAULT_DATA_DIR else [])]
    train_args = "TRAIN_ARGS=" + shlex.quote(shlex.join([*flags, *resume]))
    return "resume with: " + " ".join([*map(shlex.quote, command), train_args])
