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
import re
import typing
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


# The --help sections, in the order they are shown; every flag names one.
DATA, MODEL, OPTIMIZATION, EVALUATION = "data", "model", "optimization and recipe", "evaluation"
OUTPUT, CHECKPOINTS, DISTRIBUTED, SPEED = (
    "output, logging and trackers",
    "checkpoints and resume",
    "distributed",
    "speed",
)
GROUPS = (DATA, MODEL, OPTIMIZATION, EVALUATION, OUTPUT, CHECKPOINTS, DISTRIBUTED, SPEED)


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


def _flag(help_text: str, choices: tuple[str, ...] | None = None, bounds: dict | None = None, *, group: str, **kwargs):
    """A dataclass field that is a flag; `bounds` (minimum/maximum/above) is the range of a numeric flag, `group`
    its --help section."""
    return field(metadata={"help": help_text, "choices": choices, "bounds": bounds, "group": group}, **kwargs)


# Ranges of the numeric flags: wide enough for any real run, narrow enough that no value is absurd
# (a seed numpy refuses, a timeout timedelta overflows on, a fake set larger than memory).
COUNT = {"minimum": 1, "maximum": 100_000_000}
STEPS = {"minimum": 1, "maximum": 1_000_000_000}
BATCH = {"minimum": 1, "maximum": 65_536}
FLOW_SNAPSHOTS, FLOW_MIN_STEPS = 50, 10  # --flow_log_steps auto
FRACTION = {"minimum": 0.0, "maximum": 1.0}  # [0, 1); the open end is checked in _validate_recipe_flags


@dataclass
class TrainConfig:
    # Data
    data_dir: str = _flag("folder holding (or receiving) cifar-10-batches-py/", group=DATA, default="./data")
    dataset: str = _flag(
        "cifar10, or fake (synthetic, offline, for smoke tests)", DATASETS, group=DATA, default="cifar10"
    )
    dataset_name: str = _flag(
        "a Hugging Face Hub id or a save_to_disk folder, instead of --data_dir", group=DATA, default=""
    )
    image_column: str = _flag("image column of --dataset_name (auto-detected when empty)", group=DATA, default="")
    label_column: str = _flag("label column of --dataset_name (auto-detected when empty)", group=DATA, default="")
    data_pipeline: str = _flag(
        "device (uint8 on the device, batched augmentation) or torchvision (per-image PIL path)",
        DATA_PIPELINES,
        group=SPEED,
        default="device",
    )
    num_workers: int = _flag(
        "DataLoader workers for --data_pipeline torchvision",
        bounds={"minimum": 0, "maximum": 256},
        group=SPEED,
        default=2,
    )
    max_train_samples: typing.Optional[int] = _flag(  # noqa: UP045 - f.type text is parsed, see _annotation_type
        "use only the first N training images (smoke runs) (default: all)", bounds=COUNT, group=DATA, default=None
    )
    max_eval_samples: typing.Optional[int] = _flag(  # noqa: UP045 - f.type text is parsed, see _annotation_type
        "use only the first N test images (smoke runs) (default: all)", bounds=COUNT, group=DATA, default=None
    )
    fake_train_samples: int = _flag(
        "training images generated by --dataset fake",
        bounds={"minimum": 1, "maximum": 1_000_000},
        group=DATA,
        default=2048,
    )
    fake_test_samples: int = _flag(
        "test images generated by --dataset fake", bounds={"minimum": 1, "maximum": 1_000_000}, group=DATA, default=512
    )
    # Model and optimisation
    model: str = _flag(
        "the network, from the model registry (lab2.models.MODELS)", MODEL_NAMES, group=MODEL, default="simple_cnn"
    )
    num_train_epochs: int = _flag(
        "epochs to train", bounds={"minimum": 1, "maximum": 100_000}, group=OPTIMIZATION, default=30
    )
    per_device_train_batch_size: int = _flag(
        "training batch size per process", bounds=BATCH, group=OPTIMIZATION, default=128
    )
    per_device_eval_batch_size: int = _flag(
        "evaluation batch size per process", bounds=BATCH, group=EVALUATION, default=512
    )
    learning_rate: float = _flag(
        "peak learning rate (the seed: Adam at a constant 1e-3)",
        bounds={"above": 0.0},
        group=OPTIMIZATION,
        default=1e-3,
    )
    # Recipe flags, with transformers TrainingArguments names and meanings (lab2.engine.optim documents the shapes)
    recipe: str = _flag(
        "a preset of the recipe flags (lab2.config.RECIPES); flags given explicitly win",
        tuple(RECIPES),
        group=OPTIMIZATION,
        default="none",
    )
    optim: str = _flag(
        "adam (the seed), adamw (decoupled weight decay), or sgd (Nesterov momentum)",
        OPTIMIZERS,
        group=OPTIMIZATION,
        default="adam",
    )
    momentum: float = _flag(
        "momentum of --optim sgd (Nesterov when above 0)", bounds=FRACTION, group=OPTIMIZATION, default=0.9
    )
    weight_decay: float = _flag(
        "weight decay (L2 for adam and sgd, decoupled for adamw)",
        bounds={"minimum": 0.0, "maximum": 1e6},
        group=OPTIMIZATION,
        default=0.0,
    )
    lr_scheduler_type: str = _flag(
        "learning-rate schedule over the run, stepped per optimizer step",
        LR_SCHEDULERS,
        group=OPTIMIZATION,
        default="constant",
    )
    warmup_ratio: float = _flag(
        "fraction of the steps warming up linearly (one_cycle: where the peak is; 0 means 0.3)",
        bounds=FRACTION,
        group=OPTIMIZATION,
        default=0.0,
    )
    label_smoothing_factor: float = _flag(
        "label smoothing of the training loss (torch's cross_entropy label_smoothing)",
        bounds=FRACTION,
        group=OPTIMIZATION,
        default=0.0,
    )
    tta: bool = _flag(
        "test-time augmentation: evaluate on each image and its mirror image, averaging the logits",
        group=EVALUATION,
        default=False,
    )
    eval_strategy: str = _flag(
        "evaluate every epoch, every --eval_steps optimizer steps, or no (only at the end)",
        EVAL_STRATEGIES,
        group=EVALUATION,
        default="epoch",
    )
    eval_steps: typing.Optional[int] = _flag(  # noqa: UP045 - f.type text is parsed, see _annotation_type
        "optimizer steps between evaluations with --eval_strategy steps (default: --logging_steps)",
        bounds=STEPS,
        group=EVALUATION,
        default=None,
    )
    dataloader_drop_last: bool = _flag(
        "drop each epoch's last partial training batch (static shapes for CUDA graphs)",
        group=OPTIMIZATION,
        default=False,
    )
    seed: int = _flag(
        "seed for weights, data order and augmentation",
        bounds={"minimum": 0, "maximum": 2**32 - 1},
        group=OPTIMIZATION,
        default=42,
    )
    channels_last: str = _flag(
        "memory format: auto (on for CPU and CUDA), on, off", CHANNELS_LAST, group=SPEED, default="auto"
    )
    torch_compile: bool = _flag(
        "wrap the model in torch.compile (helps on GPUs, hurts on CPUs)", group=SPEED, default=False
    )
    torch_compile_mode: str = _flag(
        "torch.compile mode; reduce-overhead adds CUDA graphs (pair it with --dataloader_drop_last)",
        COMPILE_MODES,
        group=SPEED,
        default="default",
    )
    # Output and tracking
    output_dir: str = _flag("everything a run writes goes here (default: runs/<run_name>)", group=OUTPUT, default="")
    run_name: str = _flag("name of the run (default: <model>-<date>-<time>)", group=OUTPUT, default="")
    project_name: str = _flag("tracker project (the W&B project)", group=OUTPUT, default="lab2")
    report_to: str = _flag(
        "wandb, tensorboard, mlflow, a comma list of them, all (every installed one) "
        "or none (W&B goes offline without credentials)",
        group=OUTPUT,
        default="wandb",
    )
    logging_steps: int = _flag(
        "check the loss for NaN/inf and log train/loss every N optimizer steps", bounds=STEPS, group=OUTPUT, default=50
    )
    flow_log_steps: str = _flag(
        "gradient/weight flow snapshots: auto (about 50 over the run, at least 10 steps apart), every N optimizer "
        "steps, or 0 (off)",
        group=OUTPUT,
        default="auto",
    )
    log_histograms: str = _flag(
        "gradient and value histograms at every flow snapshot: all (every parameter, as wandb.watch log='all'), "
        "weights (each layer's weight tensor only) or off; on means all",
        ("all", "weights", "off", "on"),
        group=OUTPUT,
        default="all",
    )
    wandb_init_timeout_s: float = _flag(
        "seconds W&B may take to start online; past them the run logs offline into the run folder",
        bounds={"above": 0.0, "maximum": 600.0},
        group=OUTPUT,
        default=10.0,
    )
    num_prediction_samples: int = _flag(
        "images in the predictions grid", bounds={"minimum": 0, "maximum": 256}, group=EVALUATION, default=24
    )
    # Checkpoints
    checkpointing_steps: str = _flag(
        "epoch, an integer number of optimizer steps, or none", group=CHECKPOINTS, default="epoch"
    )
    checkpoints_total_limit: int = _flag(
        "how many checkpoints to keep (at least 1)",
        bounds={"minimum": 1, "maximum": 10_000},
        group=CHECKPOINTS,
        default=2,
    )
    resume_from_checkpoint: str = _flag("a checkpoint folder, or latest", group=CHECKPOINTS, default="")
    overwrite_output_dir: bool = _flag(
        "allow reusing a folder that holds a finished run", group=CHECKPOINTS, default=False
    )
    dist_timeout_s: int = _flag(
        "seconds a process waits for the others before failing (distributed runs)",
        bounds={"minimum": 1, "maximum": 7 * 24 * 3600},
        group=DISTRIBUTED,
        default=600,
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


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _range_text(minimum, maximum, above=None) -> str:
    low = f"> {above:g}" if above is not None else f">= {minimum:,}" if minimum is not None else ""
    high = f"<= {maximum:,}" if maximum is not None else ""
    return " and ".join(part for part in (low, high) if part)


def check_int(flag: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` (an int, or its ASCII text) as an int inside [minimum, maximum]; UserError naming `flag` otherwise."""
    if isinstance(value, str):
        if not _INT.fullmatch(value):
            raise UserError(f"{flag} must be a whole number written in ASCII digits, got {value!r}.")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{flag} must be a whole number, got {value!r}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise UserError(f"{flag} must be {_range_text(minimum, maximum)}, got {value:,}.")
    return value


def check_float(
    flag: str, value, minimum: float | None = None, maximum: float | None = None, above: float | None = None
) -> float:
    """`value` (a number, or its ASCII text) as a finite float inside the range; UserError naming `flag` otherwise."""
    if isinstance(value, str):
        if not _FLOAT.fullmatch(value):
            raise UserError(f"{flag} must be a finite decimal number, got {value!r}.")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{flag} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value}.")
    if (
        (above is not None and value <= above)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        raise UserError(f"{flag} must be {_range_text(minimum, maximum, above)}, got {value:g}.")
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
