"""User-facing errors: the CLIs print these as one line and exit 1 (no traceback)."""

from __future__ import annotations

__all__ = [
    "BackboneWeightsError",
    "CheckpointError",
    "LodaError",
    "StateDictMismatch",
    "first_line",
    "one_line",
]


class LodaError(Exception):
    """A problem with the user's input (a file, an option), not an internal bug."""


class BackboneWeightsError(LodaError):
    """Pretrained backbone weights were asked for but are missing or unusable."""


class CheckpointError(LodaError):
    """A checkpoint file is missing, malformed, of another schema, or not a LoDa checkpoint."""


class StateDictMismatch(LodaError):
    """Tensors missing, unexpected or mis-shaped when loading weights into a module."""


def one_line(exc: BaseException, *, with_type: bool = False, limit: int | None = None) -> str:
    """The whole message with its whitespace collapsed onto one line (the type name when empty);
    ``with_type`` prefixes ``TypeName: ``; ``limit`` keeps the first ``limit`` characters of the
    message."""
    text = " ".join(str(exc).split())[:limit]
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if with_type else text


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
