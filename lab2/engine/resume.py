"""Where training stands (`Progress`, saved in every checkpoint as progress.json) and resuming from a checkpoint.

`resume_run` picks the checkpoint (the newest that verifies, for `latest`),
checks it fits this run, loads the Accelerate state (model, optimizer,
scheduler, RNG states) and returns the saved Progress; records logged after
the checkpoint are dropped, since the resumed run produces them again.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass

from lab2.engine.optim import rescale_learning_rate
from lab2.engine.resume_settings import (
    apply_optimizer_settings,
    check_random_states,
    refuse_changed_settings,
    relay_schedule,
)
from lab2.errors import UserError
from lab2.explain.flow import read_flow_history
from lab2.state.checkpoint import check_compatible, read_progress, resolve_resume_path
from lab2.state.files import keep_jsonl


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint as progress.json."""

    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already trained
    global_step: int = 0  # optimizer steps so far
    # The epoch in progress's running sums: this process's own while training (TrainMeter); summed over all
    # processes in a saved progress.json, where rank 0 alone takes them back on resume.
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    model: str = ""
    num_classes: int = 0
    world_size: int = 1


def resume_run(
    cfg, accelerator, paths, scheduler, position: dict, num_classes: int, flow, schedule_steps: int
) -> Progress:
    """Load the checkpoint `cfg.resume_from_checkpoint` names into the prepared objects; return its Progress.

    `scheduler` is the prepared one, laid over `schedule_steps`; the flags that define the training are
    compared with the checkpoint's record and applied or refused (lab2.engine.resume_settings). `flow`, the
    main process's FlowReporter or None, gets its history back for the heatmaps over the whole run.
    """
    # The newest checkpoint that verifies against its manifest; damaged ones are named in one line.
    path = resolve_resume_path(cfg.resume_from_checkpoint, cfg.output_dir, report=accelerator.print)
    saved = read_progress(path)
    check_compatible(saved, path, cfg.model, num_classes, accelerator.num_processes, position)
    refuse_changed_settings(saved.get("training"), cfg, path, accelerator.print)  # before anything loads
    check_random_states(path, accelerator.num_processes, accelerator.print)
    fresh_schedule = scheduler.scheduler.state_dict()  # this run's length, which load_state replaces
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
    optimizer = scheduler.scheduler.optimizer
    apply_optimizer_settings(optimizer, cfg)
    relay_schedule(scheduler.scheduler, fresh_schedule, saved.get("training"), cfg, schedule_steps, accelerator.print)
    # The command line wins over the checkpoint's learning rate: the schedule is scaled to the new peak, in place.
    old_peak = rescale_learning_rate(optimizer, scheduler.scheduler, cfg.learning_rate)
    if old_peak != cfg.learning_rate:
        accelerator.print(f"note: --learning_rate {cfg.learning_rate:g} replaces the checkpoint's {old_peak:g}")
    progress = Progress(**{k: saved[k] for k in asdict(Progress()) if k in saved})
    progress.world_size = accelerator.num_processes
    if not accelerator.is_main_process:  # rank 0 carries the saved running sums; the epoch-end reduce adds them once
        progress.loss_sum = progress.correct = progress.seen = 0.0
    else:  # drop records logged after the checkpoint: they will be produced again
        keep_jsonl(paths.metrics, lambda r: r["epoch"] <= progress.epoch)
        keep_jsonl(paths.flow, lambda r: r["step"] <= progress.global_step)
        if flow is not None:
            flow.history = read_flow_history(paths.flow)
    accelerator.print(
        f"resumed from {path}: epoch {progress.epoch + 1}, batch {progress.batch_in_epoch}, step {progress.global_step}"
    )
    return progress
