"""The settings that define the training: recorded in every checkpoint, compared with the flags on resume.

`accelerator.load_state` puts the checkpoint's optimizer and scheduler back, their
hyper-parameters included, so a flag given on resume takes effect only where lab2
applies it. Every difference is one of two things (README, "What a resume may change"):
- applied exactly: --learning_rate (the schedule is scaled to the new peak, lab2.engine.optim),
  --weight_decay and --momentum (written into every optimizer group), --label_smoothing_factor
  (the loss reads it every step); a schedule whose length changed (--num_train_epochs, the batch
  size or the training-set size) is re-laid over the new length, and a note says so;
- refused before training, in one line: --optim and --lr_scheduler_type (the optimizer and schedule
  state in the checkpoint belong to the old ones) and --warmup_ratio (the shape of the schedule).

The random states are checked here too: Accelerate skips a random_states_<rank>.pkl that does not
load without a word, and the resume is then not exact.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from lab2.errors import UserError

REFUSED = ("optim", "lr_scheduler_type", "warmup_ratio")
APPLIED = ("learning_rate", "weight_decay", "momentum", "label_smoothing_factor", "num_train_epochs")
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")  # what Accelerate sets first


def training_settings(cfg, schedule_steps: int) -> dict:
    """The record saved in progress.json as 'training': the flags above and the schedule's length in steps."""
    return {**{name: getattr(cfg, name) for name in REFUSED + APPLIED}, "schedule_steps": schedule_steps}


def refuse_changed_settings(saved: dict | None, cfg, path: Path, report) -> None:
    """UserError listing every refused flag that differs from the checkpoint's; a warning when it has no record."""
    if not saved:  # written by a lab2 before the record existed
        report(
            f"warning: checkpoint {path} has no record of its training settings (an older lab2 wrote it), so "
            f"--{', --'.join(REFUSED)} cannot be checked: give the values it was trained with."
        )
        return
    changed = [
        f"--{name} {saved[name]} -> {getattr(cfg, name)}"
        for name in REFUSED
        if saved.get(name, getattr(cfg, name)) != getattr(cfg, name)
    ]
    if changed:
        raise UserError(
            f"checkpoint {path} was trained with other settings ({', '.join(changed)}), and its optimizer and "
            "schedule state belong to those: resume with the checkpoint's values, or train afresh into a new "
            "--output_dir without --resume_from_checkpoint."
        )


def apply_optimizer_settings(optimizer, cfg) -> None:
    """Write --weight_decay and --momentum into every optimizer group, as a fresh optimizer would have them."""
    for group in optimizer.param_groups:
        group["weight_decay"] = cfg.weight_decay
        # one_cycle cycles SGD's momentum itself (0.85-0.95, as in a fresh run); otherwise the flag sets it.
        if "momentum" in group and cfg.lr_scheduler_type != "one_cycle":
            group["momentum"] = cfg.momentum
            group["nesterov"] = cfg.momentum > 0  # as lab2.engine.optim builds SGD


def schedule_length_matters(cfg) -> bool:
    """Only a constant rate without warm-up is the same at every step whatever the run's length."""
    return not (cfg.lr_scheduler_type == "constant" and cfg.warmup_ratio == 0)


def relay_schedule(scheduler, fresh_state: dict, saved: dict | None, cfg, schedule_steps: int, report) -> None:
    """Lay the loaded schedule over this run's `schedule_steps`, keeping its position (the step it is at).

    `fresh_state` is the state_dict of the scheduler built for this run, taken before load_state: the
    loaded one keeps the old length (OneCycleLR's total_steps and phases; a LambdaLR's formula is this
    run's already). The rates the optimizer holds are recomputed for the current step.
    """
    saved = saved or {}
    # An older checkpoint has no record; its OneCycleLR still knows its length (a LambdaLR needs none here).
    old_steps = saved.get("schedule_steps") or getattr(scheduler, "total_steps", None)
    if old_steps in (None, schedule_steps) or not schedule_length_matters(cfg):
        return
    if scheduler.last_epoch > schedule_steps:  # no step is left to train: nothing follows the schedule
        return
    for key in ("total_steps", "_schedule_phases"):  # OneCycleLR's length
        if key in fresh_state:
            setattr(scheduler, key, fresh_state[key])
    before = scheduler.optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():  # get_lr outside step() warns; recomputing the current rates is the point
        warnings.simplefilter("ignore")
        rates = scheduler.get_lr()  # OneCycleLR also sets the cycled momentum here
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = list(rates)
    was = f"{saved['num_train_epochs']} epochs, " if "num_train_epochs" in saved else ""
    report(
        f"note: the {cfg.lr_scheduler_type} schedule is re-laid over {cfg.num_train_epochs} epochs "
        f"({schedule_steps} steps, was {was}{old_steps} steps); it goes on "
        f"from step {scheduler.last_epoch}, whose rate is now {scheduler.optimizer.param_groups[0]['lr']:g} "
        f"(was {before:g})."
    )


def check_random_states(path: Path, num_processes: int, report) -> None:
    """UserError for a random_states_<rank>.pkl that does not load; a warning for a missing one."""
    from accelerate.utils import RNG_STATE_NAME, load

    missing = []
    for rank in range(num_processes):
        file = Path(path) / f"{RNG_STATE_NAME}_{rank}.pkl"
        if not file.is_file():
            missing.append(file.name)
            continue
        try:
            states = load(file)  # as Accelerate loads it (weights_only, its safe globals)
            problem = None if isinstance(states, dict) and all(k in states for k in RNG_KEYS) else "not a random state"
        except Exception as exc:  # noqa: BLE001 - any failure means Accelerate would skip it silently
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}" if str(exc) else type(exc).__name__
        if problem:
            raise UserError(
                f"checkpoint {path}: {file.name} does not load ({problem}), so the resume would not be exact; "
                "resume from another checkpoint, or 'latest'."
            )
    if missing:
        report(
            f"warning: checkpoint {path} has no {', '.join(missing)} (saved by fewer processes): those processes "
            "start from --seed, so this resume is not exact."
        )
