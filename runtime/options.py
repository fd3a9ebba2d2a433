"""The click declarations ``loda-score`` and ``loda-score-ray`` share, declared once.

Each name is a decorator; a command stacks them in the order its ``--help`` lists them.
What differs between the two commands (output, format, backend choices, resume wording, their
own options) stays in each command's module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from loda.errors import first_line
from loda.preprocess import DEFAULT_MAX_PIXELS, LAYOUTS

__all__ = [
    "batch_size_option",
    "command",
    "crops_option",
    "device_option",
    "inputs_argument",
    "layout_option",
    "max_member_bytes_option",
    "max_pixels_option",
    "model_option",
    "seed_option",
    "settings_as_usage_errors",
    "threads_option",
]

F = TypeVar("F", bound=Callable[..., Any])


def command(epilog: str) -> Callable[[F], click.Command]:
    """A scoring command: ``-h`` / ``--help``, help 100 columns wide, ``epilog`` below it."""
    return click.command(
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        epilog=epilog,
    )


@contextmanager
def settings_as_usage_errors() -> Iterator[None]:
    """A job's SettingsError is a usage error of the command (click's usage line, exit 2)."""
    from .job import SettingsError  # the job's modules load when a command runs, not for --help

    try:
        yield
    except SettingsError as exc:
        raise click.UsageError(first_line(exc)) from None


inputs_argument = click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
model_option = click.option(
    "-m", "--model", "model", required=True, help="Artifact: .onnx, .engine or .safetensors."
)
device_option = click.option(
    "--device", default="auto", show_default=True, help="auto, cpu or cuda (backend-dependent)."
)
threads_option = click.option(
    "--threads", type=click.IntRange(1, 256), default=None, help="Inference threads (1-256)."
)
crops_option = click.option(
    "--crops", type=click.IntRange(1, 1000), default=None, help="Crops per image (15; 1-1000)."
)
layout_option = click.option(
    "--layout", type=click.Choice(LAYOUTS), default=None, help="Crop layout (grid)."
)
seed_option = click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of --layout random.",
)
batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Crops per inference call (default 60: four 15-crop images; at most an engine's "
    "profile maximum).",
)
max_pixels_option = click.option(
    "--max-pixels",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse images (decoded or resized) over this many pixels; 0: no limit.",
)
max_member_bytes_option = click.option(
    "--max-member-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse archive members over this many bytes, unread (default: 3 x --max-pixels "
    "+ 16 MiB, about 285 MB; 1 GiB with --max-pixels 0).",
)
