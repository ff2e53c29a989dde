"""What counts as a user error: a problem with what was given (a file, a field, a value, a checkpoint), as opposed
to a bug. The command line prints a user error as one line, ``revtal <command>: error: ...``, and exits with 2; the
traceback appears only with ``--debug`` or ``REVTAL_DEBUG=1``."""

from __future__ import annotations

import os


class UserError(Exception):
    """Raised (or mixed into a library error) for bad input that the user can fix; the message says how."""


# ValueError covers ConfigError, AnnotationError and CheckpointMismatchError; the OS errors are bad paths
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError,
)


def debug_requested() -> bool:
    return os.environ.get("REVTAL_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def one_line(err: BaseException, debug: bool = False) -> str:
    """The first line of an error message; a longer message says where the rest is."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    if len(lines) > 1 and not debug:
        return f"{lines[0]} (details: rerun with --debug)"
    return lines[0]
