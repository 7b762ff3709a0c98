"""The checks a TrainConfig passes after parsing: each number in its range, text flags in their form, and the
combinations of flags that cannot work together. Used by the command line and by lab2.train alike."""

from __future__ import annotations

import dataclasses

from lab2.config.flag_types import check_float, check_int
from lab2.config.report_to import parse_report_to
from lab2.config.train_config import STEPS, TrainConfig
from lab2.errors import UserError


def numeric_kind(f: dataclasses.Field) -> str | None:
    """'int' or 'float' for a numeric field (Optional included), else None."""
    base = f.type.replace("typing.Optional[", "").rstrip("]")
    return base if base in ("int", "float") else None


def check_flow_log_steps(value) -> str:
    """'auto', or a whole number of steps (0: off) in ASCII digits; an int from Python is taken as its text."""
    if value == "auto":
        return value
    try:
        return str(check_int("--flow_log_steps", value, minimum=0, maximum=STEPS["maximum"]))
    except UserError:
        raise UserError(
            f"--flow_log_steps must be 'auto', 0 (off) or a whole number of steps, got {value!r}."
        ) from None


def check_checkpointing_steps(value: str) -> str:
    """'epoch', 'none', or a positive whole number of steps in ASCII digits."""
    if value in ("epoch", "none"):
        return value
    try:
        check_int("--checkpointing_steps", value, **STEPS)
    except UserError:
        raise UserError(
            f"--checkpointing_steps must be 'epoch', 'none' or a whole number of steps in 1..{STEPS['maximum']:,}, "
            f"got {value!r}."
        ) from None
    return value


def check_values(cfg: TrainConfig) -> None:
    """Raise UserError for values no run can use, naming the flag and the fix.

    Each numeric field is checked against its declared range here too, so a
    TrainConfig built in Python (lab2.train, config.json) meets the same rules
    as the command line.
    """
    for f in dataclasses.fields(TrainConfig):
        kind, value = numeric_kind(f), getattr(cfg, f.name)
        if kind is None or (value is None and f.type.startswith("typing.Optional")):
            continue
        check = check_int if kind == "int" else check_float
        setattr(cfg, f.name, check(f"--{f.name}", value, **f.metadata["bounds"]))
    check_checkpointing_steps(cfg.checkpointing_steps)
    cfg.flow_log_steps = check_flow_log_steps(cfg.flow_log_steps)
    parse_report_to(cfg.report_to)  # unknown names and missing tracker packages
    if cfg.dataset_name and cfg.dataset != "cifar10":
        raise UserError(
            f"--dataset_name and --dataset {cfg.dataset} conflict: --dataset_name replaces the on-disk data; "
            "give one of them."
        )
    _validate_recipe_flags(cfg)
    if cfg.resume_from_checkpoint and cfg.overwrite_output_dir:
        raise UserError(
            "--resume_from_checkpoint and --overwrite_output_dir conflict: resuming continues the run in "
            "--output_dir, overwriting starts it afresh; give one of them."
        )


def _validate_recipe_flags(cfg: TrainConfig) -> None:
    """The optimizer, schedule and evaluation flags: fractions in [0, 1), nothing negative."""
    fractions = {
        "warmup_ratio": cfg.warmup_ratio,
        "label_smoothing_factor": cfg.label_smoothing_factor,
        "momentum": cfg.momentum,
    }
    for name, value in fractions.items():
        if not 0.0 <= value < 1.0:
            raise UserError(f"--{name} must be at least 0 and below 1, got {value:g}.")
    if not cfg.weight_decay >= 0.0:
        raise UserError(f"--weight_decay must be 0 or more, got {cfg.weight_decay:g}.")
    if cfg.eval_steps is not None and cfg.eval_steps <= 0:
        raise UserError(f"--eval_steps must be a positive number of optimizer steps, got {cfg.eval_steps}.")
    if cfg.eval_steps is not None and cfg.eval_strategy != "steps":
        raise UserError(
            f"--eval_steps applies only with --eval_strategy steps (now {cfg.eval_strategy}); "
            "add --eval_strategy steps or drop --eval_steps."
        )
