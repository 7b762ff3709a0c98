"""Checked number types for every command's flags: type, range and finiteness, in one place.

Every numeric flag of every lab2 command (train, lab2-eval, lab2-predict,
lab2-flops) is parsed by `int_flag` / `float_flag`, so a bad value is refused
when it is parsed, with one line naming the flag, the value and the accepted
range. The same `check_int` / `check_float` also validate values that do not
come from a command line (`TrainConfig` built in Python, config.json).

Conventions: integers are plain ASCII digits with an optional sign (Python's
int() would also take "١٢", "1_000" and surrounding blanks); floats must be
finite (no inf/nan), ASCII, and inside [minimum, maximum] (the minimum is
exclusive where `above` is given instead).
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from lab2.errors import EXIT_USER_ERROR, UserError

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _range_text(minimum, maximum, above=None) -> str:
    low = f"> {above:g}" if above is not None else f">= {minimum:,}" if minimum is not None else ""
    high = f"<= {maximum:,}" if maximum is not None else ""
    return " and ".join(part for part in (low, high) if part)


def check_int(flag: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` (an int, or its ASCII text) as an int inside [minimum, maximum]; UserError naming `flag` otherwise."""
    if isinstance(value, str):
        if not _INT.fullmatch(value):
            raise UserError(f"{flag} must be a whole number written in ASCII digits, got {value!r}.")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{flag} must be a whole number, got {value!r}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise UserError(f"{flag} must be {_range_text(minimum, maximum)}, got {value:,}.")
    return value


def check_float(
    flag: str, value, minimum: float | None = None, maximum: float | None = None, above: float | None = None
) -> float:
    """`value` (a number, or its ASCII text) as a finite float inside the range; UserError naming `flag` otherwise."""
    if isinstance(value, str):
        if not _FLOAT.fullmatch(value):
            raise UserError(f"{flag} must be a finite decimal number, got {value!r}.")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{flag} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value}.")
    if (
        (above is not None and value <= above)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        raise UserError(f"{flag} must be {_range_text(minimum, maximum, above)}, got {value:g}.")
    return value


class _FlagType:
    """An argparse `type=` callable that checks through check_int/check_float and names the flag."""

    def __init__(self, flag: str, check, **limits):
        self.flag, self.check, self.limits = flag, check, limits
        self.__name__ = "int" if check is check_int else "float"  # argparse names the type in its messages

    def __call__(self, text: str):
        try:
            return self.check(self.flag, text, **self.limits)
        except UserError as error:
            raise argparse.ArgumentTypeError(str(error)) from None


def int_flag(flag: str, minimum: int | None = None, maximum: int | None = None) -> _FlagType:
    return _FlagType(flag, check_int, minimum=minimum, maximum=maximum)


def float_flag(
    flag: str, minimum: float | None = None, maximum: float | None = None, above: float | None = None
) -> _FlagType:
    return _FlagType(flag, check_float, minimum=minimum, maximum=maximum, above=above)


def checked_text(check) -> _FlagType:
    """An argparse type for a text flag checked by `check(text)`, which raises UserError naming the flag."""
    flag_type = _FlagType("", lambda _flag, text: check(text))
    flag_type.__name__ = "str"
    return flag_type


class Parser(argparse.ArgumentParser):
    """argparse with lab2's bad-input contract: one `prog: error: ...` line and exit 2, no usage block.

    Our checked types already name the flag in their message, so argparse's
    "argument --x:" prefix is dropped for them.
    """

    def error(self, message: str):
        message = re.sub(r"^argument (--\w+): (\1 )", r"\2", message)
        print(f"{self.prog}: error: {' '.join(message.split())} (see --help)", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
