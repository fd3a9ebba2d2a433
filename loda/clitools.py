"""Shared command-line plumbing: user errors become one line on stderr and exit 1.

Exit codes (all LoDa commands): 0 success, 1 failure (bad input file, failed check),
2 usage error (click's own handling of bad options and arguments).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

import click

from .errors import LodaError, first_line
from .launch import missing_extra_message

__all__ = ["USER_ERRORS", "configure_logging", "parse_data_spec", "run"]

# Errors caused by the user's input. Anything else is a bug and keeps its traceback. OSError:
# a path the user named cannot be read or written (missing, a file where a folder must be,
# read-only, a full disk...).
USER_ERRORS: tuple[type[BaseException], ...] = (LodaError, OSError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .metrics import MetricError
    from .preprocess import ImageDecodeError

    return (*USER_ERRORS, ImageDecodeError, MetricError)


def configure_logging(level: int = logging.INFO, *, name: str = "loda", prefix: str = "") -> None:
    """Library modules log to ``logging.getLogger(__name__)``; a command shows those records on
    stderr as plain lines (the message only), as the library's progress lines always looked.

    ``name`` and ``prefix``: the records of one logger (and its children) as ``prefix`` +
    message instead, e.g. a job's progress lines under the command's name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + "%(message)s"))
    root = logging.getLogger(name)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def run(command: Callable[..., object], *, prog_name: str) -> None:
    """Run a click command; print user errors as ``prog: error: ...`` and exit 1."""
    configure_logging()
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


_SPEC_OPTIONS = re.compile(r"\?(\w+=[^&?]*(?:&\w+=[^&?]*)*)$")


def parse_data_spec(spec: str):
    """``KIND:ROOT[?KEY=VALUE&...]`` or ``file.csv`` -> (kind, Dataset); the options go to
    the reader (``koniq10k:ROOT?image_dir=512x384``, ``livec:ROOT?training_images=keep``)."""
    from .data.datasets import READERS, read_dataset

    kind, sep, root = spec.partition(":")
    if sep and kind in READERS:
        options = {}
        match = _SPEC_OPTIONS.search(root)
        if match:
            root = root[: match.start()]
            options = dict(pair.split("=", 1) for pair in match.group(1).split("&"))
        elif "?" in root and not Path(root).exists():
            raise click.BadParameter(
                f"{spec!r}: reader options are KIND:ROOT?KEY=VALUE[&KEY=VALUE]", param_hint="--data"
            )
        if not root:
            raise click.BadParameter(f"{spec!r}: no ROOT after {kind}:", param_hint="--data")
        return kind, read_dataset(kind, root, **options)
    if spec.endswith(".csv") or Path(spec).is_dir():
        return "csv", read_dataset("csv", spec)
    raise click.BadParameter(
        f"{spec!r}: use KIND:ROOT with KIND one of {', '.join(sorted(READERS))}, or a .csv file",
        param_hint="--data",
    )
