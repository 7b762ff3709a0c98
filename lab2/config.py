"""The flags in one place: `TrainConfig` (one dataclass, one field per flag: help, choices, range, --help group),
the registries' names, the recipes, the number checks and the checks after parsing, and `--report_to`.

lab2.flags builds the argparse parser from the fields, so a new field is a new flag with its default
shown in `--help`, and `asdict(cfg)` is what goes to the trackers and to `config.json`. Imports no torch,
so --help answers at once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import operator
import re
from dataclasses import dataclass, field

from lab2.errors import UserError

DATASETS = ("cifar10", "fake")
DATA_PIPELINES = ("device", "torchvision")
CHANNELS_LAST = ("auto", "on", "off")
# The names of the registries that build them (lab2.engine.optim, lab2.models), defined here so that --help
# needs no torch and nothing here imports upward; tests/test_optim.py and tests/test_models.py keep them equal.
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULERS = ("constant", "linear", "cosine", "one_cycle")
MODEL_NAMES = ("simple_cnn",)
EVAL_STRATEGIES = ("epoch", "steps", "no")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
HISTOGRAM_CHOICES = ("all", "weights", "off", "on")  # "on": the old spelling of "all"

# The --help sections, in the order they are shown; every flag names one.
DATA, MODEL, OPTIMIZATION, EVALUATION = "data", "model", "optimization and recipe", "evaluation"
OUTPUT, CHECKPOINTS, DISTRIBUTED, SPEED = (
    "output, logging and trackers",
    "checkpoints and resume",
    "distributed",
    "speed",
)
GROUPS = (DATA, MODEL, OPTIMIZATION, EVALUATION, OUTPUT, CHECKPOINTS, DISTRIBUTED, SPEED)

# Ranges of the numeric flags (minimum/maximum, or the open ends above/below): wide enough for any real run, narrow
# enough that no value is absurd (a seed numpy refuses, a timeout timedelta overflows on, a fake set beyond memory).
COUNT = {"minimum": 1, "maximum": 100_000_000}
STEPS = {"minimum": 1, "maximum": 1_000_000_000}
BATCH = {"minimum": 1, "maximum": 65_536}
FAKE = {"minimum": 1, "maximum": 1_000_000}
FRACTION = {"minimum": 0.0, "below": 1.0}
FLOW_SNAPSHOTS, FLOW_MIN_STEPS = 50, 10  # --flow_log_steps auto

# --recipe: named presets of the training flags, chosen by experiment; flags given explicitly win. Plain data, so the
# command line applies a recipe before torch loads. The runs that chose `fast` are in bench/recipe_tuning.md.
RECIPES: dict[str, dict[str, object]] = {
    "none": {},  # the seed's recipe: Adam 1e-3, batch 128, constant rate, 30 epochs (the flags' defaults)
    # bench/recipe_tuning.md, run 6: 67.2% at epoch 14 and 66.8% at 15 with flips, against the seed's
    # 66.4% after 30 epochs. Peaks of 7e-4 and 1e-3 beat 2e-3 and 3e-3 by 5-9 points mid-run.
    "fast": {
        "optim": "adamw",
        "learning_rate": 7e-4,
        "weight_decay": 0.05,
        "lr_scheduler_type": "one_cycle",
        "warmup_ratio": 0.2,
        "label_smoothing_factor": 0.1,
        "per_device_train_batch_size": 64,
        "num_train_epochs": 15,
        "tta": True,
    },
}


def recipe_values(name: str, given: set[str] | frozenset[str] = frozenset()) -> dict[str, object]:
    """The flag values recipe `name` sets, less the flags in `given` (those the user gave explicitly)."""
    return {flag: value for flag, value in RECIPES[name].items() if flag not in given}


def _flag(default, help_text: str, group: str, choices: tuple[str, ...] | None = None, **bounds):
    """A dataclass field that is a flag: its default, --help text and section, and its choices or (numbers) range."""
    return field(default=default, metadata={"help": help_text, "group": group, "choices": choices, "bounds": bounds})


@dataclass
class TrainConfig:
    # Data
    data_dir: str = _flag("./data", "folder holding (or receiving) cifar-10-batches-py/", DATA)
    dataset: str = _flag("cifar10", "cifar10, or fake (synthetic, offline, for smoke tests)", DATA, DATASETS)
    dataset_name: str = _flag("", "a Hugging Face Hub id or a save_to_disk folder, instead of --data_dir", DATA)
    image_column: str = _flag("", "image column of --dataset_name (auto-detected when empty)", DATA)
    label_column: str = _flag("", "label column of --dataset_name (auto-detected when empty)", DATA)
    data_pipeline: str = _flag(
        "device",
        "device (uint8 on the device, batched augmentation) or torchvision (per-image PIL path)",
        SPEED,
        DATA_PIPELINES,
    )
    num_workers: int = _flag(2, "DataLoader workers for --data_pipeline torchvision", SPEED, minimum=0, maximum=256)
    max_train_samples: int | None = _flag(
        None, "use only the first N training images (smoke runs) (default: all)", DATA, **COUNT
    )
    max_eval_samples: int | None = _flag(
        None, "use only the first N test images (smoke runs) (default: all)", DATA, **COUNT
    )
    fake_train_samples: int = _flag(2048, "training images generated by --dataset fake", DATA, **FAKE)
    fake_test_samples: int = _flag(512, "test images generated by --dataset fake", DATA, **FAKE)
    # Model and optimisation
    model: str = _flag("simple_cnn", "the network, from the model registry (lab2.models.MODELS)", MODEL, MODEL_NAMES)
    num_train_epochs: int = _flag(30, "epochs to train", OPTIMIZATION, minimum=1, maximum=100_000)
    per_device_train_batch_size: int = _flag(128, "training batch size per process", OPTIMIZATION, **BATCH)
    per_device_eval_batch_size: int = _flag(512, "evaluation batch size per process", EVALUATION, **BATCH)
    learning_rate: float = _flag(
        1e-3, "peak learning rate (the seed: Adam at a constant 1e-3)", OPTIMIZATION, above=0.0
    )
    # Recipe flags, with transformers TrainingArguments names and meanings (lab2.engine.optim documents the shapes)
    recipe: str = _flag(
        "none",
        "a preset of the recipe flags (lab2.config.RECIPES); flags given explicitly win",
        OPTIMIZATION,
        tuple(RECIPES),
    )
    optim: str = _flag(
        "adam", "adam (the seed), adamw (decoupled weight decay), or sgd (Nesterov momentum)", OPTIMIZATION, OPTIMIZERS
    )
    momentum: float = _flag(0.9, "momentum of --optim sgd (Nesterov when above 0)", OPTIMIZATION, **FRACTION)
    weight_decay: float = _flag(
        0.0, "weight decay (L2 for adam and sgd, decoupled for adamw)", OPTIMIZATION, minimum=0.0, maximum=1e6
    )
    lr_scheduler_type: str = _flag(
        "constant", "learning-rate schedule over the run, stepped per optimizer step", OPTIMIZATION, LR_SCHEDULERS
    )
    warmup_ratio: float = _flag(
        0.0,
        "fraction of the steps warming up linearly (one_cycle: where the peak is; 0 means 0.3)",
        OPTIMIZATION,
        **FRACTION,
    )
    label_smoothing_factor: float = _flag(
        0.0, "label smoothing of the training loss (torch's cross_entropy label_smoothing)", OPTIMIZATION, **FRACTION
    )
    tta: bool = _flag(
        False, "test-time augmentation: evaluate on each image and its mirror image, averaging the logits", EVALUATION
    )
    eval_strategy: str = _flag(
        "epoch",
        "evaluate every epoch, every --eval_steps optimizer steps, or no (only at the end)",
        EVALUATION,
        EVAL_STRATEGIES,
    )
    eval_steps: int | None = _flag(
        None,
        "optimizer steps between evaluations with --eval_strategy steps (default: --logging_steps)",
        EVALUATION,
        **STEPS,
    )
    dataloader_drop_last: bool = _flag(
        False, "drop each epoch's last partial training batch (static shapes for CUDA graphs)", OPTIMIZATION
    )
    seed: int = _flag(42, "seed for weights, data order and augmentation", OPTIMIZATION, minimum=0, maximum=2**32 - 1)
    channels_last: str = _flag("auto", "memory format: auto (on for CPU and CUDA), on, off", SPEED, CHANNELS_LAST)
    torch_compile: bool = _flag(False, "wrap the model in torch.compile (helps on GPUs, hurts on CPUs)", SPEED)
    torch_compile_mode: str = _flag(
        "default",
        "torch.compile mode; reduce-overhead adds CUDA graphs (pair it with --dataloader_drop_last)",
        SPEED,
        COMPILE_MODES,
    )
    # Output and tracking
    output_dir: str = _flag("", "everything a run writes goes here (default: runs/<run_name>)", OUTPUT)
    run_name: str = _flag("", "name of the run (default: <model>-<date>-<time>)", OUTPUT)
    project_name: str = _flag("lab2", "tracker project (the W&B project)", OUTPUT)
    report_to: str = _flag(
        "wandb",
        "wandb, tensorboard, mlflow, a comma list of them, all (every installed one) "
        "or none (W&B goes offline without credentials)",
        OUTPUT,
    )
    logging_steps: int = _flag(
        50, "check the loss for NaN/inf and log train/loss every N optimizer steps", OUTPUT, **STEPS
    )
    flow_log_steps: str = _flag(
        "auto",
        "gradient/weight flow snapshots: auto (about 50 over the run, at least 10 steps apart), every N optimizer "
        "steps, or 0 (off)",
        OUTPUT,
    )
    log_histograms: str = _flag(
        "all",
        "gradient and value histograms at every flow snapshot: all (every parameter, as wandb.watch log='all'), "
        "weights (each layer's weight tensor only) or off; on means all",
        OUTPUT,
        HISTOGRAM_CHOICES,
    )
    wandb_init_timeout_s: float = _flag(
        10.0,
        "seconds W&B may take to start online; past them the run logs offline into the run folder",
        OUTPUT,
        above=0.0,
        maximum=600.0,
    )
    num_prediction_samples: int = _flag(24, "images in the predictions grid", EVALUATION, minimum=0, maximum=256)
    # Checkpoints
    checkpointing_steps: str = _flag("epoch", "epoch, an integer number of optimizer steps, or none", CHECKPOINTS)
    checkpoints_total_limit: int = _flag(
        2, "how many checkpoints to keep (at least 1)", CHECKPOINTS, minimum=1, maximum=10_000
    )
    resume_from_checkpoint: str = _flag("", "a checkpoint folder, or latest", CHECKPOINTS)
    overwrite_output_dir: bool = _flag(False, "allow reusing a folder that holds a finished run", CHECKPOINTS)
    dist_timeout_s: int = _flag(
        600,
        "seconds a process waits for the others before failing (distributed runs)",
        DISTRIBUTED,
        minimum=1,
        maximum=7 * 24 * 3600,
    )

    @property
    def checkpoint_every_steps(self) -> int | None:
        """Optimizer steps between checkpoints, or None for per-epoch/no checkpoints."""
        return None if self.checkpointing_steps in ("epoch", "none") else int(self.checkpointing_steps)

    def flow_every_steps(self, total_steps: int) -> int:
        """Optimizer steps between flow snapshots in a run of `total_steps` (0: none). `auto` aims at
        FLOW_SNAPSHOTS over the run but never closer than FLOW_MIN_STEPS: on a CPU a snapshot costs about one
        training step (bench/RESULTS.md), so at most ~10% of a short run and far less of a long one."""
        if self.flow_log_steps != "auto":
            return int(self.flow_log_steps)
        return max(FLOW_MIN_STEPS, -(-total_steps // FLOW_SNAPSHOTS))

    @property
    def eval_every_steps(self) -> int | None:
        """Optimizer steps between evaluations for --eval_strategy steps (--eval_steps, else --logging_steps),
        or None."""
        if self.eval_strategy != "steps":
            return None
        return self.eval_steps or self.logging_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_type(f: dataclasses.Field) -> tuple[type, bool]:
    """The Python type of TrainConfig field `f` (annotations are text here, e.g. "int | None"), and whether None
    is allowed."""
    name, optional = f.type.removesuffix(" | None"), f.type.endswith(" | None")
    return {"int": int, "float": float, "str": str, "bool": bool}[name], optional


# Numbers from text: ASCII digits, point, exponent and sign only, since int() and float() also take "١٢", "1_000",
# blanks, "nan" and "inf". What the characters allow and the type refuses ("1.5" for an int) is refused too.
_NUMBER_TEXT = re.compile(r"[0-9.eE+-]+")
_IN_WORDS = {int: "a whole number written in ASCII digits", float: "a finite decimal number"}
# Each bound of a range: how it reads in an error, and the test a value passes.
_BOUNDS = {
    "minimum": (">=", operator.ge),
    "above": (">", operator.gt),
    "maximum": ("<=", operator.le),
    "below": ("<", operator.lt),
}


def _shown(number) -> str:
    return f"{number:,}" if isinstance(number, int) else f"{number:,.10g}"


def check_number(flag: str, value, kind: type = int, **bounds) -> int | float:
    """`value` (a number, or its text) as a `kind` (int, or a finite float) inside `bounds` (minimum, maximum,
    above, below); otherwise a UserError naming `flag`, the value and the range."""
    if isinstance(value, str):
        try:
            if not _NUMBER_TEXT.fullmatch(value):
                raise ValueError(value)
            value = kind(value)
        except ValueError:
            raise UserError(f"{flag} must be {_IN_WORDS[kind]}, got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise UserError(f"{flag} must be a {'whole ' if kind is int else ''}number, got {value!r}.")
    value = kind(value)
    if kind is float and not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value}.")
    if not all(_BOUNDS[name][1](value, limit) for name, limit in bounds.items()):
        limits = " and ".join(f"{_BOUNDS[name][0]} {_shown(limit)}" for name, limit in bounds.items())
        raise UserError(f"{flag} must be {limits}, got {_shown(value)}.")
    return value


# tracker -> (module to import, what to pip install)
TRACKER_PACKAGES = {
    "wandb": ("wandb", "wandb"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow-skinny"),
}
REPORT_TO_CHOICES = (*TRACKER_PACKAGES, "all", "none")


def _installed(tracker: str) -> bool:
    return importlib.util.find_spec(TRACKER_PACKAGES[tracker][0]) is not None


def parse_report_to(value: str) -> list[str]:
    """The trackers `value` names, in lab2's order, without repeats; [] for 'none'. Raises UserError for bad input."""
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in REPORT_TO_CHOICES]
    if not names or unknown:
        raise UserError(
            f"--report_to {value!r}: unknown tracker {', '.join(map(repr, unknown)) or '(empty)'}; "
            f"give one or a comma list of {', '.join(TRACKER_PACKAGES)}, or all, or none."
        )
    if "none" in names:
        if len(names) > 1:
            raise UserError(f"--report_to {value!r}: 'none' cannot be combined with trackers; give none alone.")
        return []
    if "all" in names:
        chosen = [tracker for tracker in TRACKER_PACKAGES if _installed(tracker)]
        if not chosen:
            raise UserError(
                "--report_to all: no tracker package is installed; pip install wandb, tensorboard or mlflow-skinny, "
                "or pass --report_to none."
            )
        return chosen
    for tracker in names:
        if not _installed(tracker):
            module, package = TRACKER_PACKAGES[tracker]
            raise UserError(
                f"--report_to {tracker} needs the {module} package, which is not installed: pip install {package} "
                "(or choose another --report_to)."
            )
    return [tracker for tracker in TRACKER_PACKAGES if tracker in names]


def log_with_for(report_to: str) -> list[str] | None:
    """The Accelerator's `log_with` for --report_to (a name, a comma list, all or none)."""
    return parse_report_to(report_to) or None


def _check_steps(flag: str, value, words: tuple[str, ...], minimum: int) -> str:
    """One of `words`, or a whole number of optimizer steps (its ASCII text, or an int from Python) as text."""
    if value in words:
        return value
    try:
        return str(check_number(flag, value, minimum=minimum, maximum=STEPS["maximum"]))
    except UserError:
        allowed = ", ".join(map(repr, words))
        raise UserError(
            f"{flag} must be {allowed} or a whole number of steps in {minimum}..{STEPS['maximum']:,}, got {value!r}."
        ) from None


def check_checkpointing_steps(value) -> str:
    return _check_steps("--checkpointing_steps", value, ("epoch", "none"), minimum=1)


def check_flow_log_steps(value) -> str:
    return _check_steps("--flow_log_steps", value, ("auto",), minimum=0)  # 0: no snapshots


def check_values(cfg: TrainConfig) -> None:
    """Raise UserError for values no run can use, naming the flag and the fix.

    Each numeric field is checked against its range here too, so a TrainConfig built in Python (lab2.train,
    config.json) meets the same rules as the command line.
    """
    for f in dataclasses.fields(TrainConfig):
        (kind, optional), value = field_type(f), getattr(cfg, f.name)
        if kind in (int, float) and not (value is None and optional):
            setattr(cfg, f.name, check_number(f"--{f.name}", value, kind, **f.metadata["bounds"]))
    cfg.checkpointing_steps = check_checkpointing_steps(cfg.checkpointing_steps)
    cfg.flow_log_steps = check_flow_log_steps(cfg.flow_log_steps)
    parse_report_to(cfg.report_to)  # unknown names and missing tracker packages
    if cfg.dataset_name and cfg.dataset != "cifar10":
        raise UserError(
            f"--dataset_name and --dataset {cfg.dataset} conflict: --dataset_name replaces the on-disk data; "
            "give one of them."
        )
    if cfg.eval_steps is not None and cfg.eval_strategy != "steps":
        raise UserError(
            f"--eval_steps applies only with --eval_strategy steps (now {cfg.eval_strategy}); "
            "add --eval_strategy steps or drop --eval_steps."
        )
    if cfg.resume_from_checkpoint and cfg.overwrite_output_dir:
        raise UserError(
            "--resume_from_checkpoint and --overwrite_output_dir conflict: resuming continues the run in "
            "--output_dir, overwriting starts it afresh; give one of them."
        )
