"""Atomic file writes: a file is either the previous one or the whole new one, never half."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["atomic_path", "check_not_an_input", "write_bytes_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` (``NAME.tmp``) to write; renamed onto ``path`` when the
    block succeeds, removed when it fails."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> int:
    """Write ``data`` to ``path`` atomically; the number of bytes written."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def check_not_an_input(
    output: str | os.PathLike, inputs: Iterable[str | os.PathLike | object], what: str
) -> None:
    """Raise :class:`loda.errors.LodaError` when ``output`` is one of the existing files in
    ``inputs`` (non-path items are ignored): a run must never replace what it reads.

    Files are compared by identity (device and inode: a link or another spelling is caught);
    ``inputs`` may be a long lazy stream (every file of a folder walk): one ``stat`` each.
    """
    import stat

    from .errors import LodaError

    try:
        out = os.stat(output)
    except OSError:
        return
    if not stat.S_ISREG(out.st_mode):
        return
    for item in inputs:
        if isinstance(item, str | os.PathLike):
            with contextlib.suppress(OSError):
                st = os.stat(item)
                if (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
                    raise LodaError(f"output {output} would overwrite {what} {os.fspath(item)}")
