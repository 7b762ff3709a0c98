"""`lab2.train(**flags)`: the training command as a Python call, for notebooks and scripts.

    import lab2
    summary = lab2.train(data_dir="../shared/data/cifar10-mini", num_train_epochs=1, report_to="none")
    summary["final_eval_acc"]

On several processes from a notebook (the function must create the only Accelerator, so nothing in the
kernel may have trained before):

    from accelerate import notebook_launcher
    notebook_launcher(lambda: lab2.train(dataset="fake", output_dir="runs/two"), num_processes=2)

torch is imported only when `train` runs, so `import lab2` stays light.
"""

from __future__ import annotations

import json
import threading

from lab2.engine.distributed import launched_rank, prepare_process
from lab2.errors import Diverged, TrainingStopped, UserError
from lab2.flags import config_from_flags
from lab2.state.run_folder import RunPaths
from lab2.tracking.startup import redirect_unwritable_caches

# One training per process at a time: the Accelerator's state, the random seeds, torch's thread count and the
# signal handlers are process-wide, so a second call beside a running one would silently change both results.
_ONE_TRAINING_AT_A_TIME = threading.Lock()


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the run stopped without exporting the bad weights (exit code 4 on the command
    line)."""


def train(**flags) -> dict | None:
    """Train as `train_accelerate.py` would with these flags; return the run's summary (summary.json's content).

    Flags are lab2.config.TrainConfig's fields, with the command line's names and defaults:
    `train(dataset="fake", num_train_epochs=1)` is `train_accelerate.py --dataset fake --num_train_epochs 1`.
    Folder flags also take `pathlib.Path`; None means not given. The run writes the same files as the command
    line, under `output_dir` (default runs/<run_name>).

    Raises:
        ValueError: an unknown flag, a wrong type or an invalid value (the message names the flag), or any
            other input the command line rejects with exit code 2 (missing data, a finished output_dir, ...).
        KeyboardInterrupt: stopped by Ctrl-C / SIGINT / SIGTERM after saving a checkpoint (exit code 3);
            call again with resume_from_checkpoint="latest" and the same output_dir to continue.
        TrainingDiverged: the loss became NaN/inf (exit code 4).
        RuntimeError: another lab2.train call is running in this process (another thread); or, from
            torch.distributed, another process of a multi-process run was lost.

    In a multi-process run (notebook_launcher, accelerate launch) the main process returns the summary
    and the others return None: only rank 0 writes the run's files.
    """
    try:
        cfg = config_from_flags(**flags)
    except UserError as error:
        raise ValueError(str(error)) from None
    if not _ONE_TRAINING_AT_A_TIME.acquire(blocking=False):
        raise RuntimeError(
            "lab2.train is already running in this process (called from another thread); one process trains one "
            "run at a time, since the Accelerator, the random seeds and torch's threads are shared by the whole "
            "process. Wait for the first call to return, or start the second training in another process."
        )
    try:
        return _train(cfg)
    finally:
        _ONE_TRAINING_AT_A_TIME.release()


def _train(cfg) -> dict | None:
    prepare_process()
    cache_note = redirect_unwritable_caches()  # a read-only HOME: W&B and matplotlib caches in a temporary folder
    if cache_note and launched_rank() == 0:
        print(cache_note, flush=True)
    from lab2.engine.loop import run  # torch and the training stack load here, not at `import lab2`

    try:
        run(cfg)
    except UserError as error:
        raise ValueError(str(error)) from None
    except TrainingStopped:
        raise KeyboardInterrupt(
            f"training stopped after saving a checkpoint in {cfg.output_dir}; "
            "continue with resume_from_checkpoint='latest' and the same output_dir"
        ) from None
    except Diverged as diverged:
        raise TrainingDiverged(f"{diverged}; see the message above and {cfg.output_dir}") from None
    if launched_rank() != 0:
        return None
    return json.loads(RunPaths(cfg.output_dir).summary.read_text(encoding="utf-8"))
