"""`run(cfg)`: one training run from start to end, around the Trainer: the output folder and its lock, the
Accelerator, the stop signals, and the one place where a failure becomes what the user is told."""

from __future__ import annotations

from lab2.config.train_config import TrainConfig
from lab2.engine.run_setup import (
    StopRequest,
    check_output_dir,
    create_accelerator,
    discard_unused_run_folder,
    ensure_cpu_threads,
    prepare_output_dir,
    warn_slow_bf16,
)
from lab2.engine.trainer import Trainer
from lab2.errors import Diverged, TrainingStopped, UserError, is_disk_full
from lab2.state.checkpoint import disk_full_error
from lab2.state.run_folder import RunPaths


def run(cfg: TrainConfig) -> None:
    """Train as `cfg` says. Raises TrainingStopped (a signal; checkpoint saved), Diverged (NaN/inf loss) or a
    UserError; the command line (lab2.cli.train) maps them to exit codes, lab2.train to its exceptions.

    A full disk anywhere in the run becomes one DiskFull error (exit code 6) naming the
    last good checkpoint; a signal during the final files is reported once they are written.
    """
    paths = RunPaths(cfg.output_dir)
    check_output_dir(cfg, paths)
    # A start that fails before training removes the empty folders it made (the run folder, runs/ above it).
    created = [p for p in (paths.root, *paths.root.parents) if not p.exists()]
    accelerator = create_accelerator(cfg)
    trainer = lock = None
    stop = StopRequest()
    with stop.installed():  # also around closing the trackers: a signal there is still heard
        try:
            ensure_cpu_threads(accelerator)
            warn_slow_bf16(accelerator)
            lock = prepare_output_dir(accelerator, cfg, paths)  # held until the last file is written
            trainer = Trainer(cfg, accelerator, paths, stop)
            if cfg.resume_from_checkpoint:
                trainer.resume()
            trainer.start()
            trainer.fit()
            if stop.finished_note():
                accelerator.print(stop.finished_note())
        except UserError:
            if trainer is None and created and accelerator.is_main_process:
                discard_unused_run_folder(paths.root, created)
            raise
        except (TrainingStopped, Diverged):
            raise
        except Exception as exc:
            if is_disk_full(exc, paths.root):
                raise disk_full_error(exc, getattr(exc, "filename", None) or paths.root, paths.checkpoints) from None
            raise
        finally:
            try:
                if trainer is not None:
                    if trainer.flow is not None:  # stopped early: still log the images already rendering
                        trainer.flow.close(trainer.progress.global_step)
                    trainer.tracking.finish()
                else:
                    accelerator.end_training()  # still tear down the process group
            finally:
                if lock is not None:  # a notebook's next run in this folder must not find it still held
                    lock.release()
