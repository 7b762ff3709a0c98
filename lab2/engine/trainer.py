"""The training loop: build, prepare, maybe resume, then per epoch `train_one_epoch` and `evaluate`.

`run(cfg)` reads like the algorithm. The run's set-up (Accelerator, threads,
output folder, signals) is lab2.engine.run_setup; its results (per-epoch record,
final figures, summary, Table-1 log, report) are lab2.engine.results. Both data
pipelines reach the loop as DataLoaders that went through `accelerator.prepare`,
so Accelerate shards, evens out and skips batches for every path. The hot loop
has no host-device sync except every --logging_steps steps (the divergence
check, the train/loss point) and at flow snapshots; the stop flag is an
asynchronous exchange read one step later (lab2.engine.stop_exchange).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from lab2.config.train_config import TrainConfig
from lab2.data.cifar import CIFAR10_MEAN, CIFAR10_STD, load_splits
from lab2.data.device_dataset import pipeline_loaders, use_channels_last
from lab2.engine.evaluation import EvalResult, evaluate, sync_buffers
from lab2.engine.meter import TrainMeter, sum_over_processes
from lab2.engine.optim import (
    create_optimizer,
    create_scheduler,
    scheduler_total_steps,
    training_loss,
)
from lab2.engine.periodic import PeriodicActions, flow_snapshot
from lab2.engine.results import RunResults, report_diverged, report_interrupted, synthetic_note
from lab2.engine.resume import Progress, resume_run
from lab2.engine.resume_settings import training_settings
from lab2.engine.run_setup import (
    StopRequest,
    start_records,
)
from lab2.engine.stop_exchange import StopExchange
from lab2.errors import Diverged, TrainingStopped, UserError
from lab2.explain.flops import count_flops
from lab2.explain.flow_reporter import FlowReporter
from lab2.models import create_model
from lab2.state.checkpoint import position_settings, save_checkpoint
from lab2.state.run_paths import RunPaths
from lab2.tracking.trackers import Tracking


class Trainer:
    """Holds what one run needs; `fit()` trains, evaluates and writes the run's files."""

    def __init__(self, cfg: TrainConfig, accelerator, paths: RunPaths, stop: StopRequest):
        from accelerate.utils import set_seed

        self.cfg, self.accelerator, self.paths, self.stop = cfg, accelerator, paths, stop
        self.main = accelerator.is_main_process
        set_seed(cfg.seed)
        with accelerator.main_process_first():  # downloads and fake-data generation happen once
            self.splits = load_splits(cfg)
        if len(self.splits.train_labels) < accelerator.num_processes or len(self.splits.test_labels) == 0:
            raise UserError(
                "the data set is too small for this run: it needs at least one image per process in each split."
            )
        model = create_model(cfg.model, self.splits.num_classes)
        channels_last = use_channels_last(cfg.channels_last, accelerator.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.flops = count_flops(model) if self.main else None  # rank 0 only, before wrapping
        # The fused kernel (one op for all tensors) is the same Adam, measured ~10% faster per CPU step here.
        fused = accelerator.device.type in ("cpu", "cuda") and cfg.optim != "sgd"
        optimizer = create_optimizer(
            model.parameters(), cfg.optim, cfg.learning_rate, cfg.weight_decay, cfg.momentum, fused=fused
        )
        loaders = pipeline_loaders(cfg, self.splits, accelerator.device, channels_last)
        # One prepare for every path: Accelerate shards, evens out, reshuffles per epoch and places the batches.
        self.model, self.optimizer, self.train_loader, self.eval_loader = accelerator.prepare(
            model, optimizer, *loaders
        )
        if len(self.train_loader) == 0:
            raise UserError(
                f"--dataloader_drop_last leaves no training batch: {len(self.splits.train_labels)} images per epoch "
                f"are fewer than one batch of {cfg.per_device_train_batch_size} per process; "
                "lower --per_device_train_batch_size or drop the flag."
            )
        # The schedule spans the run's optimizer steps, known once the loader is sharded. Prepared, it steps once per
        # optimizer step (skipped with the step under fp16 overflow) and save_state/load_state carry it.
        self.schedule_steps = scheduler_total_steps(
            len(self.train_loader), cfg.num_train_epochs, accelerator.num_processes
        )
        scheduler = create_scheduler(
            self.optimizer.optimizer, cfg.lr_scheduler_type, self.schedule_steps, cfg.warmup_ratio
        )
        self.scheduler = accelerator.prepare(scheduler)
        self.latest_eval: EvalResult | None = None  # the last evaluation of --eval_strategy steps
        self.progress = Progress(
            model=cfg.model, num_classes=self.splits.num_classes, world_size=accelerator.num_processes
        )
        self.tracking = Tracking(accelerator, printer=accelerator.print)
        self.flow = None  # flow statistics, histograms and images: main process only
        self.flow_every = cfg.flow_every_steps(len(self.train_loader) * cfg.num_train_epochs)
        if self.main and self.flow_every:
            self.flow = FlowReporter(
                accelerator.unwrap_model(self.model),
                self.tracking,
                paths.flow,
                histograms=cfg.log_histograms,
                printer=accelerator.print,
            )
        precision = {"no": "fp32"}.get(str(accelerator.mixed_precision), str(accelerator.mixed_precision))
        self.results = RunResults(cfg, accelerator, paths, self.splits, self.flops, self.tracking, precision)
        self.periodic = PeriodicActions(self)  # log, checkpoint, evaluate, stop check: each every N steps
        self.stop_exchange = StopExchange(accelerator, stop)  # the stop flag, agreed on by every process
        stop.current_step = lambda: self.progress.global_step  # the signal handler notes when it came

    # ----------------------------------------------------------------- start

    def position(self) -> dict:
        """The settings that give progress.batch_in_epoch its meaning (checked when resuming mid-epoch)."""
        return position_settings(self.cfg, len(self.splits.train_labels), self.accelerator.num_processes)

    def progress_record(self, **sums) -> dict:
        """progress.json's content: the Progress fields, `sums` overriding the running sums, the position settings
        and the settings that define the training (compared on resume)."""
        training = training_settings(self.cfg, self.schedule_steps)
        return {**asdict(self.progress), **sums, "position": self.position(), "training": training}

    def resume(self) -> None:
        self.progress = resume_run(
            self.cfg,
            self.accelerator,
            self.paths,
            self.scheduler,
            self.position(),
            self.splits.num_classes,
            self.flow,
            self.schedule_steps,
        )

    def start(self) -> None:
        start_records(
            self.cfg, self.accelerator, self.paths, self.flops, self.tracking, fresh=self.progress.global_step == 0
        )

    # ----------------------------------------------------------------- training

    def epoch_batches(self, epoch: int):
        """The epoch's batches: shuffled (sampler) and augmented (device Dataset) as seed + epoch, minus those a
        resumed run already trained (Accelerate's skip_first_batches)."""
        loader = self.train_loader
        loader.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):  # the DeviceDataset (Accelerate skips it when the sampler has one)
            loader.dataset.set_epoch(epoch)
        skip = self.progress.batch_in_epoch
        return self.accelerator.skip_first_batches(loader, skip) if skip else loader

    def takes_flow_snapshot(self, step: int, epoch: int) -> bool:
        """Every --flow_log_steps optimizer steps, and at the very last step of training."""
        every = self.flow_every
        last_epoch = epoch == self.cfg.num_train_epochs - 1
        last_step = last_epoch and self.progress.batch_in_epoch + 1 == len(self.train_loader)
        return bool(every) and (step % every == 0 or last_step)

    def train_one_epoch(self, epoch: int) -> None:
        """Train one epoch from progress.batch_in_epoch. Raises TrainingStopped or Diverged (lab2.errors)."""
        cfg, progress = self.cfg, self.progress
        batches = self.epoch_batches(epoch)
        description = f"epoch {epoch + 1}/{cfg.num_train_epochs}"
        meter = TrainMeter(self.accelerator, progress, len(self.train_loader), description, self.tracking)
        self.periodic.meter = meter
        self.model.train()
        try:
            for images, labels in batches:
                logits = self.model(images)
                loss = training_loss(logits, labels, cfg.label_smoothing_factor)
                self.accelerator.backward(loss)
                step = progress.global_step + 1
                with flow_snapshot(self.accelerator, self.flow, step, self.takes_flow_snapshot(step, epoch)):
                    self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                progress.global_step, progress.batch_in_epoch = step, progress.batch_in_epoch + 1
                meter.update(loss, logits, labels)  # adds on the device: no host sync
                self.periodic.after_step(step)  # log, checkpoint, evaluate, stop: each every N steps
            self.periodic.stop_at_epoch_end()  # a signal during the last step stops before the evaluation
            meter.raise_if_diverged()  # one sync per epoch at least
            meter.log_interval()  # the epoch's last, partial interval
        finally:
            meter.close()
        progress.loss_sum, progress.correct, progress.seen = float(meter.loss_sum), float(meter.correct), meter.seen

    def save_mid_epoch(self, meter: TrainMeter) -> Path:
        """Checkpoint mid-epoch: the meter's running sums, added over processes, go into progress.json."""
        loss_sum, correct, seen = meter.totals()
        progress = self.progress_record(loss_sum=loss_sum, correct=correct, seen=seen)
        return save_checkpoint(self.accelerator, self.paths.checkpoints, progress, self.cfg.checkpoints_total_limit)

    # ----------------------------------------------------------------- epochs

    def _evaluate(self, num_samples: int) -> EvalResult:
        """Evaluate on the test split with rank 0's BatchNorm statistics (the ones the saved weights carry)."""
        sync_buffers(self.accelerator, self.model)
        return evaluate(
            self.accelerator.unwrap_model(self.model),
            self.eval_loader,
            self.accelerator,
            self.splits.num_classes,
            num_samples=num_samples,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            tta=self.cfg.tta,
        )

    def evaluate_at_step(self, step: int) -> None:
        """--eval_strategy steps: evaluate mid-epoch, log eval/loss and eval/accuracy at this step (one sync)."""
        self.latest_eval = result = self._evaluate(num_samples=0)
        if self.main:
            self.tracking.log({"eval/loss": result.loss, "eval/accuracy": result.accuracy}, step=step)
            self.accelerator.print(
                f"step {step}: eval loss {result.loss:.4f} acc {100 * result.accuracy:.2f}%" + synthetic_note(self.cfg)
            )

    def fit(self) -> None:
        """Every epoch left: train, evaluate, record, checkpoint; then the final files.

        A stop or a NaN loss is reported here (where the checkpoint is, how to resume) and re-raised.
        """
        cfg, accelerator, progress = self.cfg, self.accelerator, self.progress
        result = None
        for epoch in range(progress.epoch, cfg.num_train_epochs):
            started = time.perf_counter()
            seen_before = progress.seen  # a mid-epoch resume's images, trained before `started`
            try:
                self.train_one_epoch(epoch)
            except Diverged as diverged:
                report_diverged(accelerator, self.paths, diverged.step, epoch, cfg.learning_rate)
                raise
            except TrainingStopped:
                report_interrupted(accelerator, self.paths, self.stop, progress.global_step, epoch)
                raise
            epoch_time = time.perf_counter() - started
            last = epoch == cfg.num_train_epochs - 1
            if cfg.eval_strategy == "epoch" or last:  # the final files always need the last epoch's evaluation
                result = self._evaluate(num_samples=cfg.num_prediction_samples if last else 0)
            else:  # the record carries the latest step evaluation (steps), or none (no)
                result = self.latest_eval
            *totals, trained_now = sum_over_processes(
                accelerator, progress.loss_sum, progress.correct, progress.seen, progress.seen - seen_before
            )
            self.results.end_epoch(
                epoch,
                tuple(totals),
                trained_now,
                epoch_time,
                result,
                self.scheduler.get_last_lr()[0],
                progress.global_step,
            )
            progress.epoch, progress.batch_in_epoch = epoch + 1, 0
            progress.loss_sum = progress.correct = progress.seen = 0.0
            if cfg.checkpointing_steps == "epoch" or (last and cfg.checkpointing_steps != "none"):
                save_checkpoint(
                    accelerator, self.paths.checkpoints, self.progress_record(), cfg.checkpoints_total_limit
                )
        if result is None:  # resumed from a finished run's last checkpoint: evaluate once for the final files
            result = self._evaluate(num_samples=cfg.num_prediction_samples)
        self.results.finish(self.model, result, progress, self.flow)
