"""Optimizer and learning-rate schedule, with the transformers `TrainingArguments` names and meanings.

`create_optimizer` builds --optim (adam, adamw, sgd) and `create_scheduler` --lr_scheduler_type over the run's
scheduler steps, with --warmup_ratio of them warming up, written with torch's own schedulers so lab2 needs no
transformers (its `get_scheduler` conventions):
- warm-up is linear from 0 to --learning_rate over ceil(warmup_ratio * total) steps;
- `constant` holds --learning_rate after the warm-up (transformers' constant_with_warmup; with --warmup_ratio 0,
  the seed's constant rate); `linear` decays linearly to 0 at the last step, `cosine` follows half a cosine to 0;
- `one_cycle` is torch's OneCycleLR with --learning_rate as its peak (max_lr), cosine annealing, the peak at
  --warmup_ratio of the run (torch's default 0.3 when it is 0), from peak/25 to peak/1e4; it also cycles Adam's
  beta1 / SGD's momentum between 0.85 and 0.95, as torch's does by default.

The scheduler goes through `accelerator.prepare`, so `save_state` / `load_state` keep it and a resumed run
continues the same schedule bit for bit. Prepared, it steps the wrapped scheduler once per process per optimizer
step (Accelerate assumes the batch grew with the process count), so the schedule is laid out over
`steps * num_processes` scheduler steps (`scheduler_total_steps`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

# --optim's classes, for the names lab2.config.OPTIMIZERS gives (tests/test_optim.py keeps the two equal).
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def create_optimizer(
    params, name: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.9, fused: bool = False
) -> torch.optim.Optimizer:
    """--optim `name` over `params`.

    adam: weight decay added to the gradient (L2, as torch's Adam does); adamw: decoupled weight decay; sgd:
    momentum SGD, Nesterov when momentum > 0. `fused` picks the one-kernel Adam (CPU and CUDA; measured ~10% faster
    per CPU step here); SGD has no fused CPU kernel, so torch picks its multi-tensor (foreach) one.
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def scheduler_total_steps(steps_per_epoch: int, epochs: int, num_processes: int = 1) -> int:
    """Scheduler steps in a run: optimizer steps per process times the process count (see the module doc)."""
    return max(1, steps_per_epoch * epochs * num_processes)


def lr_factor(kind: str, step: int, total_steps: int, warmup: int) -> float:
    """The multiplier of the peak rate at scheduler step `step` for constant / linear / cosine (transformers'
    formulas)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))  # held at the end if stepped past it
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine


def _one_cycle(optimizer, kind: str, total_steps: int, warmup_ratio: float):
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr, total_steps=total_steps, pct_start=warmup_ratio or 0.3, anneal_strategy="cos")


def _lambda_schedule(optimizer, kind: str, total_steps: int, warmup_ratio: float):
    warmup = math.ceil(warmup_ratio * total_steps)  # as transformers rounds it
    return LambdaLR(optimizer, lambda step: lr_factor(kind, step, total_steps, warmup))


# --lr_scheduler_type's builders, for the names lab2.config.LR_SCHEDULERS gives (tests/test_optim.py).
LR_SCHEDULERS = dict.fromkeys(("constant", "linear", "cosine"), _lambda_schedule) | {"one_cycle": _one_cycle}


def create_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_ratio: float = 0.0
) -> LRScheduler:
    """--lr_scheduler_type `kind` over `total_steps` scheduler steps (see the module doc for each shape)."""
    return LR_SCHEDULERS[kind](optimizer, kind, total_steps, warmup_ratio)


def rescale_learning_rate(optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None, new_peak: float) -> float:
    """Scale the whole schedule so its peak becomes `new_peak` (a resumed run given another --learning_rate).

    The peak is OneCycleLR's max_lr, else the base rate the scheduler recorded. The position in the schedule is
    kept; every rate the optimizer groups and the scheduler hold (lr, initial_lr, max_lr, min_lr, base_lrs) is
    multiplied by new_peak / old peak. Returns the old peak.
    """
    first = optimizer.param_groups[0]
    old = first.get("max_lr", first.get("initial_lr", first["lr"]))
    factor = new_peak / old
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= factor
    if scheduler is not None:
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return old


def training_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The training objective: mean cross-entropy of float32 `logits` (B, C) against `labels` (B,), with
    --label_smoothing_factor as torch defines it: targets (1 - e) on the true class plus e / C on every class."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
