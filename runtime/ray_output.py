"""The output folder of ``loda-score-ray``: complete-or-hidden part files and ``_SUCCESS``.

A part is written under a hidden temporary name (``.part-NNNNN-RUN.EXT.tmp``), fsynced and
renamed to ``part-NNNNN-RUN.EXT`` when complete, so a visible part file is never partial; the
empty ``_SUCCESS`` is written last by the run, only when every input has its row. Parquet,
CSV and JSONL (``loda-score``'s encodings, through its ``ResultWriter``) are read back alike
for ``--resume``. The folder is local (or a mounted one): renames are what make parts atomic.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loda.errors import LodaError

from .inputs import normalise_key
from .output import COLUMNS, ResultRow, ResultWriter

__all__ = [
    "OUTPUT_FORMATS",
    "SUCCESS_NAME",
    "PartWriter",
    "RayJobError",
    "fsync_dir",
    "parquet_text",
    "prepare_directory",
    "read_output",
]

OUTPUT_FORMATS: tuple[str, ...] = ("parquet", "csv", "jsonl")
SUCCESS_NAME = "_SUCCESS"
_SUFFIX = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
_TMP_PREFIX = ".part-"
_PART_PREFIX = "part-"


class RayJobError(LodaError):
    """The Ray run cannot start or did not complete; one line."""


def parquet_text(text: str) -> str:
    """Parquet strings are UTF-8: a file name that is not (lone surrogates) keeps its bytes as
    ``\\xNN`` escapes (the same rule for writing and for ``--resume``)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parquet_schema() -> Any:
    """``loda-score``'s columns, in its order, with Parquet types (missing values are nulls)."""
    import pyarrow as pa

    types = {"score": pa.float64(), "spread": pa.float64(), "mos": pa.float64()}
    types |= {"width": pa.int64(), "height": pa.int64()}
    return pa.schema([(name, types.get(name, pa.string())) for name in COLUMNS])


def _parts(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.name.startswith(_PART_PREFIX) and p.suffix in _SUFFIX.values() and p.is_file()
    )


def _temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(_TMP_PREFIX)]


def read_output(directory: str | os.PathLike) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{source: (status, row)}`` of every complete part file in ``directory`` (any format).

    A source in two parts (which a correct run never writes) raises ``RayJobError``.
    """
    directory = Path(directory)
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    for part in _parts(directory):
        for row in _part_rows(part):
            if row["source"] in rows:
                raise RayJobError(f"{row['source']!r} has two rows in {directory}")
            rows[row["source"]] = (row["status"], row)
    return rows


def _part_rows(part: Path) -> Iterator[dict[str, Any]]:
    if part.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(part).to_pylist()
        return
    if part.suffix == ".jsonl":
        with open(part, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)
        return
    with open(part, encoding="utf-8", errors="surrogateescape", newline="") as f:
        yield from csv.DictReader(f)


class PartWriter:
    """Rows to rolling part files: ``.part-NNNNN-RUN.EXT.tmp`` renamed to ``part-NNNNN-RUN.EXT``
    when complete, so a visible part file is never partial."""

    def __init__(self, directory: Path, fmt: str, rows_per_file: int, seconds: float) -> None:
        self.directory = directory
        self.fmt = fmt
        self.rows_per_file = rows_per_file
        self.seconds = seconds
        self.run = uuid.uuid4().hex[:8]
        self.index = len(_parts(directory))
        self.parts: list[Path] = []
        self._writer: Any = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._rows = 0
        self._opened = 0.0
        self._buffer: list[dict[str, Any]] = []

    def _open(self) -> None:
        name = f"{self.index:05d}-{self.run}{_SUFFIX[self.fmt]}"
        self.index += 1
        self._final = self.directory / f"{_PART_PREFIX}{name}"
        self._tmp = self.directory / f"{_TMP_PREFIX}{name}.tmp"
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self._tmp, parquet_schema())
        else:
            self._writer = ResultWriter(self._tmp, self.fmt, fsync_every=1 << 30)
        self._rows = 0
        self._opened = time.monotonic()

    def write(self, row: ResultRow) -> None:
        if self._writer is None:
            self._open()
        if self.fmt == "parquet":
            self._buffer.append(
                {
                    "source": parquet_text(row.source),
                    "score": row.score,
                    "spread": row.spread,
                    "mos": row.mos,
                    "width": row.width,
                    "height": row.height,
                    "status": row.status,
                    "error": parquet_text(row.error),
                }
            )
            if len(self._buffer) >= 4096:
                self._flush_buffer()
        else:
            self._writer.write(row)
        self._rows += 1
        if self._rows >= self.rows_per_file or time.monotonic() - self._opened >= self.seconds:
            self.close_part()

    def _flush_buffer(self) -> None:
        if self._buffer:
            import pyarrow as pa

            self._writer.write_table(pa.Table.from_pylist(self._buffer, parquet_schema()))
            self._buffer = []

    def close_part(self) -> None:
        """Finish the current part: write, fsync, rename to its final name."""
        if self._writer is None:
            return
        if self.fmt == "parquet":
            self._flush_buffer()
        self._writer.close()
        self._writer = None
        assert self._tmp is not None and self._final is not None
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, self._final)
        fsync_dir(self.directory)
        self.parts.append(self._final)

    def abandon(self) -> None:
        """A failed run: close the current temporary file and leave it as it is (hidden)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def prepare_directory(out: Path, *, resume: bool, overwrite: bool) -> dict[str, str]:
    """Check / clean the output directory; return ``{normalised source: status}`` to resume."""
    if out.exists() and not out.is_dir():
        raise RayJobError(f"--output {out} is not a directory (loda-score-ray writes a folder)")
    out.mkdir(parents=True, exist_ok=True)
    ours = _parts(out) + _temporaries(out) + [p for p in [out / SUCCESS_NAME] if p.exists()]
    if ours and not (resume or overwrite):
        raise RayJobError(
            f"--output {out} already holds results: pass --resume to continue or --overwrite"
        )
    done: dict[str, str] = {}
    if overwrite:
        for p in ours:
            p.unlink()
    elif resume:
        (out / SUCCESS_NAME).unlink(missing_ok=True)
        for p in _temporaries(out):  # parts of a run that did not finish them
            p.unlink()
        for source, (status, _row) in read_output(out).items():
            done[normalise_key(source)] = status
    return done
