"""Training as a Python call, `lab2.train(**flags)`, and as a command, `main()` (lab2-train, train_accelerate.py);
docs/notebooks.md shows the call, on one process and on several (notebook_launcher).

The flags are checked before torch is imported, so `import lab2`, `--help` and flag mistakes answer at once. The
exceptions that end a run (lab2.errors) become exit codes on the command line and Python exceptions here.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from lab2.engine.distributed import is_peer_lost, launched_rank, peer_lost_message, prepare_process
from lab2.errors import (
    EXIT_PEER_LOST,
    EXIT_USER_ERROR,
    Diverged,
    SecondInterrupt,
    TrainingStopped,
    UserError,
    exit_with_user_error,
)
from lab2.flags import config_from_flags, launched_by_make, parse_args, resume_advice
from lab2.state.run_folder import RunPaths
from lab2.tracking.startup import redirect_unwritable_caches

# One training per process at a time: the Accelerator's state, the random seeds, torch's thread count and the
# signal handlers are process-wide, so a second call beside a running one would silently change both results.
_ONE_TRAINING_AT_A_TIME = threading.Lock()


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf: the run stopped without exporting the bad weights (lab2-train's exit code 4)."""


def _run(cfg) -> None:
    prepare_process()
    cache_note = redirect_unwritable_caches()  # before wandb or matplotlib is imported
    if cache_note and launched_rank() == 0:
        print(cache_note, flush=True)
    from lab2.engine.loop import run  # torch and the training stack load here, not at `import lab2`

    run(cfg)


def train(**flags) -> dict | None:
    """Train as `train_accelerate.py` would with these flags; return the run's summary (summary.json's content).

    Flags are lab2.config.TrainConfig's fields, with the command line's names and defaults (`dataset="fake"` is
    `--dataset fake`); folders may be `pathlib.Path`s, None means not given. It writes what the command line does.

    Raises:
        ValueError: an unknown flag, a wrong type or an invalid value (the message names the flag), or any
            other input the command line rejects with exit code 2 (missing data, a finished output_dir, ...).
        KeyboardInterrupt: stopped by Ctrl-C / SIGINT / SIGTERM after saving a checkpoint (exit code 3);
            call again with resume_from_checkpoint="latest" and the same output_dir to continue.
        TrainingDiverged: the loss became NaN/inf (exit code 4).
        RuntimeError: another lab2.train call is running in this process (another thread); or, from
            torch.distributed, another process of a multi-process run was lost.

    On several processes (notebook_launcher, accelerate launch) only rank 0 writes the run's files and returns the
    summary; the others return None.
    """
    try:
        cfg = config_from_flags(**flags)
        if not _ONE_TRAINING_AT_A_TIME.acquire(blocking=False):
            raise RuntimeError(
                "lab2.train is already running in this process (called from another thread); one process trains "
                "one run at a time, since the Accelerator, the random seeds and torch's threads are shared by the "
                "whole process. Wait for the first call to return, or start the second training in another process."
            )
        try:
            _run(cfg)
        finally:
            _ONE_TRAINING_AT_A_TIME.release()
    except UserError as error:
        raise ValueError(str(error)) from None
    except TrainingStopped:
        raise KeyboardInterrupt(
            f"training stopped after saving a checkpoint in {cfg.output_dir}; "
            "continue with resume_from_checkpoint='latest' and the same output_dir"
        ) from None
    except Diverged as diverged:
        raise TrainingDiverged(f"{diverged}; see the message above and {cfg.output_dir}") from None
    return json.loads(RunPaths(cfg.output_dir).summary.read_text(encoding="utf-8")) if launched_rank() == 0 else None


def stopped_at_once(output_dir) -> str:
    """What a second Ctrl-C leaves: the step or checkpoint it cut short is lost, the last complete checkpoint not."""
    from lab2.state.checkpoint import latest_good_checkpoint

    latest = latest_good_checkpoint(RunPaths(output_dir).checkpoints)
    if latest is None:
        return "stopped at once by a second Ctrl-C, before any checkpoint was complete: run the command again."
    return f"stopped at once by a second Ctrl-C; the last complete checkpoint is {latest}: " + resume_advice(output_dir)


def main(argv: list[str] | None = None) -> None:
    """lab2-train and train_accelerate.py; exit codes as docs/resume.md lists them."""
    # Under `make train` the recipe makes the launcher ignore SIGINT, so that Ctrl-C leaves lab2 to save and say
    # how to resume while the launcher and make wait; this process inherits the ignore and takes Ctrl-C back.
    if launched_by_make() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cfg = parse_args(argv)
        _run(cfg)
    except KeyboardInterrupt as interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # another Ctrl-C, while the line below is written, is no traceback
        if launched_rank() == 0:
            # A plain KeyboardInterrupt came before the stop's handlers were in place: nothing was trained, and
            # torch's import may have been cut short, so that line imports nothing. SecondInterrupt: see StopRequest.
            if isinstance(interrupt, SecondInterrupt):
                line = stopped_at_once(cfg.output_dir)
            else:
                line = "stopped by Ctrl-C during start-up; nothing was trained."
            print(f"lab2: {line}", file=sys.stderr, flush=True)
        sys.exit(130)  # as a shell reports a process that Ctrl-C ended
    except UserError as error:
        # Under a launcher every rank hits the same user error: one line is enough.
        if launched_rank() == 0:
            exit_with_user_error(error)
        sys.exit(EXIT_USER_ERROR)
    except (TrainingStopped, Diverged) as ended:  # the loop already said where it stopped and what to do
        sys.exit(ended.exit_code)
    except RuntimeError as error:
        if not is_peer_lost(error):
            raise
        # Every survivor says so: on several machines each node's log is read on its own.
        print(f"lab2: error: {peer_lost_message(error, cfg.output_dir)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PEER_LOST)
    sys.exit(0)


if __name__ == "__main__":
    main()
