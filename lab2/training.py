"""The training loop: the only module that creates the Accelerator and knows its life cycle.

`run(cfg)` reads like the algorithm: build (seeded), prepare, maybe resume, then
per epoch `train_one_epoch` and `evaluate`, then the final files. The hot loop
has no host-device sync except every --logging_steps steps (divergence and
interrupt checks, the train/loss point) and at flow snapshots.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lab2 import plots
from lab2.checkpoint import check_compatible, export_model, list_checkpoints, read_progress, resolve_resume_path, save_checkpoint
from lab2.config import TrainConfig
from lab2.data import CIFAR10_MEAN, CIFAR10_STD, load_splits, torchvision_loaders
from lab2.device_data import DeviceLoader, use_channels_last
from lab2.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, UserError
from lab2.evaluation import EvalResult, evaluate
from lab2.flops import count_flops
from lab2.flow import STATISTICS, FlowCollector, FlowHealth, read_flow_history
from lab2.models import create_model
from lab2.outputs import RunPaths, append_jsonl, keep_jsonl, read_jsonl, write_json
from lab2.tracking import Tracking, log_with_for, tracker_init_kwargs

# Dense peak FLOP/s by device-name fragment and precision, for model FLOPs utilisation (MFU) on CUDA.
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
}


class Diverged(Exception):
    """The loss became NaN or inf."""

    def __init__(self, step: int):
        super().__init__(f"step {step}")
        self.step = step


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint as progress.json."""

    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already trained
    global_step: int = 0  # optimizer steps so far
    loss_sum: float = 0.0  # running sums of the epoch in progress, over all processes
    correct: float = 0.0
    seen: float = 0.0
    model: str = ""
    num_classes: int = 0
    world_size: int = 1


# --------------------------------------------------------------------------- set-up helpers

def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ensure_cpu_threads(accelerator) -> None:
    """`accelerate launch` without a config sets OMP_NUM_THREADS=1, halving CPU speed: undo that for one process."""
    cores = _available_cores()
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1 and torch.get_num_threads() == 1 and cores > 1:
        torch.set_num_threads(cores)
        accelerator.print(
            f"note: running on 1 CPU thread (OMP_NUM_THREADS=1, as `accelerate launch` sets without a config); "
            f"using all {cores} cores instead. Pass --config_file accelerate_configs/cpu.yaml to avoid this."
        )


def check_output_dir(cfg: TrainConfig, paths: RunPaths) -> None:
    """Refuse to clobber a finished or unfinished run; read-only, so every process can run it."""
    if paths.root.exists() and not paths.root.is_dir():
        raise UserError(f"--output_dir {paths.root} is a file; give a folder.")
    if cfg.resume_from_checkpoint or cfg.overwrite_output_dir:
        return
    if paths.summary.exists():
        raise UserError(
            f"--output_dir {paths.root} holds a finished run; pass --overwrite_output_dir to replace it, "
            "or choose another --output_dir."
        )
    if list_checkpoints(paths.checkpoints):
        raise UserError(
            f"--output_dir {paths.root} holds an unfinished run's checkpoints; add --resume_from_checkpoint latest "
            "to continue it, or --overwrite_output_dir to start afresh."
        )


def prepare_output_dir(accelerator, cfg: TrainConfig, paths: RunPaths) -> None:
    """Create --output_dir (checking it is writable on every process) and clear an overwritten run."""
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        probe = paths.root / f".write-test-{accelerator.process_index}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to --output_dir {paths.root} ({exc.strerror}); choose a writable folder.") from None
    if cfg.overwrite_output_dir and accelerator.is_main_process:
        for artefact in paths.artefacts():
            if artefact.is_dir():
                shutil.rmtree(artefact)
            elif artefact.exists():
                artefact.unlink()
    accelerator.wait_for_everyone()


def create_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration

    return Accelerator(
        log_with=log_with_for(cfg.report_to),
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(RunPaths(cfg.output_dir).tensorboard)),
        # A seedable sampler reshuffles as seed + epoch, so the torchvision path resumes in the same order.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # A rank that dies must not leave the others waiting forever.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist_timeout_s))],
        dynamo_backend="inductor" if cfg.torch_compile else None,
    )


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX or AVX512-BF16); without them bf16 autocast is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: no way to tell, so no warning
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def warn_slow_bf16(accelerator) -> None:
    if accelerator.device.type == "cpu" and str(accelerator.mixed_precision) == "bf16" and not cpu_has_fast_bf16():
        accelerator.print(
            "warning: bf16 autocast on a CPU without AMX or AVX512-BF16 is emulated and was measured ~15x slower "
            "than fp32 here; use accelerate_configs/cpu.yaml (fp32) on this machine."
        )


def sync_buffers(accelerator, model) -> None:
    """Give every process rank 0's BatchNorm statistics, so evaluation matches the saved weights."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        for buffer in model.buffers():
            broadcast(buffer, from_process=0)


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signal_name: str | None = None

    def _handler(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    @contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_FLOPS.items():
        if fragment in name:
            return peaks.get(precision)
    return None


# --------------------------------------------------------------------------- the trainer

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
            raise UserError("the data set is too small for this run: it needs at least one image per process in each split.")
        model = create_model(cfg.model, self.splits.num_classes)
        self.channels_last = use_channels_last(cfg.channels_last, accelerator.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.flops = count_flops(model) if self.main else None  # rank 0 only, before wrapping
        # The fused kernel (one op for all tensors) is the same Adam, measured ~10% faster per CPU step here.
        fused = accelerator.device.type in ("cpu", "cuda")
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, fused=fused)
        self.train_loader, self.eval_loader = self._make_loaders()
        if cfg.data_pipeline == "torchvision":
            model, optimizer, self.train_loader, self.eval_loader = accelerator.prepare(model, optimizer, self.train_loader, self.eval_loader)
        else:  # the DeviceLoader is already on the device and sharded per process
            model, optimizer = accelerator.prepare(model, optimizer)
        self.model, self.optimizer = model, optimizer
        self.flow = FlowCollector(accelerator.unwrap_model(model)) if self.main and cfg.flow_log_steps else None
        self.health = FlowHealth()
        self.progress = Progress(model=cfg.model, num_classes=self.splits.num_classes, world_size=accelerator.num_processes)
        self.tracking = Tracking(accelerator, printer=accelerator.print)
        self.precision = {"no": "fp32"}.get(str(accelerator.mixed_precision), str(accelerator.mixed_precision))

    def _make_loaders(self):
        cfg, acc = self.cfg, self.accelerator
        s = self.splits
        if cfg.data_pipeline == "torchvision":
            return torchvision_loaders(s, cfg.per_device_train_batch_size, cfg.per_device_eval_batch_size, cfg.num_workers, cfg.seed)
        common = dict(device=acc.device, seed=cfg.seed, process_index=acc.process_index, num_processes=acc.num_processes, channels_last=self.channels_last)
        return (
            DeviceLoader(s.train_images, s.train_labels, cfg.per_device_train_batch_size, train=True, **common),
            DeviceLoader(s.test_images, s.test_labels, cfg.per_device_eval_batch_size, train=False, **common),
        )

    # ----------------------------------------------------------------- start

    def resume(self) -> None:
        path = resolve_resume_path(self.cfg.resume_from_checkpoint, self.cfg.output_dir)
        saved = read_progress(path)
        check_compatible(saved, path, self.cfg.model, self.splits.num_classes, self.accelerator.num_processes)
        try:
            self.accelerator.load_state(str(path))
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise UserError(f"checkpoint {path} does not fit this run ({str(exc).splitlines()[0]}); check --model or pick another checkpoint.") from None
        for group in self.optimizer.param_groups:  # the command line wins over the checkpoint's learning rate
            if group["lr"] != self.cfg.learning_rate:
                self.accelerator.print(f"note: --learning_rate {self.cfg.learning_rate:g} replaces the checkpoint's {group['lr']:g}")
                group["lr"] = self.cfg.learning_rate
        self.progress = Progress(**{k: saved[k] for k in asdict(Progress()) if k in saved})
        self.progress.world_size = self.accelerator.num_processes
        if not self.main:  # rank 0 carries the saved running sums; the epoch-end reduce adds them once
            self.progress.loss_sum = self.progress.correct = self.progress.seen = 0.0
        if self.main:  # drop records logged after the checkpoint: they will be produced again
            keep_jsonl(self.paths.metrics, lambda r: r["epoch"] <= self.progress.epoch)
            keep_jsonl(self.paths.flow, lambda r: r["step"] <= self.progress.global_step)
            if self.flow is not None:
                self.flow.history = read_flow_history(self.paths.flow)
        self.accelerator.print(f"resumed from {path}: epoch {self.progress.epoch + 1}, batch {self.progress.batch_in_epoch}, step {self.progress.global_step}")

    def start(self) -> None:
        cfg = self.cfg
        if self.main:
            write_json(self.paths.config, cfg.to_dict())
            write_json(self.paths.flops, self.flops.to_dict())
            self.accelerator.print(self.flops.table())
            init_kwargs, notice = tracker_init_kwargs(cfg.report_to, self.paths.root, cfg.run_name, bool(cfg.resume_from_checkpoint))
            if notice:
                self.accelerator.print(notice)
        else:
            init_kwargs = {}
        self.tracking.start(cfg.project_name, cfg.to_dict(), init_kwargs)
        if self.main and self.progress.global_step == 0:
            self.tracking.log({"model/gflops_per_sample": self.flops.gflops_per_sample, "model/params": self.flops.params}, step=0)

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

    def _record_flow(self, step: int) -> None:
        snapshot = self.flow.after_step(step)
        append_jsonl(self.paths.flow, snapshot.to_record())
        values = {f"flow/{stat}/{layer}": getattr(snapshot, stat)[i] for stat in STATISTICS for i, layer in enumerate(snapshot.layers)}
        self.tracking.log(values, step=step)
        for message in self.health.check(snapshot):
            self.accelerator.print(message)
            self.tracking.log({"flow/warning": message}, step=step)

    def train_one_epoch(self, epoch: int) -> bool:
        """Train one epoch from progress.batch_in_epoch; return False when a stop was requested."""
        cfg, acc, p = self.cfg, self.accelerator, self.progress
        loader = self.train_loader
        loader.set_epoch(epoch)
        if cfg.data_pipeline == "device":
            loader.start_batch = p.batch_in_epoch
            batches = loader
        else:
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
        bar = tqdm(total=len(loader), initial=p.batch_in_epoch, desc=f"epoch {epoch + 1}/{cfg.num_train_epochs}", disable=not self.main, mininterval=1.0, leave=False)
        try:
            for images, labels in batches:
                logits = self.model(images)
                loss = F.cross_entropy(logits.float(), labels)
                acc.backward(loss)
                # Every --flow_log_steps steps, and once at the very end of training.
                take_flow = cfg.flow_log_steps and ((p.global_step + 1) % cfg.flow_log_steps == 0 or (final_epoch and p.batch_in_epoch + 1 == len(loader)))
                if take_flow:
                    self._flow_snapshot()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                p.global_step += 1
                p.batch_in_epoch += 1
                if take_flow and self.flow is not None:
                    self._record_flow(p.global_step)
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
        local = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.accelerator.device) for v in (loss_sum, correct, seen)])
        return tuple(float(t) for t in self.accelerator.reduce(local, "sum"))

    def _save(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: float) -> Path:
        """Checkpoint mid-epoch: the running sums are summed over processes into progress."""
        totals = self._sum_over_processes(loss_sum, correct, seen)
        progress = asdict(self.progress)
        progress.update(loss_sum=totals[0], correct=totals[1], seen=totals[2])
        return save_checkpoint(self.accelerator, self.paths.checkpoints, progress, self.cfg.checkpoints_total_limit)

    # ----------------------------------------------------------------- epochs

    def end_epoch(self, epoch: int, epoch_time: float, result: EvalResult, lr: float) -> dict:
        acc, p = self.accelerator, self.progress
        loss_sum, correct, seen = self._sum_over_processes(p.loss_sum, p.correct, p.seen)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "eval_loss": result.loss,
            "eval_acc": result.accuracy,
            "lr": lr,
            "epoch_time_s": epoch_time,
            "train_images_per_s": seen / max(epoch_time, 1e-9),
            "global_step": p.global_step,
        }
        if self.main:
            append_jsonl(self.paths.metrics, record)
            values = {
                "train/loss_epoch": record["train_loss"],
                "train/accuracy": record["train_acc"],
                "eval/loss": record["eval_loss"],
                "eval/accuracy": record["eval_acc"],
                "epoch": record["epoch"],
                "perf/train_images_per_s": record["train_images_per_s"],
            }
            if self.flops.training_flops:
                achieved = record["train_images_per_s"] * self.flops.training_flops
                values["perf/train_tflops"] = achieved / 1e12
                peak = peak_flops(acc.device, self.precision)
                if peak:
                    values["perf/mfu"] = achieved / peak
            self.tracking.log(values, step=p.global_step)
            acc.print(
                f"epoch {epoch + 1}/{self.cfg.num_train_epochs}: train loss {record['train_loss']:.4f} acc {100 * record['train_acc']:.2f}% | "
                f"eval loss {record['eval_loss']:.4f} acc {100 * record['eval_acc']:.2f}% | "
                f"{record['train_images_per_s']:.0f} img/s | {epoch_time:.1f} s"
            )
        p.epoch, p.batch_in_epoch = epoch + 1, 0
        p.loss_sum = p.correct = p.seen = 0.0
        return record

    def _evaluate(self, num_samples: int) -> EvalResult:
        """Evaluate on the test split with rank 0's BatchNorm statistics (the ones the saved weights carry)."""
        sync_buffers(self.accelerator, self.model)
        return evaluate(
            self.accelerator.unwrap_model(self.model), self.eval_loader, self.accelerator, self.splits.num_classes,
            num_samples=num_samples, mean=CIFAR10_MEAN, std=CIFAR10_STD,
        )

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
            result = self._evaluate(num_samples=cfg.num_prediction_samples if last else 0)
            self.end_epoch(epoch, epoch_time, result, self.optimizer.param_groups[0]["lr"])
            if cfg.checkpointing_steps == "epoch" or (last and cfg.checkpointing_steps != "none"):
                save_checkpoint(acc, self.paths.checkpoints, asdict(p), cfg.checkpoints_total_limit)
        if result is None:  # resumed from a finished run's last checkpoint: evaluate once for the final files
            result = self._evaluate(num_samples=cfg.num_prediction_samples)
        self.finish(result)
        return 0

    # ----------------------------------------------------------------- endings

    def _resume_hint(self) -> str:
        return f"resume with the same command plus: --output_dir {self.paths.root} --resume_from_checkpoint latest"

    def _interrupted(self) -> int:
        latest = list_checkpoints(self.paths.checkpoints)
        self.accelerator.print(
            f"stopped by {self.stop.signal_name} at step {self.progress.global_step} (epoch {self.progress.epoch + 1}); "
            f"checkpoint saved to {latest[-1] if latest else '?'}. {self._resume_hint()}"
        )
        return EXIT_INTERRUPTED

    def _diverged(self, step: int, epoch: int) -> int:
        latest = list_checkpoints(self.paths.checkpoints)
        where = f"the last good checkpoint is {latest[-1]}" if latest else "no checkpoint was saved before it"
        self.accelerator.print(
            f"error: the loss became NaN/inf at step {step} (epoch {epoch + 1}); training stopped and {where}. "
            f"Lower --learning_rate (now {self.cfg.learning_rate:g}) or check the data."
        )
        return EXIT_DIVERGED

    def finish(self, result: EvalResult) -> None:
        """Final files: weights, figures, flow heatmaps, Table-1 log, summary.json (last: it marks the run finished)."""
        acc, cfg, paths = self.accelerator, self.cfg, self.paths
        metadata = {
            "model": cfg.model,
            "num_classes": self.splits.num_classes,
            "class_names": json.dumps(list(self.splits.class_names)),
            "eval_acc": repr(result.accuracy),
            "config": json.dumps(cfg.to_dict()),
            "format": "pt",
        }
        export_model(acc, self.model, paths.model, metadata)
        if not self.main:
            return
        metrics = read_jsonl(paths.metrics)
        figures = self._final_figures(result, metrics)
        paths.figures.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            plots.save_figure(fig, paths.figures / f"{name}.png")
        self.tracking.log_figures(figures, step=self.progress.global_step)
        self.tracking.log_confusion_matrix(result.confusion, self.splits.class_names, step=self.progress.global_step)
        table = training_log_table(metrics)
        paths.training_log.write_text(table + "\n", encoding="utf-8")
        acc.print(table)
        summary = self._summary(result, metrics)
        write_json(paths.summary, summary)
        self.tracking.log({"eval/final_accuracy": result.accuracy}, step=self.progress.global_step)
        acc.print(
            f"done: final eval accuracy {100 * result.accuracy:.2f}% on {result.num_samples} images "
            f"(best {100 * summary['best_eval_acc']:.2f}%); files in {paths.root}"
        )
        from lab2.report import write_report

        write_report(paths.root)

    def _final_figures(self, result: EvalResult, metrics: list[dict]) -> dict:
        figures = plots.evaluation_figures(result.confusion, result.per_class_accuracy, result.samples, self.splits.class_names)
        if metrics:
            figures["curves"] = plots.curves_figure(metrics)
        history = self.flow.history if self.flow is not None else []
        if history:
            last = history[-1]
            figures["gradients"] = plots.flow_bar_figure(last.layers, last.grad_mean, last.grad_max, "grad", last.step)
            figures["weights"] = plots.flow_bar_figure(last.layers, last.weight_mean, last.weight_max, "weight", last.step)
            figures["update_ratio"] = plots.update_ratio_figure(last.layers, last.update_ratio, last.step)
            steps = [s.step for s in history]
            for stat in ("grad_mean", "weight_mean", "update_ratio"):
                figures[f"heatmap_{stat}"] = plots.flow_heatmap_figure(last.layers, steps, self.flow.matrix(stat).numpy(), stat)
        return figures

    def _summary(self, result: EvalResult, metrics: list[dict]) -> dict:
        images = sum(m["train_images_per_s"] * m["epoch_time_s"] for m in metrics)
        time_s = sum(m["epoch_time_s"] for m in metrics)
        return {
            "final_eval_acc": result.accuracy,
            "best_eval_acc": max([m["eval_acc"] for m in metrics], default=result.accuracy),
            "final_eval_loss": result.loss,
            "num_eval_samples": result.num_samples,
            "class_accuracy": dict(zip(self.splits.class_names, map(float, result.per_class_accuracy))),
            "confusion_matrix": result.confusion.tolist(),  # rows: true class, columns: predicted
            "gflops_per_sample": self.flops.gflops_per_sample,
            "training_gflops_per_sample": (self.flops.training_flops or 0) / 1e9,
            "params": self.flops.params,
            "epochs": self.progress.epoch,
            "global_step": self.progress.global_step,
            "train_time_s": time_s,
            "train_images_per_s": images / time_s if time_s else 0.0,
            "train_tflops": (images / time_s if time_s else 0.0) * (self.flops.training_flops or 0) / 1e12,
            "mfu": (images / time_s) * self.flops.training_flops / peak if time_s and self.flops.training_flops and (peak := peak_flops(self.accelerator.device, self.precision)) else None,
            "device": str(self.accelerator.device) + (f" ({torch.cuda.get_device_name()})" if self.accelerator.device.type == "cuda" else ""),
            "world_size": self.accelerator.num_processes,
            "precision": self.precision,
            "data_pipeline": self.cfg.data_pipeline,
        }


def training_log_table(metrics: list[dict]) -> str:
    """The Table-1 training log: epoch, train loss, train acc, val loss, val acc."""
    lines = [
        f"{'Epoch':>5} | {'Train Loss':>10} | {'Train Acc':>9} | {'Val Loss':>8} | {'Val Acc':>7}",
        f"{'-' * 5}-+-{'-' * 10}-+-{'-' * 9}-+-{'-' * 8}-+-{'-' * 7}",
    ]
    for m in metrics:
        lines.append(
            f"{m['epoch']:>5} | {m['train_loss']:>10.4f} | {100 * m['train_acc']:>8.2f}% | {m['eval_loss']:>8.4f} | {100 * m['eval_acc']:>6.2f}%"
        )
    return "\n".join(lines)


def run(cfg: TrainConfig) -> int:
    """Train as `cfg` says; return the process exit code."""
    paths = RunPaths(cfg.output_dir)
    check_output_dir(cfg, paths)
    accelerator = create_accelerator(cfg)
    trainer = None
    try:
        ensure_cpu_threads(accelerator)
        warn_slow_bf16(accelerator)
        prepare_output_dir(accelerator, cfg, paths)
        stop = StopRequest()
        with stop.installed():
            trainer = Trainer(cfg, accelerator, paths, stop)
            if cfg.resume_from_checkpoint:
                trainer.resume()
            trainer.start()
            return trainer.fit()
    finally:
        if trainer is not None:
            trainer.tracking.finish()
        else:
            accelerator.end_training()  # still tear down the process group
