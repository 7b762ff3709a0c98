"""The training loop, top to bottom: `run(cfg)` builds the run, maybe resumes it, then `fit` trains every epoch.

One step (`train_one_epoch`): forward, loss, backward, the flow snapshot around `optimizer.step()`, the scheduler
step, zero_grad, the on-device meter, then the periodic actions as plain `if step % N == 0:` lines. Both data
pipelines reach the loop as DataLoaders that went through `accelerator.prepare`, so Accelerate shards, evens out
and skips batches for every path. The hot loop has no host-device sync except every --logging_steps steps (the
divergence check, the train/loss point), at checkpoints and at flow snapshots; the stop flag is an asynchronous
exchange read one step later (lab2.engine.distributed.StopRequest).

The run's set-up (and its Run record) is lab2.engine.setup, checkpoints and resuming lab2.engine.resume, the
per-epoch record and the final files lab2.engine.results. No part holds a reference back to the loop: what a
function needs, it is passed.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lab2.config import TrainConfig
from lab2.engine import results, setup
from lab2.engine.distributed import StopRequest
from lab2.engine.evaluation import EvalResult, evaluate, sync_buffers
from lab2.engine.optim import training_loss
from lab2.engine.resume import resume, save_checkpoint
from lab2.errors import DiskFull, Diverged, TrainingStopped, UserError, is_disk_full
from lab2.state.checkpoint import disk_full_error
from lab2.state.run_folder import RunPaths


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint as progress.json (lab2.engine.resume.checkpoint_record)."""

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
    wall_time_s: float = 0.0  # the run's wall-clock seconds before this process: up to the checkpoint it resumed

    def __post_init__(self):
        self.started = time.monotonic()  # not a field, so not in progress.json: that saves wall_time() instead

    def wall_time(self) -> float:
        """The run's wall-clock seconds so far: this process's (start-up, training, evaluation, saving), plus the
        earlier processes' up to the checkpoint this one resumed from (their time after it was trained again)."""
        return self.wall_time_s + time.monotonic() - self.started


def run(cfg: TrainConfig) -> None:
    """Train as `cfg` says. Raises TrainingStopped (a signal; checkpoint saved), Diverged (NaN/inf loss) or a
    UserError; the command line (lab2.api) maps them to exit codes, lab2.train to its exceptions.

    A full disk anywhere in the run becomes one DiskFull error (exit code 6) naming the last good checkpoint; a
    signal during the final files is reported once they are written.
    """
    paths = RunPaths(cfg.output_dir)
    setup.check_output_dir(cfg, paths)
    # A start that fails before training removes the empty folders it made (the run folder, runs/ above it).
    created = [p for p in (paths.root, *paths.root.parents) if not p.exists()]
    accelerator = setup.create_accelerator(cfg, paths)
    progress = Progress(model=cfg.model, world_size=accelerator.num_processes)
    stop = StopRequest(accelerator, progress)
    state = lock = None
    with stop.installed():  # also around closing the trackers: a signal there is still heard
        try:
            lock = setup.prepare_output_dir(accelerator, cfg, paths)  # held until the last file is written
            state = setup.build_run(cfg, accelerator, paths, progress)
            if cfg.resume_from_checkpoint:
                resume(state)
            setup.start_records(state)
            fit(state, stop)
            if stop.signal_name:  # it came after the last step's exchange: the run finished first
                accelerator.print(
                    f"{stop.signal_name} received while finishing; the run is complete "
                    "(final checkpoint, weights, figures and report written)."
                )
        except DiskFull as full:
            if getattr(full, "path", None) is None:  # a checkpoint's: it already names the last good checkpoint
                raise
            raise disk_full_error(full.__cause__, full.path, paths.checkpoints) from None
        except UserError:
            if state is None and created and accelerator.is_main_process:
                setup.discard_unused_run_folder(paths.root, created)
            raise
        except (TrainingStopped, Diverged):
            raise
        except Exception as exc:
            if is_disk_full(exc, paths.root):
                raise disk_full_error(exc, getattr(exc, "filename", None) or paths.root, paths.checkpoints) from None
            raise
        finally:
            try:
                if state is not None:
                    if state.flow is not None:  # stopped early: still log the images already rendering
                        state.flow.close(progress.global_step)
                    state.tracking.finish()
                else:
                    accelerator.end_training()  # still tear down the process group
            finally:
                if lock is not None:  # a notebook's next run in this folder must not find it still held
                    lock.release()


# --------------------------------------------------------------------------- one epoch

EARLY_LOSS_STEPS = 5  # the bar's loss before the first --logging_steps interval: every 5 steps


class TrainMeter:
    """This process's sums over the epoch in progress (from the saved Progress when resuming mid-epoch), the progress
    bar and the train/loss intervals. `update` only adds tensors on the device; the methods that say "one sync" read
    a value back to the host, and the loop calls those every --logging_steps steps, at checkpoints and at the end."""

    def __init__(self, accelerator, progress: Progress, total_batches: int, description: str, tracking):
        device = accelerator.device
        self.accelerator, self.progress, self.tracking = accelerator, progress, tracking
        # This process's sums (rank 0 also carries a resumed checkpoint's totals; see lab2.engine.resume).
        self.loss_sum = torch.tensor(progress.loss_sum, device=device)  # sum of loss x batch size
        self.correct = torch.tensor(progress.correct, device=device)
        self.seen = progress.seen  # a host number: the batch size is known without a sync
        self.first_bad_step = torch.tensor(-1, device=device)  # the first step with a NaN/inf loss, or -1
        self.interval_loss = torch.zeros((), device=device)  # sum of step losses since interval_start
        self.interval_start = progress.global_step
        self.logged_interval = False  # until the epoch's first --logging_steps interval, update() shows the loss
        self.bar = tqdm(
            total=total_batches, initial=progress.batch_in_epoch, desc=description,
            disable=not accelerator.is_main_process, mininterval=1.0, leave=False,
        )  # fmt: skip

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one step (the progress already counts it); tensor ops only, no host sync."""
        loss = loss.detach()
        step = self.progress.global_step
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~torch.isfinite(loss), step, self.first_bad_step)
        self.loss_sum += loss * len(labels)
        self.interval_loss += loss
        self.correct += (logits.argmax(dim=1) == labels).sum()
        self.seen += len(labels)
        self.bar.update(1)
        if not self.logged_interval and not self.bar.disable and self.progress.batch_in_epoch % EARLY_LOSS_STEPS == 0:
            # Before the first interval (--logging_steps may exceed a small epoch) the bar would show no loss:
            # show the epoch's running mean every few steps (one sync each, main process, that stretch only).
            self.bar.set_postfix(loss=f"{float(self.loss_sum) / max(self.seen, 1):.4f}")

    def raise_if_diverged(self) -> None:
        """Raise Diverged if any process saw a non-finite loss (one sync; a gather with >1 process)."""
        first_bad = self.first_bad_step
        if self.accelerator.num_processes > 1:
            first_bad = self.accelerator.gather(first_bad[None]).max()
        if int(first_bad) >= 0:
            raise Diverged(int(first_bad))

    def log_interval(self) -> None:
        """Log the mean loss since the last interval as train/loss, and show it on the bar (one sync)."""
        steps = self.progress.global_step - self.interval_start
        if steps == 0:
            return
        mean_loss = float(self.interval_loss) / steps
        self.tracking.log({"train/loss": mean_loss}, step=self.progress.global_step)
        self.bar.set_postfix(loss=f"{mean_loss:.4f}")
        self.interval_loss.zero_()
        self.interval_start, self.logged_interval = self.progress.global_step, True

    def totals(self) -> tuple[float, float, float]:
        """(loss_sum, correct, seen) added over all processes (one sync: a reduce)."""
        return sum_over_processes(self.accelerator, self.loss_sum, self.correct, self.seen)


def sum_over_processes(accelerator, *values) -> tuple[float, ...]:
    """`values` (tensors or numbers) each added over all processes (one sync: a reduce)."""
    local = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=accelerator.device) for v in values])
    return tuple(float(t) for t in accelerator.reduce(local, "sum"))


@contextmanager
def flow_snapshot(accelerator, flow, step: int, take: bool):
    """Around optimizer.step(): at a snapshot step, read the (unscaled) gradients before and the update after.

    Every rank unscales at a snapshot step, since fp16's unscale is a collective decision; only the main process
    has a reporter (lab2.explain.flow.FlowReporter). `poll` logs finished images at every step and never waits.
    """
    if take:
        accelerator.unscale_gradients()
        if flow is not None:
            flow.before_step()
    yield
    if flow is not None:
        if take:  # file, scalars, histograms, warnings; its images render on the worker thread
            flow.after_step(step)
        flow.poll(step)


def train_one_epoch(run: setup.Run, epoch: int, stop: StopRequest) -> None:
    """Train one epoch from progress.batch_in_epoch. Raises TrainingStopped or Diverged (lab2.errors)."""
    cfg, accelerator, progress = run.cfg, run.accelerator, run.progress
    model, optimizer, scheduler, loader = run.model, run.optimizer, run.scheduler, run.train_loader
    # Shuffled (sampler) and augmented (the device Dataset, which Accelerate skips when the sampler has set_epoch)
    # as seed + epoch; a resumed run skips the batches it already trained.
    loader.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    batches = accelerator.skip_first_batches(loader, progress.batch_in_epoch) if progress.batch_in_epoch else loader
    steps_in_epoch, last_epoch = len(loader), epoch == cfg.num_train_epochs - 1
    meter = TrainMeter(accelerator, progress, steps_in_epoch, f"epoch {epoch + 1}/{cfg.num_train_epochs}", run.tracking)
    model.train()
    try:
        for images, labels in batches:
            logits = model(images)
            loss = training_loss(logits, labels, cfg.label_smoothing_factor)
            accelerator.backward(loss)
            step = progress.global_step + 1
            # A flow snapshot every --flow_log_steps steps and at the very last step of training.
            last_step = last_epoch and progress.batch_in_epoch + 1 == steps_in_epoch
            snapshot = bool(run.flow_every) and (step % run.flow_every == 0 or last_step)
            with flow_snapshot(accelerator, run.flow, step, snapshot):
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.global_step, progress.batch_in_epoch = step, progress.batch_in_epoch + 1
            meter.update(loss, logits, labels)  # adds on the device: no host sync

            # The periodic actions, in this order: trackers see steps in the order they are logged, and W&B drops
            # a step lower than one it has already seen.
            if step % cfg.logging_steps == 0:
                meter.raise_if_diverged()
                meter.log_interval()
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                meter.raise_if_diverged()  # never checkpoint NaN weights
                save_checkpoint(run, meter.totals())
            if cfg.eval_every_steps and step % cfg.eval_every_steps == 0:
                evaluate_at_step(run, step)
            # Every step, every process: did any process get a signal? Not Accelerate's check_trigger(): its
            # all-reduce blocks every step on the slowest rank and syncs the device. This one starts an async
            # all-reduce and reads the one from a step ago, long arrived: all processes stop at the same step, at
            # most two steps after the signal (tests/test_stop_latency.py).
            if stop.requested_after_step():
                stop_here(run, meter, stop)
        if stop.settle():  # the last step's exchange, settled here: no stop waits for an evaluation
            stop_here(run, meter, stop)
        meter.raise_if_diverged()  # one sync per epoch at least
        meter.log_interval()  # the epoch's last, partial interval
    finally:
        meter.bar.close()  # before any message, so it does not share a line with the bar
    progress.loss_sum, progress.correct, progress.seen = float(meter.loss_sum), float(meter.correct), meter.seen


def stop_here(run: setup.Run, meter: TrainMeter, stop: StopRequest) -> None:
    """Checkpoint mid-epoch (the meter's sums over all processes go into progress.json), then stop."""
    meter.raise_if_diverged()
    save_checkpoint(run, meter.totals())
    raise TrainingStopped(stop.signal_name)


# --------------------------------------------------------------------------- evaluation and epochs


def evaluate_model(run: setup.Run, num_samples: int) -> EvalResult:
    """Evaluate on the test split with rank 0's BatchNorm statistics (the ones the saved weights carry)."""
    sync_buffers(run.accelerator, run.model)
    plain = run.accelerator.unwrap_model(run.model)
    return evaluate(
        plain, run.eval_loader, run.accelerator, run.splits.num_classes, num_samples=num_samples, tta=run.cfg.tta
    )


def evaluate_at_step(run: setup.Run, step: int) -> None:
    """--eval_strategy steps: evaluate mid-epoch, log eval/loss and eval/accuracy at this step (one sync)."""
    run.latest_eval = result = evaluate_model(run, num_samples=0)
    if run.accelerator.is_main_process:
        run.tracking.log({"eval/loss": result.loss, "eval/accuracy": result.accuracy}, step=step)
        run.accelerator.print(
            f"step {step}: eval loss {result.loss:.4f} acc {100 * result.accuracy:.2f}%"
            + results.synthetic_note(run.cfg)
        )


def fit(run: setup.Run, stop: StopRequest) -> None:
    """Every epoch left: train, evaluate, record, checkpoint; then the final files.

    A stop or a NaN loss is reported here (where the checkpoint is, how to resume) and re-raised.
    """
    cfg, accelerator, progress = run.cfg, run.accelerator, run.progress
    result = None
    for epoch in range(progress.epoch, cfg.num_train_epochs):
        started = time.perf_counter()
        seen_before = progress.seen  # a mid-epoch resume's images, trained before `started`
        try:
            train_one_epoch(run, epoch, stop)
        except Diverged as diverged:
            results.report_diverged(accelerator, run.paths, diverged.step, epoch, cfg.learning_rate)
            raise
        except TrainingStopped:
            results.report_interrupted(accelerator, run.paths, stop, progress.global_step, epoch)
            raise
        epoch_time = time.perf_counter() - started
        last = epoch == cfg.num_train_epochs - 1
        if cfg.eval_strategy == "epoch" or last:  # the final files always need the last epoch's evaluation
            result = evaluate_model(run, num_samples=cfg.num_prediction_samples if last else 0)
        else:  # the record carries the latest step evaluation (steps), or none (no)
            result = run.latest_eval
        *totals, trained_now = sum_over_processes(
            accelerator, progress.loss_sum, progress.correct, progress.seen, progress.seen - seen_before
        )
        results.end_epoch(run, epoch, tuple(totals), trained_now, epoch_time, result)
        progress.epoch, progress.batch_in_epoch = epoch + 1, 0
        progress.loss_sum = progress.correct = progress.seen = 0.0
        if cfg.checkpointing_steps == "epoch" or (last and cfg.checkpointing_steps != "none"):
            save_checkpoint(run)
    if result is None:  # resumed from a finished run's last checkpoint: evaluate once for the final files
        result = evaluate_model(run, num_samples=cfg.num_prediction_samples)
    results.finish(run, result)
