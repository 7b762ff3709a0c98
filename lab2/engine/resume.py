"""Checkpoints of a run: the record each carries (progress.json), saving one, and loading one into a new run.

progress.json holds the loop's Progress, the settings that give a mid-epoch position its meaning ('position') and
the flags that define the training ('training'). Each flag that differs from the record is applied or refused in
one line, never silently ignored, since `accelerator.load_state` restores the old hyper-parameters; which is
which, and why a schedule's new length is refused, is docs/resume.md ("What a resume may change").
"""

from __future__ import annotations

import pickle
from dataclasses import asdict
from pathlib import Path

from lab2.engine.optim import rescale_learning_rate
from lab2.errors import UserError
from lab2.explain.flow import read_flow_history
from lab2.state import checkpoint
from lab2.state.checkpoint import read_progress, resolve_resume_path
from lab2.state.files import keep_jsonl

REFUSED = ("optim", "lr_scheduler_type", "warmup_ratio")
APPLIED = ("learning_rate", "weight_decay", "momentum", "label_smoothing_factor", "num_train_epochs")
# Settings that decide what a mid-epoch position (batch_in_epoch) means: a resume mid-epoch needs them unchanged.
POSITION = ("per_device_train_batch_size", "seed", "data_pipeline", "num_train_samples", "world_size")
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")  # what Accelerate's random state holds


def position_settings(cfg, num_train_samples: int, world_size: int) -> dict:
    """The POSITION settings of this run, as progress.json records them."""
    known = {"num_train_samples": num_train_samples, "world_size": world_size}
    return {name: known[name] if name in known else getattr(cfg, name) for name in POSITION}


def checkpoint_record(cfg, progress, position: dict, schedule_steps: int, **sums) -> dict:
    """progress.json: the Progress fields (`sums` overriding them: the running sums, the wall time), 'position' and
    'training'."""
    training = {**{name: getattr(cfg, name) for name in REFUSED + APPLIED}, "schedule_steps": schedule_steps}
    return {**asdict(progress), **sums, "position": position, "training": training}


def save_checkpoint(run, sums: tuple[float, float, float] | None = None) -> Path:
    """Save `run`'s checkpoint at the current step, on every process (RNG state is per process). Mid-epoch, `sums`
    (loss sum, correct, seen over all processes) replace the Progress's running sums in progress.json."""
    overrides = dict(zip(checkpoint.SUMS, sums, strict=True)) if sums else {}
    overrides["wall_time_s"] = run.progress.wall_time()
    record = checkpoint_record(run.cfg, run.progress, run.position, run.schedule_steps, **overrides)
    return checkpoint.save_checkpoint(run.accelerator, run.paths.checkpoints, record, run.cfg.checkpoints_total_limit)


def check_compatible(saved: dict, path: Path, model: str, num_classes: int, position: dict) -> None:
    """Refuse a checkpoint of another model or class count, or a mid-epoch one whose position means something else
    in this run (another process count, batch size, seed, pipeline or training-set size)."""
    if saved.get("model") != model or saved.get("num_classes") != num_classes:
        raise UserError(
            f"checkpoint {path} is from model {saved.get('model')!r} with {saved.get('num_classes')} classes, "
            f"but this run is {model!r} with {num_classes}; pass the matching --model or another checkpoint."
        )
    if not saved.get("batch_in_epoch"):
        return
    if saved.get("world_size") != position["world_size"]:
        raise UserError(
            f"checkpoint {path} was saved mid-epoch by {saved.get('world_size')} processes; resume it with the "
            f"same number of processes (this run has {position['world_size']}), or from an end-of-epoch checkpoint."
        )
    old = saved.get("position") or {}
    changed = [f"--{k} {old[k]} -> {position[k]}" for k in POSITION if k in old and old[k] != position[k]]
    if changed:
        raise UserError(
            f"checkpoint {path} was saved mid-epoch (batch {saved['batch_in_epoch']} of epoch {saved['epoch'] + 1}) "
            f"and {', '.join(changed)} changes what that position means; resume with the checkpoint's settings, "
            "or from an end-of-epoch checkpoint."
        )


def refuse_changed_settings(saved: dict | None, cfg, schedule_steps: int, path, report) -> None:
    """UserError listing every refused flag that differs from the checkpoint's; a warning when it has no record."""
    if not saved:  # written by a lab2 before the record existed
        report(
            f"warning: checkpoint {path} has no record of its training settings (an older lab2 wrote it), so "
            f"--{', --'.join(REFUSED)} and the schedule's length cannot be checked: give the values it was trained "
            "with."
        )
        return
    changed = [
        f"--{n} {saved[n]} -> {getattr(cfg, n)}" for n in REFUSED if saved.get(n, getattr(cfg, n)) != getattr(cfg, n)
    ]
    old_steps = saved.get("schedule_steps")
    # Only a constant rate without warm-up is the same at every step whatever the run's length.
    length_matters = not (cfg.lr_scheduler_type == "constant" and cfg.warmup_ratio == 0)
    if not changed and old_steps not in (None, schedule_steps) and length_matters:
        changed.append(
            f"the {cfg.lr_scheduler_type} schedule's length {old_steps} -> {schedule_steps} steps (--num_train_epochs "
            f"{saved.get('num_train_epochs', '?')} -> {cfg.num_train_epochs}, or another batch size or training-set "
            "size)"
        )
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


def check_random_states(path: Path, num_processes: int, report) -> None:
    """UserError for a random_states_<rank>.pkl that does not load (Accelerate would skip it without a word and
    the resume would not be exact); a warning for a missing one (saved by fewer processes)."""
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


def resume(run) -> None:
    """Load the checkpoint --resume_from_checkpoint names into `run` (lab2.engine.setup.Run), its Progress in place;
    records logged after the checkpoint are dropped (the resumed run logs them again)."""
    cfg, accelerator, paths, progress = run.cfg, run.accelerator, run.paths, run.progress
    path = resolve_resume_path(cfg.resume_from_checkpoint, cfg.output_dir, report=accelerator.print)
    saved = read_progress(path)
    check_compatible(saved, path, cfg.model, run.splits.num_classes, run.position)
    refuse_changed_settings(saved.get("training"), cfg, run.schedule_steps, path, accelerator.print)
    check_random_states(path, accelerator.num_processes, accelerator.print)
    try:
        accelerator.load_state(str(path))
    except pickle.UnpicklingError as exc:  # weights_only refused it: a pickled object, not saved tensors
        raise UserError(
            f"checkpoint {path} holds a file that is not a saved state ({str(exc).splitlines()[0][:120]}); "
            "it was not written by lab2: pick another checkpoint, or 'latest'."
        ) from None
    except (RuntimeError, ValueError, KeyError, OSError, EOFError) as exc:
        raise UserError(
            f"checkpoint {path} does not load into this run ({str(exc).splitlines()[0][:160]}); "
            "it was saved by another model or lab2 version: pass the matching --model, or pick another checkpoint."
        ) from None
    optimizer = run.scheduler.scheduler.optimizer
    apply_optimizer_settings(optimizer, cfg)
    # The command line wins over the checkpoint's learning rate: the schedule is scaled to the new peak, in place.
    old_peak = rescale_learning_rate(optimizer, run.scheduler.scheduler, cfg.learning_rate)
    if old_peak != cfg.learning_rate:
        accelerator.print(f"note: --learning_rate {cfg.learning_rate:g} replaces the checkpoint's {old_peak:g}")
    vars(progress).update({k: saved[k] for k in asdict(progress) if k in saved})
    progress.world_size = accelerator.num_processes
    if not accelerator.is_main_process:  # rank 0 carries the saved running sums; the epoch-end reduce adds them once
        progress.loss_sum = progress.correct = progress.seen = 0.0
    else:
        keep_jsonl(paths.metrics, lambda r: r["epoch"] <= progress.epoch)
        keep_jsonl(paths.flow, lambda r: r["step"] <= progress.global_step)
        if run.flow is not None:
            run.flow.history = read_flow_history(paths.flow)
    accelerator.print(
        f"resumed from {path}: epoch {progress.epoch + 1}, batch {progress.batch_in_epoch}, step {progress.global_step}"
    )
