"""lab2-train and train_accelerate.py: flags are checked before torch is imported, so `--help` and flag mistakes
answer at once; the exceptions that end a run map to its exit codes here."""

from __future__ import annotations

import signal
import sys

from lab2.engine.distributed import is_peer_lost, launched_rank, peer_lost_message, prepare_process
from lab2.errors import EXIT_PEER_LOST, EXIT_USER_ERROR, Diverged, TrainingStopped, UserError, exit_with_user_error
from lab2.flags import launched_by_make, parse_args
from lab2.tracking.startup import redirect_unwritable_caches


def hear_ctrl_c_under_make() -> None:
    """Under `make train` the recipe makes the launcher ignore SIGINT, so that Ctrl-C leaves lab2 to save and say
    how to resume while the launcher and make wait; this process inherits the ignore and takes Ctrl-C back."""
    if launched_by_make() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    hear_ctrl_c_under_make()
    try:
        cfg = parse_args(argv)
        prepare_process()
        cache_note = redirect_unwritable_caches()  # before wandb or matplotlib is imported
        if cache_note and launched_rank() == 0:
            print(cache_note, flush=True)
        from lab2.engine.loop import run

        run(cfg)
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
