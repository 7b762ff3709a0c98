"""The one exception type for mistakes a user can fix.

Entry points catch `UserError` and print its message as a single line with a
non-zero exit and no traceback; anything else is a bug and keeps its traceback.
"""

import sys

# Exit codes are part of the command-line contract (README, "Exit codes").
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 3
EXIT_DIVERGED = 4
EXIT_PEER_LOST = 5  # a distributed run lost another process (killed node, network, timeout)


class UserError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""


def exit_with_user_error(error: UserError, prog: str = "lab2") -> "NoReturn":  # noqa: F821
    """Print `error` as one line on stderr and exit with EXIT_USER_ERROR."""
    message = " ".join(str(error).split())  # one line, whatever the message held
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
