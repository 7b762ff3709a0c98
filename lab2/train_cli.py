"""The training command's entry point (train_accelerate.py, lab2-train).

Flags are parsed and checked before torch is imported, so `--help` and flag
mistakes answer at once; only a valid configuration loads the training stack.
"""

from __future__ import annotations

import os
import sys

from lab2.config import parse_args
from lab2.errors import EXIT_USER_ERROR, UserError, exit_with_user_error


def _is_rank_zero() -> bool:
    # Under torchrun every rank hits the same user error: one line is enough.
    return int(os.environ.get("RANK", "0")) == 0


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = parse_args(argv)
        from lab2.training import run

        code = run(cfg)
    except UserError as error:
        if _is_rank_zero():
            exit_with_user_error(error)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(code)


if __name__ == "__main__":
    main()
