"""A run's set-up, done once before the first step: the Accelerator, CPU threads, the output folder and its lock,
the Run record (through one `accelerator.prepare`) and the records a run starts with. The loop is lab2.engine.loop."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from lab2.config import TrainConfig, parse_report_to
from lab2.data.cifar import load_splits
from lab2.data.device_dataset import pipeline_loaders, use_channels_last
from lab2.engine.distributed import is_port_taken, port_taken_message
from lab2.engine.evaluation import EvalResult
from lab2.engine.optim import create_optimizer, create_scheduler, scheduler_total_steps
from lab2.engine.resume import position_settings
from lab2.errors import UserError
from lab2.explain.flops import count_flops
from lab2.explain.flow import FlowReporter
from lab2.models import create_model
from lab2.state import run_folder
from lab2.state.files import write_json
from lab2.state.run_folder import RunPaths
from lab2.tracking.startup import tracker_init_kwargs, wandb_project
from lab2.tracking.trackers import Tracking


def check_output_dir(cfg: TrainConfig, paths: RunPaths) -> None:
    """Refuse a folder lab2 may not write into (lab2.state.run_folder's rule), a run it would clobber, or a folder
    another lab2 process is writing to; read-only."""
    # Every rank probes, so all of them stop alike; rank 0 takes the lock only after the Accelerator's
    # rendezvous, when every rank's probe is over.
    run_folder.refuse_if_locked(paths.root)
    run_folder.check_output_dir(paths.root, bool(cfg.resume_from_checkpoint), cfg.overwrite_output_dir)


def prepare_output_dir(accelerator, cfg: TrainConfig, paths: RunPaths) -> run_folder.RunFolderLock | None:
    """Create, lock and mark --output_dir (checking it is writable on every process); --overwrite_output_dir
    removes lab2's own files from it by name, never anything else. Returns the lock (main process; None on the
    others), to hold until the run has written its last file."""
    from accelerate.utils import broadcast_object_list

    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=paths.root).close()  # a nameless file: it can never be one of the user's
    except OSError as exc:
        raise UserError(
            f"cannot write to --output_dir {paths.root} ({exc.strerror}); choose a writable folder."
        ) from None
    # The main process locks before anything is removed or written; all learn whether it could, so all stop alike.
    lock, problem = None, None
    if accelerator.is_main_process:
        try:
            lock = run_folder.RunFolderLock(paths.root)
        except UserError as error:
            problem = str(error)
    if problem := broadcast_object_list([problem])[0]:
        raise UserError(problem)
    try:
        if accelerator.is_main_process:
            if cfg.overwrite_output_dir and run_folder.is_marked(paths.root):
                run_folder.remove_owned_files(paths.root)
            run_folder.claim(paths.root)
        accelerator.wait_for_everyone()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def discard_unused_run_folder(root: Path, created: list[Path]) -> None:
    """Remove a run folder this start created when it failed before training, and the `created` folders above it
    that are left empty. Only lab2's marker and lock may be in the run folder; one holding anything else stays."""
    own = {run_folder.MARKER, run_folder.LOCK}
    if not (root.is_dir() and {p.name for p in root.iterdir()} <= own):
        return
    for name in own:  # the lock's flock is released later by its handle; unlinking the name first is harmless
        (root / name).unlink(missing_ok=True)
    for folder in created:  # the run folder first, then its new parents, each only while empty
        try:
            folder.rmdir()
        except OSError:
            return


def create_accelerator(cfg: TrainConfig, paths: RunPaths):
    """The run's Accelerator, its precision checked and the CPU notes printed; with several processes it also makes
    the process group, on the launcher's port."""
    from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
    from accelerate.utils import ProjectConfiguration, TorchDynamoPlugin

    try:
        accelerator = Accelerator(
            log_with=parse_report_to(cfg.report_to) or None,
            project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(paths.tensorboard)),
            # A seedable sampler reshuffles as seed + epoch on every process alike, whatever the loop did before:
            # both pipelines then resume mid-epoch in the same order.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
            # A rank that dies must not leave the others waiting forever.
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist_timeout_s))],
            dynamo_plugin=TorchDynamoPlugin(backend="inductor", mode=cfg.torch_compile_mode)
            if cfg.torch_compile
            else None,
        )
    except RuntimeError as error:
        # Another run's store on the port reads like a lost peer to torch; it is a choice the user can change.
        if is_port_taken(error):
            raise UserError(port_taken_message()) from None
        raise
    autocast_precision(accelerator)  # refuse a precision this device would not run, before any file is written
    cpu_notes(accelerator)
    return accelerator


def autocast_precision(accelerator) -> str:
    """What autocast really runs in (fp32, bf16, fp16), as summary.json records it. Accelerate takes any
    ACCELERATE_MIXED_PRECISION and on a CPU trains fp16 or a misspelt value in fp32 without a word; lab2 refuses
    those, so a record never names a precision that did not run."""
    precision = str(accelerator.mixed_precision)
    if precision == "no":
        return "fp32"
    if not accelerator.native_amp:
        known = precision in ("fp16", "bf16", "fp8")
        raise UserError(
            f"mixed precision {precision!r} (ACCELERATE_MIXED_PRECISION, from the config file, --mixed_precision or "
            f"the environment) {f'cannot run on {accelerator.device.type}' if known else 'is not a precision'}: "
            "use 'no' (fp32) or 'bf16' on a CPU, and 'fp16' or 'bf16' on a GPU."
        )
    return precision


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX or AVX512-BF16); without them bf16 autocast is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: no way to tell, so no warning
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def cpu_notes(accelerator) -> None:
    """On the CPU: undo the OMP_NUM_THREADS=1 that `accelerate launch` gives one process (it halves the speed; an
    explicit --num_cpu_threads_per_process 1 looks the same to lab2), and warn of emulated bf16. Started any other
    way, a single thread is the user's own OMP_NUM_THREADS=1 (two runs sharing the cores, say), and it is honoured."""
    if accelerator.device.type != "cpu":
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # `accelerate launch` exports its settings (ACCELERATE_DYNAMO_BACKEND among them); plain python, torchrun do not.
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ
    if launched and accelerator.num_processes == 1 and torch.get_num_threads() == 1 and cores > 1:
        torch.set_num_threads(cores)
        accelerator.print(
            f"note: `accelerate launch` gave this one process 1 CPU thread (OMP_NUM_THREADS=1: its choice without a "
            f"config or where it counts one physical core, or --num_cpu_threads_per_process 1); using all {cores} "
            "cores instead. For one thread (runs sharing the cores): OMP_NUM_THREADS=1 python train_accelerate.py ..."
        )
    if str(accelerator.mixed_precision) == "bf16" and not cpu_has_fast_bf16():
        accelerator.print(
            "warning: bf16 autocast on a CPU without AMX or AVX512-BF16 is emulated and was measured ~15x slower "
            "than fp32 here; use accelerate_configs/cpu.yaml (fp32) on this machine."
        )


def start_records(run: Run) -> None:
    """Write config.json and flops.json, print the FLOPs table and start the trackers (on every process: only
    the main one has real trackers); a fresh run logs the model's cost at step 0."""
    cfg, accelerator, paths, flops = run.cfg, run.accelerator, run.paths, run.flops
    fresh, init_kwargs = run.progress.global_step == 0, {}
    if "wandb" in parse_report_to(cfg.report_to):  # config.json says the project the W&B run went to
        cfg.project_name = wandb_project(cfg.project_name)
    if accelerator.is_main_process:
        write_json(paths.config, cfg.to_dict())
        write_json(paths.flops, flops.to_dict())
        # A resume prints one line, so its "resumed from ..." line stays on the screen above the bar.
        accelerator.print(flops.table() if fresh else flops.short())
        resuming, timeout = bool(cfg.resume_from_checkpoint), cfg.wandb_init_timeout_s
        init_kwargs, notice = tracker_init_kwargs(cfg.report_to, paths.root, cfg.run_name, resuming, timeout)
        if notice:
            accelerator.print(notice)
    run.tracking.start(cfg.project_name, cfg.to_dict(), init_kwargs, run_folder=paths.root)
    if accelerator.is_main_process and fresh:
        run.tracking.log({"model/gflops_per_sample": flops.gflops_per_sample, "model/params": flops.params}, step=0)


@dataclass
class Run:
    """What one training run works with, built once by `build_run`."""

    cfg: TrainConfig
    accelerator: Any
    paths: RunPaths
    progress: Any  # lab2.engine.loop.Progress, the one the loop updates
    splits: Any  # lab2.data.cifar.DataSplits: images, labels, class names
    model: torch.nn.Module  # prepared: DDP-wrapped with several processes
    optimizer: Any
    scheduler: Any
    train_loader: Any
    eval_loader: Any
    schedule_steps: int  # the scheduler's steps over the whole run (lab2.engine.optim.scheduler_total_steps)
    position: dict  # the settings that give progress.batch_in_epoch its meaning (checked resuming mid-epoch)
    flops: Any  # lab2.explain.flops.FlopsReport on the main process, None on the others
    tracking: Tracking
    flow: FlowReporter | None  # flow statistics, histograms and images: main process, snapshots on
    flow_every: int  # optimizer steps between flow snapshots (0: none)
    precision: str  # what autocast runs in: fp32, bf16 or fp16
    latest_eval: EvalResult | None = None  # the last evaluation of --eval_strategy steps


def build_run(cfg: TrainConfig, accelerator, paths: RunPaths, progress) -> Run:
    """Data, model, optimizer and scheduler, through one `accelerator.prepare`; trackers and flow reporter."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    with accelerator.main_process_first():  # downloads and fake-data generation happen once
        splits = load_splits(cfg)
    if len(splits.train_labels) < accelerator.num_processes or len(splits.test_labels) == 0:
        raise UserError(
            "the data set is too small for this run: it needs at least one image per process in each split."
        )
    progress.num_classes = splits.num_classes
    model = create_model(cfg.model, splits.num_classes)
    channels_last = use_channels_last(cfg.channels_last, accelerator.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    flops = count_flops(model) if accelerator.is_main_process else None  # rank 0 only, before wrapping
    # The fused kernel (one op for all tensors) is the same Adam, measured ~10% faster per CPU step here.
    fused = accelerator.device.type in ("cpu", "cuda") and cfg.optim != "sgd"
    optimizer = create_optimizer(
        model.parameters(), cfg.optim, cfg.learning_rate, cfg.weight_decay, cfg.momentum, fused=fused
    )
    loaders = pipeline_loaders(cfg, splits, accelerator.device, channels_last)
    # One prepare for every path: Accelerate shards, evens out, reshuffles per epoch and places the batches.
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, *loaders)
    if len(train_loader) == 0:
        raise UserError(
            f"--dataloader_drop_last leaves no training batch: {len(splits.train_labels)} images per epoch "
            f"are fewer than one batch of {cfg.per_device_train_batch_size} per process; "
            "lower --per_device_train_batch_size or drop the flag."
        )
    # The schedule spans the run's optimizer steps, known once the loader is sharded. Prepared, it steps once per
    # optimizer step (skipped with the step under fp16 overflow) and save_state/load_state carry it.
    schedule_steps = scheduler_total_steps(len(train_loader), cfg.num_train_epochs, accelerator.num_processes)
    scheduler = create_scheduler(optimizer.optimizer, cfg.lr_scheduler_type, schedule_steps, cfg.warmup_ratio)
    position = position_settings(cfg, len(splits.train_labels), accelerator.num_processes)
    tracking = Tracking(accelerator)
    flow_every = cfg.flow_every_steps(len(train_loader) * cfg.num_train_epochs)
    flow = None
    if accelerator.is_main_process and flow_every:
        plain = accelerator.unwrap_model(model)
        flow = FlowReporter(plain, tracking, paths.flow, histograms=cfg.log_histograms, printer=tracking.printer)
    return Run(
        cfg, accelerator, paths, progress, splits, model, optimizer, accelerator.prepare(scheduler),
        train_loader, eval_loader, schedule_steps, position, flops, tracking, flow, flow_every,
        autocast_precision(accelerator),
    )  # fmt: skip
