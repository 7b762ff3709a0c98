"""The training loop: build, prepare, maybe resume, then per epoch `train_one_epoch` and `evaluate`.

`run(cfg)` reads like the algorithm. The run's set-up (Accelerator, threads,
output folder, signals) is lab2.engine.run_setup; its results (per-epoch record,
final figures, summary, Table-1 log, report) are lab2.engine.results. Both data
pipelines reach the loop as DataLoaders that went through `accelerator.prepare`,
so Accelerate shards, evens out and skips batches for every path. The hot loop
has no host-device sync except every --logging_steps steps (divergence and
interrupt checks, the train/loss point) and at flow snapshots.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lab2.config.train_config import TrainConfig
from lab2.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from lab2.data.device_dataset import use_channels_last
from lab2.data.sources import load_splits, pipeline_loaders
from lab2.engine.evaluation import EvalResult, evaluate, sync_buffers
from lab2.engine.optim import (
    create_optimizer,
    create_scheduler,
    scheduler_total_steps,
    training_loss,
)
from lab2.engine.results import RunResults, report_diverged, report_interrupted
from lab2.engine.resume import Progress, resume_run
from lab2.engine.run_setup import (
    StopRequest,
    check_output_dir,
    create_accelerator,
    ensure_cpu_threads,
    prepare_output_dir,
    start_records,
    warn_slow_bf16,
)
from lab2.errors import UserError, is_disk_full
from lab2.explain.flops import count_flops
from lab2.explain.flow_reporter import FlowReporter
from lab2.models import create_model
from lab2.state.checkpoint import disk_full_error, position_settings, save_checkpoint
from lab2.state.run_paths import RunPaths
from lab2.tracking.trackers import Tracking


class Diverged(Exception):
    """The loss became NaN or inf."""

    def __init__(self, step: int):
        super().__init__(f"step {step}")
        self.step = step


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
                f"--dataloader_drop_last leaves no training batch: {len(self.splits.train_labels)} images per epoch are fewer than "
                f"one batch of {cfg.per_device_train_batch_size} per process; lower --per_device_train_batch_size or drop the flag."
            )
        # The schedule spans the run's optimizer steps, known once the loader is sharded. Prepared, it steps once per
        # optimizer step (skipped with the step under fp16 overflow) and save_state/load_state carry it.
        scheduler = create_scheduler(
            self.optimizer.optimizer,
            cfg.lr_scheduler_type,
            scheduler_total_steps(len(self.train_loader), cfg.num_train_epochs, accelerator.num_processes),
            cfg.warmup_ratio,
        )
        self.scheduler = accelerator.prepare(scheduler)
        self.latest_eval: EvalResult | None = None  # the last evaluation of --eval_strategy steps
        self.progress = Progress(
            model=cfg.model, num_classes=self.splits.num_classes, world_size=accelerator.num_processes
        )
        self.tracking = Tracking(accelerator, printer=accelerator.print)
        self.flow = None  # flow statistics, histograms and images: main process only
        if self.main and cfg.flow_log_steps:
            self.flow = FlowReporter(
                accelerator.unwrap_model(self.model),
                self.tracking,
                paths.flow,
                histograms=cfg.log_histograms == "on",
                printer=accelerator.print,
            )
        precision = {"no": "fp32"}.get(str(accelerator.mixed_precision), str(accelerator.mixed_precision))
        self.results = RunResults(cfg, accelerator, paths, self.splits, self.flops, self.tracking, precision)

    # ----------------------------------------------------------------- start

    def position(self) -> dict:
        """The settings that give progress.batch_in_epoch its meaning (checked when resuming mid-epoch)."""
        return position_settings(self.cfg, len(self.splits.train_labels), self.accelerator.num_processes)

    def progress_record(self, **sums) -> dict:
        """progress.json's content: the Progress fields, the position settings, and `sums` overriding the running sums."""
        return {**asdict(self.progress), **sums, "position": self.position()}

    def resume(self) -> None:
        self.progress = resume_run(
            self.cfg, self.accelerator, self.paths, self.scheduler, self.position(), self.splits.num_classes, self.flow
        )

    def start(self) -> None:
        start_records(
            self.cfg, self.accelerator, self.paths, self.flops, self.tracking, fresh=self.progress.global_step == 0
        )

    # ----------------------------------------------------------------- training

    def _check_interval(self, first_bad: torch.Tensor) -> None:
        """Every --logging_steps: raise Diverged if any process saw a non-finite loss (one sync)."""
        if self.accelerator.num_processes > 1:
            first_bad = self.accelerator.gather(first_bad[None]).max()
        bad = int(first_bad)
        if bad >= 0:
            raise Diverged(bad)

    def _stop_requested(self) -> bool:
        """Whether any process got SIGINT/SIGTERM; a plain flag read with one process, a collective with more."""
        if self.accelerator.num_processes == 1:
            return self.stop.signal_name is not None
        flag = torch.tensor([1 if self.stop.signal_name else 0], device=self.accelerator.device)
        return bool(self.accelerator.gather(flag).max())

    def _flow_snapshot(self) -> None:
        """Gradients are unscaled first (fp16), then read before the optimizer step by the collector."""
        self.accelerator.unscale_gradients()
        if self.flow is not None:
            self.flow.before_step()

    def train_one_epoch(self, epoch: int) -> bool:
        """Train one epoch from progress.batch_in_epoch; return False when a stop was requested."""
        cfg, acc, p = self.cfg, self.accelerator, self.progress
        loader = self.train_loader
        loader.set_epoch(epoch)  # the sampler's shuffle: seed + epoch
        if hasattr(
            loader.dataset, "set_epoch"
        ):  # the DeviceDataset's augmentation (Accelerate skips it when the sampler has one)
            loader.dataset.set_epoch(epoch)
        batches = acc.skip_first_batches(loader, p.batch_in_epoch) if p.batch_in_epoch else loader
        device = acc.device
        loss_sum = torch.tensor(p.loss_sum, device=device)
        correct = torch.tensor(p.correct, device=device)
        seen = p.seen
        first_bad = torch.tensor(-1, device=device)
        interval_loss, interval_start = torch.zeros((), device=device), p.global_step
        final_epoch = epoch == cfg.num_train_epochs - 1
        check_every = 1 if acc.num_processes == 1 else cfg.logging_steps  # a stop check is a collective with >1 process
        self.model.train()
        bar = tqdm(
            total=len(loader),
            initial=p.batch_in_epoch,
            desc=f"epoch {epoch + 1}/{cfg.num_train_epochs}",
            disable=not self.main,
            mininterval=1.0,
            leave=False,
        )
        try:
            for images, labels in batches:
                logits = self.model(images)
                loss = training_loss(logits, labels, cfg.label_smoothing_factor)
                acc.backward(loss)
                # Every --flow_log_steps steps, and once at the very end of training.
                take_flow = cfg.flow_log_steps and (
                    (p.global_step + 1) % cfg.flow_log_steps == 0
                    or (final_epoch and p.batch_in_epoch + 1 == len(loader))
                )
                if take_flow:
                    self._flow_snapshot()
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                p.global_step += 1
                p.batch_in_epoch += 1
                if self.flow is not None:
                    if take_flow:  # file, scalars, histograms, warnings; its images render on the worker thread
                        self.flow.after_step(p.global_step)
                    self.flow.poll(p.global_step)  # logs finished images; never waits
                # Metrics stay on the device: no .item() in the hot loop.
                detached = loss.detach()
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached), p.global_step, first_bad)
                loss_sum += detached * len(labels)
                interval_loss += detached
                correct += (logits.argmax(dim=1) == labels).sum()
                seen += len(labels)
                bar.update(1)
                if p.global_step % cfg.logging_steps == 0:
                    self._check_interval(first_bad)
                    interval_start = self._log_train_loss(interval_loss, interval_start, bar)
                every = cfg.checkpoint_every_steps
                if every and p.global_step % every == 0:
                    self._check_interval(first_bad)
                    self._save(loss_sum, correct, seen)
                if cfg.eval_every_steps and p.global_step % cfg.eval_every_steps == 0:
                    self._evaluate_at_step(p.global_step)
                if p.global_step % check_every == 0 and self._stop_requested():
                    self._check_interval(first_bad)
                    self._save(loss_sum, correct, seen)
                    return False
        finally:
            bar.close()  # before any message, so it does not share a line with the bar
        self._check_interval(first_bad)
        if p.global_step > interval_start:  # the epoch's last partial interval
            self._log_train_loss(interval_loss, interval_start, bar)
        p.loss_sum, p.correct, p.seen = float(loss_sum), float(correct), seen
        return True

    def _log_train_loss(self, interval_loss: torch.Tensor, interval_start: int, bar) -> int:
        """Log the mean loss since `interval_start` as train/loss (one sync); return the new interval start."""
        mean_loss = float(interval_loss) / (self.progress.global_step - interval_start)
        self.tracking.log({"train/loss": mean_loss}, step=self.progress.global_step)
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        interval_loss.zero_()
        return self.progress.global_step

    def _sum_over_processes(self, loss_sum, correct, seen) -> tuple[float, float, float]:
        """The epoch's running sums (tensors or numbers) added over all processes."""
        local = torch.stack(
            [torch.as_tensor(v, dtype=torch.float32, device=self.accelerator.device) for v in (loss_sum, correct, seen)]
        )
        return tuple(float(t) for t in self.accelerator.reduce(local, "sum"))

    def _save(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: float) -> Path:
        """Checkpoint mid-epoch: the running sums are summed over processes into progress."""
        totals = self._sum_over_processes(loss_sum, correct, seen)
        progress = self.progress_record(loss_sum=totals[0], correct=totals[1], seen=totals[2])
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

    def _evaluate_at_step(self, step: int) -> None:
        """--eval_strategy steps: evaluate mid-epoch, log eval/loss and eval/accuracy at this step (one sync)."""
        self.latest_eval = result = self._evaluate(num_samples=0)
        if self.main:
            self.tracking.log({"eval/loss": result.loss, "eval/accuracy": result.accuracy}, step=step)
            self.accelerator.print(f"step {step}: eval loss {result.loss:.4f} acc {100 * result.accuracy:.2f}%")

    def fit(self) -> int:
        cfg, acc, p = self.cfg, self.accelerator, self.progress
        result = None
        for epoch in range(p.epoch, cfg.num_train_epochs):
            started = time.perf_counter()
            try:
                finished = self.train_one_epoch(epoch)
            except Diverged as bad:
                return self._diverged(bad.step, epoch)
            epoch_time = time.perf_counter() - started
            if not finished:
                return self._interrupted()
            last = epoch == cfg.num_train_epochs - 1
            if cfg.eval_strategy == "epoch" or last:  # the final files always need the last epoch's evaluation
                result = self._evaluate(num_samples=cfg.num_prediction_samples if last else 0)
            else:  # the record carries the latest step evaluation (steps), or none (no)
                result = self.latest_eval
            totals = self._sum_over_processes(p.loss_sum, p.correct, p.seen)
            self.results.end_epoch(epoch, totals, epoch_time, result, self.scheduler.get_last_lr()[0], p.global_step)
            p.epoch, p.batch_in_epoch = epoch + 1, 0
            p.loss_sum = p.correct = p.seen = 0.0
            if cfg.checkpointing_steps == "epoch" or (last and cfg.checkpointing_steps != "none"):
                save_checkpoint(acc, self.paths.checkpoints, self.progress_record(), cfg.checkpoints_total_limit)
        if result is None:  # resumed from a finished run's last checkpoint: evaluate once for the final files
            result = self._evaluate(num_samples=cfg.num_prediction_samples)
        self.results.finish(self.model, result, p, self.flow)
        return 0

    # ----------------------------------------------------------------- endings

    def _interrupted(self) -> int:
        return report_interrupted(
            self.accelerator, self.paths, self.stop.signal_name, self.progress.global_step, self.progress.epoch
        )

    def _diverged(self, step: int, epoch: int) -> int:
        return report_diverged(self.accelerator, self.paths, step, epoch, self.cfg.learning_rate)


def run(cfg: TrainConfig) -> int:
    """Train as `cfg` says; return the process exit code.

    A full disk anywhere in the run becomes one DiskFull error (exit code 6) naming the
    last good checkpoint; a signal during the final files is reported once they are written.
    """
    paths = RunPaths(cfg.output_dir)
    check_output_dir(cfg, paths)
    accelerator = create_accelerator(cfg)
    trainer = None
    stop = StopRequest()
    with stop.installed():  # also around closing the trackers: a signal there is still heard
        try:
            ensure_cpu_threads(accelerator)
            warn_slow_bf16(accelerator)
            prepare_output_dir(accelerator, cfg, paths)
            trainer = Trainer(cfg, accelerator, paths, stop)
            if cfg.resume_from_checkpoint:
                trainer.resume()
            trainer.start()
            code = trainer.fit()
            if code == 0 and stop.finished_note():
                accelerator.print(stop.finished_note())
            return code
        except UserError:
            raise
        except Exception as exc:
            if is_disk_full(exc, paths.root):
                raise disk_full_error(exc, getattr(exc, "filename", None) or paths.root, paths.checkpoints) from None
            raise
        finally:
            if trainer is not None:
                if trainer.flow is not None:  # stopped early: still log the images already rendering
                    trainer.flow.close(trainer.progress.global_step)
                trainer.tracking.finish()
            else:
                accelerator.end_training()  # still tear down the process group
