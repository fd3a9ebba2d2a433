"""Shared command-line plumbing: user errors become one line on stderr and exit 1.

Exit codes (all LoDa commands): 0 success, 1 failure (bad input file, failed check),
2 usage error (click's own handling of bad options and arguments).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from .errors import LodaError, first_line
from .launch import missing_extra_message

__all__ = ["USER_ERRORS", "run"]

# Errors caused by the user's input. Anything else is a bug and keeps its traceback. OSError:
# a path the user named cannot be read or written (missing, a file where a folder must be,
# read-only, a full disk...).
USER_ERRORS: tuple[type[BaseException], ...] = (LodaError, OSError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .metrics import MetricError
    from .preprocess import ImageDecodeError

    return (*USER_ERRORS, ImageDecodeError, MetricError)


def run(command: Callable[..., object], *, prog_name: str) -> None:
    """Run a click command; print user errors as ``prog: error: ...`` and exit 1."""
    try:
        command.main(prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # usage errors: click's message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except _user_errors() as exc:
        click.echo(f"{prog_name}: error: {_message(exc)}", err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:  # an optional dependency imported inside a command
        message = missing_extra_message(exc)
        if message is None:
            raise
        click.echo(f"{prog_name}: error: {message}", err=True)
        sys.exit(1)
    sys.exit(0)


def _message(exc: BaseException) -> str:
    """One line; an OSError names its path and the system's reason ("x/y.onnx: Not a
    directory") rather than Python's "[Errno 20] ..." form."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"cannot use {exc.filename}: {exc.strerror}"
    return first_line(exc)
