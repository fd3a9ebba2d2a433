"""The output folder of ``loda-score-ray``: complete-or-hidden part files and ``_SUCCESS``.

A part is written under a hidden temporary name (``.part-NNNNN-RUN.EXT.tmp``) and given its
final name ``part-NNNNN-RUN.EXT`` only when complete, so a visible part file is never partial;
the empty ``_SUCCESS`` is written last by the run, only when every input has its row. Parquet,
CSV and JSONL (``loda-score``'s encodings, through its ``ResultWriter``) are read back alike
for ``--resume``.

The folder is local (a ``file://`` URI counts as local) or a prefix on a store pyarrow writes
(``s3://``, ``gs://``, ...: :class:`OutputFolder`). Locally the part is fsynced and renamed. On
a store it is written to a local temporary file, uploaded under the hidden name and moved to the
final one: on S3 and GCS an object becomes visible only when its upload (or copy) completes, so
a reader never sees a partial part there either.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from loda.errors import LodaError

from .inputs import normalise_key
from .output import COLUMNS, ResultRow, ResultWriter
from .ray_fs import UriFiles, is_uri

__all__ = [
    "OUTPUT_FORMATS",
    "SUCCESS_NAME",
    "OutputFolder",
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


def _is_part(name: str) -> bool:
    return name.startswith(_PART_PREFIX) and os.path.splitext(name)[1] in _SUFFIX.values()


class OutputFolder:
    """The OUTPUT folder, local or on a store: its file names, reading, publishing parts.

    ``files`` resolves a URI to its pyarrow filesystem (``RayScoreOptions.filesystem`` serves
    OUTPUT as it serves the URI INPUTs).
    """

    def __init__(self, output: str | os.PathLike, files: UriFiles | None = None) -> None:
        spec = os.fspath(output)
        self.text = spec
        self.local: Path | None = None
        self.fs: Any = None
        self.path = ""
        if is_uri(spec) and urlsplit(spec).scheme.lower() != "file":
            self.fs, self.path = (files or UriFiles()).resolve(spec)
        else:
            self.local = Path(urlsplit(spec).path if is_uri(spec) else spec)
        self._staging: Path | None = None

    def __str__(self) -> str:
        return self.text

    def _key(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def where(self, name: str) -> str:
        """A file's path, or its URI on a store."""
        if self.local is not None:
            return str(self.local / name)
        return f"{self.text.rstrip('/')}/{name}"

    def create(self) -> None:
        """Make the folder (``RayJobError`` if OUTPUT is a file, or the store refuses)."""
        try:
            if self.local is not None:
                if self.local.exists() and not self.local.is_dir():
                    raise RayJobError(
                        f"--output {self} is not a directory (loda-score-ray writes a folder)"
                    )
                self.local.mkdir(parents=True, exist_ok=True)
                return
            from pyarrow.fs import FileType

            if self.fs.get_file_info(self.path).type == FileType.File:
                raise RayJobError(f"--output {self} is an object, not a folder (prefix)")
            self.fs.create_dir(self.path)
        except OSError as exc:
            raise RayJobError(f"cannot create --output {self}: {exc}") from None

    def names(self) -> list[str]:
        """The names of the files directly in the folder (none if it does not exist)."""
        if self.local is not None:
            if not self.local.is_dir():
                return []
            return sorted(p.name for p in self.local.iterdir() if p.is_file())
        from pyarrow.fs import FileSelector, FileType

        infos = self.fs.get_file_info(FileSelector(self.path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == FileType.File)

    def parts(self, names: list[str] | None = None) -> list[str]:
        """The complete part files among ``names`` (default: the folder's, listed now)."""
        return [n for n in (self.names() if names is None else names) if _is_part(n)]

    def temporaries(self, names: list[str] | None = None) -> list[str]:
        """The hidden unfinished parts among ``names`` (default: the folder's, listed now)."""
        return [n for n in (self.names() if names is None else names) if n.startswith(_TMP_PREFIX)]

    def delete(self, name: str) -> None:
        if self.local is not None:
            (self.local / name).unlink(missing_ok=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self._key(name))

    def open_text(self, name: str, errors: str = "strict") -> IO[str]:
        if self.local is not None:
            return open(self.local / name, encoding="utf-8", errors=errors, newline="")
        raw = self.fs.open_input_stream(self._key(name))
        return io.TextIOWrapper(raw, encoding="utf-8", errors=errors, newline="")

    def read_table(self, name: str) -> Any:
        import pyarrow.parquet as pq

        if self.local is not None:
            return pq.read_table(self.local / name)
        return pq.read_table(self._key(name), filesystem=self.fs)

    def staging(self) -> Path:
        """Where part files are written before they are complete: the folder itself when local,
        else a local temporary folder (removed by ``close``)."""
        if self.local is not None:
            return self.local
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="loda-ray-parts-"))
        return self._staging

    def publish(self, tmp: Path, name: str) -> str:
        """A complete part (``tmp``, in ``staging()``) under its final ``name``; its location."""
        if self.local is not None:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.local / name)
            fsync_dir(self.local)
            return self.where(name)
        hidden = self._key(tmp.name)
        try:
            with open(tmp, "rb") as src, self.fs.open_output_stream(hidden) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            self.fs.move(hidden, self._key(name))
        except OSError as exc:
            raise RayJobError(f"cannot write {self.where(name)}: {exc}") from None
        tmp.unlink()
        return self.where(name)

    def write_empty(self, name: str) -> None:
        if self.local is not None:
            (self.local / name).write_bytes(b"")
            fsync_dir(self.local)
            return
        with self.fs.open_output_stream(self._key(name)):
            pass

    def close(self) -> None:
        """Remove the local staging folder of a store output (a failed run's unfinished part
        is never uploaded: nothing partial reaches the store)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def read_output(
    directory: str | os.PathLike | OutputFolder, files: UriFiles | None = None
) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{source: (status, row)}`` of every complete part file in ``directory`` (any format;
    a local folder or a store prefix, see :class:`OutputFolder`).

    A source in two parts (which a correct run never writes) raises ``RayJobError``.
    """
    folder = directory if isinstance(directory, OutputFolder) else OutputFolder(directory, files)
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    for part in folder.parts():
        for row in _part_rows(folder, part):
            if row["source"] in rows:
                raise RayJobError(f"{row['source']!r} has two rows in {folder}")
            rows[row["source"]] = (row["status"], row)
    return rows


def _part_rows(folder: OutputFolder, part: str) -> Iterator[dict[str, Any]]:
    if part.endswith(".parquet"):
        yield from folder.read_table(part).to_pylist()
        return
    if part.endswith(".jsonl"):
        with folder.open_text(part) as f:
            for line in f:
                yield json.loads(line)
        return
    with folder.open_text(part, errors="surrogateescape") as f:
        yield from csv.DictReader(f)


class PartWriter:
    """Rows to rolling part files: ``.part-NNNNN-RUN.EXT.tmp`` published as
    ``part-NNNNN-RUN.EXT`` when complete, so a visible part file is never partial."""

    def __init__(self, folder: OutputFolder, fmt: str, rows_per_file: int, seconds: float) -> None:
        self.folder = folder
        self.fmt = fmt
        self.rows_per_file = rows_per_file
        self.seconds = seconds
        self.run = uuid.uuid4().hex[:8]
        self.index = len(folder.parts())
        self.parts: list[str] = []
        self._writer: Any = None
        self._tmp: Path | None = None
        self._final: str | None = None
        self._rows = 0
        self._opened = 0.0
        self._buffer: list[dict[str, Any]] = []

    def _open(self) -> None:
        name = f"{self.index:05d}-{self.run}{_SUFFIX[self.fmt]}"
        self.index += 1
        self._final = f"{_PART_PREFIX}{name}"
        self._tmp = self.folder.staging() / f"{_TMP_PREFIX}{name}.tmp"
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
        self.parts.append(self.folder.publish(self._tmp, self._final))

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


def prepare_directory(out: OutputFolder, *, resume: bool, overwrite: bool) -> dict[str, str]:
    """Check / clean the output folder; return ``{normalised source: status}`` to resume."""
    out.create()
    names = out.names()  # listed once (on a store, each listing is a request)
    temporaries = out.temporaries(names)
    ours = out.parts(names) + temporaries + [n for n in names if n == SUCCESS_NAME]
    if ours and not (resume or overwrite):
        raise RayJobError(
            f"--output {out} already holds results: pass --resume to continue or --overwrite"
        )
    done: dict[str, str] = {}
    if overwrite:
        for name in ours:
            out.delete(name)
    elif resume:
        out.delete(SUCCESS_NAME)
        for name in temporaries:  # parts of a run that did not finish them
            out.delete(name)
        for source, (status, _row) in read_output(out).items():
            done[normalise_key(source)] = status
    return done
