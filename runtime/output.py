"""The ``loda-score`` result file: one row per input, CSV or JSON Lines, crash-safe (torch-free).

Columns (``COLUMNS``, in this order): ``source`` (the row key, see ``loda.runtime.inputs``),
``score`` (mean of the crop scores), ``spread`` (population std of the crop scores),
``mos`` (calibrated score on the dataset's MOS scale; empty without a calibration), ``width`` /
``height`` (decoded size before resizing), ``status`` (``ok`` or ``error``) and ``error`` (one
line, empty when ok).

Formats
-------
* ``csv``: ``csv`` module, default dialect (RFC 4180: ``\\r\\n`` line ends, a field holding a
  comma, quote, ``\\r`` or ``\\n`` quoted), header line first (written only when the file is new
  or empty). A missing value is an empty field. Floats are written with
  ``repr(float(x))``, the shortest text that reads back to the same double. Names with commas,
  quotes or newlines are quoted by the ``csv`` module; read the file with ``newline=""``.
* ``jsonl``: one JSON object per line with every column as a key, ``null`` for a missing value.
  JSON has no NaN / infinity: a non-finite number is written as ``null``.

Encoding: UTF-8. File names that are not valid UTF-8 reach us as ``os.fsdecode`` strings (bytes
``0x80``-``0xff`` as lone surrogates ``U+DC80``-``U+DCFF``). In CSV they are written back as the
original bytes (``errors="surrogateescape"``), so the ``source`` field holds exactly the bytes of
the file name, like ``ls`` prints them; in JSONL every lone surrogate is written as a ``\\udcXX``
escape, so the file stays valid UTF-8 and ``json.loads`` returns the same string.
``read_done`` reads both back to the very strings that were written, so ``--resume`` recognises
such names. (Any other lone surrogate, which ``os.fsdecode`` never produces, is written to CSV as
the text ``\\udXXX``.)

Crash safety: ``ResultWriter`` flushes and ``os.fsync``-s the file every ``fsync_every`` rows or
``fsync_seconds`` seconds, and on ``close``. After a kill the file can end with a partial
record; ``read_done`` ignores it and ``ResultWriter(append=True)`` first cuts the file back to the
end of its last complete record (``repair_tail``), so a resumed run leaves neither a corrupt line
nor a duplicate. Before anything is cut the file is checked to be a result file of this layout
(CSV header == ``COLUMNS``; first JSONL object has exactly the ``COLUMNS`` keys); otherwise
``OutputError`` and the file is left untouched.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from loda.errors import LodaError

__all__ = [
    "COLUMNS",
    "FORMATS",
    "OutputError",
    "ResultRow",
    "ResultWriter",
    "format_for",
    "read_done",
    "read_statuses",
    "repair_tail",
    "run_record_path",
    "write_run_record",
]

FORMATS: tuple[str, ...] = ("csv", "jsonl")
COLUMNS: tuple[str, ...] = (
    "source",
    "score",
    "spread",
    "mos",
    "width",
    "height",
    "status",
    "error",
)
STATUSES: tuple[str, ...] = ("ok", "error")

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
_CSV_HEADER = (",".join(COLUMNS) + "\r\n").encode("ascii")
_JSONL_START = b'{"source": '
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNESCAPABLE = re.compile("[\ud800-\udc7f\udd00-\udfff]")  # lone surrogates outside U+DC80-DCFF

PathLike = str | os.PathLike


class OutputError(LodaError):
    """The result file cannot be written or resumed; the message is one line."""


@dataclass
class ResultRow:
    """One result: ``status="ok"`` with the scores, or ``status="error"`` with a one-line error."""

    source: str
    score: float | None = None
    spread: float | None = None
    mos: float | None = None
    width: int | None = None
    height: int | None = None
    status: str = "ok"
    error: str = ""

    @classmethod
    def from_result(cls, result: Any) -> ResultRow:
        """The row of a :class:`loda.runtime.scorer.ImageScore`."""
        return cls(
            source=result.source,
            score=result.score,
            spread=result.spread,
            mos=result.mos,
            width=result.width,
            height=result.height,
            status="ok" if result.ok else "error",
            error=result.error or "",
        )


def format_for(path: PathLike | None, fmt: str | None) -> str:
    """The output format: ``fmt`` if given, else jsonl for ``.jsonl`` / ``.ndjson``, else csv."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise OutputError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    if path is None or str(path) == "-":
        return "csv"
    return "jsonl" if str(path).lower().endswith((".jsonl", ".ndjson")) else "csv"


# --------------------------------------------------------------------------------------------
# Encoding one row
# --------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.splitlines()) if text else ""


def _csv_text(text: str) -> str:
    """Text the surrogateescape file encoding can write (see the module docstring)."""
    if text.isascii() or not _UNESCAPABLE.search(text):
        return text
    return _UNESCAPABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _csv_float(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _csv_int(value: int | None) -> str:
    return "" if value is None else str(int(value))


def _json_float(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _check_row(row: ResultRow) -> None:
    if row.status not in STATUSES:
        raise ValueError(f"ResultRow.status must be one of {STATUSES}, got {row.status!r}")


def _csv_fields(row: ResultRow) -> list[str]:
    return [
        _csv_text(row.source),
        _csv_float(row.score),
        _csv_float(row.spread),
        _csv_float(row.mos),
        _csv_int(row.width),
        _csv_int(row.height),
        row.status,
        _csv_text(_one_line(row.error)),
    ]


def _json_line(row: ResultRow) -> str:
    obj = {
        "source": row.source,
        "score": _json_float(row.score),
        "spread": _json_float(row.spread),
        "mos": _json_float(row.mos),
        "width": None if row.width is None else int(row.width),
        "height": None if row.height is None else int(row.height),
        "status": row.status,
        "error": _one_line(row.error),
    }
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


class ResultWriter:
    """Write ``ResultRow``-s to a file (or stdout for ``None`` / ``"-"``) as they come.

    Rows are buffered and made durable (flush + ``os.fsync``) every ``fsync_every`` rows or
    when ``fsync_seconds`` have passed since the last sync, and on ``close``. ``append=True``
    continues an existing result file after repairing its tail (see the module docstring).
    stdout is flushed on the same cadence, never fsync-ed.
    """

    def __init__(
        self,
        path: PathLike | None,
        fmt: str = "csv",
        *,
        append: bool = False,
        fsync_every: int = 64,
        fsync_seconds: float = 2.0,
    ) -> None:
        if fmt not in FORMATS:
            raise OutputError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if fsync_every < 1:
            raise ValueError(f"fsync_every must be >= 1, got {fsync_every}")
        if fsync_seconds < 0:
            raise ValueError(f"fsync_seconds must be >= 0, got {fsync_seconds}")
        self.fmt = fmt
        self.fsync_every = fsync_every
        self.fsync_seconds = fsync_seconds
        self._pending = 0
        self._last_sync = time.monotonic()
        self._closed = False
        self._stdout = path is None or str(path) == "-"
        self.path: Path | None = None if self._stdout else Path(path)
        if self._stdout:
            if append:
                raise OutputError("cannot append to stdout; give an output file to resume")
            self._file = _stdout_text()
            self._can_fsync = False
            needs_header = True
        else:
            self._file, needs_header = self._open_file(self.path, append)
            self._can_fsync = True
        self._csv = csv.writer(self._file) if fmt == "csv" else None
        if needs_header and self._csv is not None:
            self._csv.writerow(COLUMNS)

    def _open_file(self, path: Path, append: bool) -> tuple[IO[str], bool]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            existed = path.exists()
            if append and existed:
                repair_tail(path, self.fmt)
            f = open(  # noqa: SIM115 (closed by close())
                path,
                "a" if append else "w",
                encoding=_ENCODING,
                errors=_ERRORS,
                newline="",
            )
        except OSError as exc:
            raise OutputError(f"cannot write results to {path}: {exc.strerror or exc}") from None
        if not existed:
            _fsync_dir(path.parent)  # the new directory entry survives a power loss too
        return f, f.tell() == 0

    def write(self, row: ResultRow) -> None:
        """Write one row and hand it to the OS; fsync every ``fsync_every`` rows / ``fsync_seconds``.

        After ``kill -9`` every written row is in the file (the OS has it); ``fsync`` batches
        only protect against a machine crash, where ``--resume`` rescores the lost tail.
        """
        if self._closed:
            raise ValueError("ResultWriter is closed")
        _check_row(row)
        if self._csv is not None:
            self._csv.writerow(_csv_fields(row))
        else:
            self._file.write(_json_line(row))
        self._pending += 1
        self._file.flush()  # to the OS at once: a killed process loses no written row
        if (
            self._pending >= self.fsync_every
            or time.monotonic() - self._last_sync >= self.fsync_seconds
        ):
            self.flush()

    def flush(self, fsync: bool = True) -> None:
        """Hand buffered rows to the OS; with ``fsync`` (files only) wait until they are on disk."""
        if self._closed:
            return
        self._file.flush()
        if fsync and self._can_fsync:
            try:
                os.fsync(self._file.fileno())
            except OSError as exc:  # a pipe or a device given as the output path
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
                    raise
                self._can_fsync = False
        self._pending = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Flush, fsync and close (stdout is flushed and left open). Safe to call twice."""
        if self._closed:
            return
        try:
            self.flush(fsync=True)
        finally:
            self._closed = True
            if self._stdout:
                if isinstance(self._file, io.TextIOWrapper):
                    self._file.detach()  # leave sys.stdout's buffer open
            else:
                self._file.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _stdout_text() -> IO[str]:
    stdout = sys.stdout
    buffer = getattr(stdout, "buffer", None)
    if buffer is None:  # a replaced sys.stdout without bytes underneath: write text to it
        return _Unclosable(stdout)
    stdout.flush()
    return io.TextIOWrapper(buffer, encoding=_ENCODING, errors=_ERRORS, newline="")


class _Unclosable(io.TextIOBase):
    """A text stream we write to but do not own."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Reading back: resume and tail repair
# --------------------------------------------------------------------------------------------


def _csv_records(f: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """Complete CSV records (bytes) with the file offset of their end.

    A record ends at a newline outside quotes. The writer quotes every field that contains a
    quote, so "outside quotes" is "an even number of quote bytes so far"; neither ``"`` nor
    ``\\n`` occurs inside a multi-byte UTF-8 sequence or a surrogate-escaped byte. An
    unterminated last line, or a record still inside quotes at the end, is incomplete.
    """
    pending: list[bytes] = []
    odd = False
    offset = 0
    for line in f:
        if not line.endswith(b"\n"):
            return
        offset += len(line)
        pending.append(line)
        odd ^= bool(line.count(b'"') & 1)
        if not odd:
            yield b"".join(pending), offset
            pending = []


def _jsonl_lines(f: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """Newline-terminated lines with the file offset of their end."""
    offset = 0
    for line in f:
        if not line.endswith(b"\n"):
            return
        offset += len(line)
        yield line, offset


def _parse_json(line: bytes) -> dict | None:
    try:
        obj = json.loads(line.decode(_ENCODING, _ERRORS))
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _resume_path(path: PathLike | None) -> Path:
    if path is None or str(path) == "-":
        raise OutputError("cannot resume results on stdout; give an output file")
    return Path(path)


def _check_header(path: Path, header: list[str]) -> None:
    if tuple(header) != COLUMNS:
        raise OutputError(
            f"{path} is not a loda-score CSV of this version: its header is "
            f"{','.join(header)!r}, expected {','.join(COLUMNS)!r} (use another output file)"
        )


def _check_first_object(path: Path, obj: dict | None) -> None:
    if obj is None or set(obj) != set(COLUMNS):
        found = "is not a JSON object" if obj is None else f"has keys {sorted(obj)}"
        raise OutputError(
            f"{path} is not a loda-score JSONL of this version: its first line {found}, "
            f"expected keys {list(COLUMNS)} (use another output file)"
        )


def _check_partial_start(path: Path, fmt: str, partial: bytes) -> None:
    """A file with no complete record must at least start like ours before we cut it."""
    expected = _CSV_HEADER if fmt == "csv" else _JSONL_START
    n = min(len(partial), len(expected))
    if partial[:n] != expected[:n]:
        raise OutputError(
            f"{path} does not look like a loda-score {fmt} result file (use another output file)"
        )


def read_done(path: PathLike, fmt: str) -> set[str]:
    """Sources already in the result file ``path`` (a missing file: none), for ``--resume``.

    Error rows count as done. An incomplete last record is ignored, and so is a JSONL line in
    the middle of the file that does not parse.
    """
    return set(read_statuses(path, fmt))


def read_statuses(path: PathLike, fmt: str) -> dict[str, str]:
    """``{source: status}`` of the rows in ``path`` (``read_done``'s rows, with their status).

    A CSV field may be of any length (a source over ``csv.field_size_limit()``'s 128 KiB
    default is read back too; the limit is raised to the file size while reading).
    """
    path = _resume_path(path)
    fmt = format_for(path, fmt)
    if not path.exists():
        return {}
    done: dict[str, str] = {}
    with open(path, "rb") as f:
        if fmt == "csv":
            records = (rec.decode(_ENCODING, _ERRORS) for rec, _ in _csv_records(f))
            reader = csv.reader(records)
            header = next(reader, None)
            if header is None:  # not even a complete header: empty, or killed while writing it
                f.seek(0)
                _check_partial_start(path, fmt, f.read(len(_CSV_HEADER)))
                return done
            _check_header(path, header)
            source, status = header.index("source"), header.index("status")
            with _csv_field_limit(os.fstat(f.fileno()).st_size):
                for fields in reader:
                    if len(fields) == len(header):
                        done[fields[source]] = fields[status]
        else:
            first = True
            for line, _ in _jsonl_lines(f):
                obj = _parse_json(line)
                if first:
                    _check_first_object(path, obj)
                    first = False
                if obj is not None and isinstance(obj.get("source"), str):
                    done[obj["source"]] = obj.get("status")
            if first:
                f.seek(0)
                _check_partial_start(path, fmt, f.read(len(_JSONL_START)))
    return done


@contextlib.contextmanager
def _csv_field_limit(size: int) -> Iterator[None]:
    """Let the ``csv`` module read fields of up to ``size`` characters; restore its limit after."""
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, min(size, 2**31 - 1)))  # a C long on every platform
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def repair_tail(path: PathLike, fmt: str) -> int:
    """Cut ``path`` back to the end of its last complete record; return the bytes removed.

    CSV: an unterminated last line (or a record left inside quotes) goes. JSONL: an
    unterminated last line goes, and so does a terminated last line that does not parse. The
    file is checked to be a result file of this layout first (``OutputError`` otherwise, file
    untouched). A missing file: 0.
    """
    path = _resume_path(path)
    fmt = format_for(path, fmt)
    if not path.exists():
        return 0
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        keep = 0
        if fmt == "csv":
            for i, (record, end) in enumerate(_csv_records(f)):
                if i == 0:
                    header = next(csv.reader([record.decode(_ENCODING, _ERRORS)]), [])
                    _check_header(path, header)
                keep = end
        else:
            before_last = last_end = 0
            last_line = b""
            for i, (line, end) in enumerate(_jsonl_lines(f)):
                if i == 0:
                    _check_first_object(path, _parse_json(line))
                before_last, last_end, last_line = last_end, end, line
            keep = last_end if _parse_json(last_line) is not None or not last_line else before_last
        if keep == 0 and size:
            f.seek(0)
            _check_partial_start(path, fmt, f.read(len(_CSV_HEADER)))
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


# --------------------------------------------------------------------------------------------
# The run record: how the rows of a result file were made
# --------------------------------------------------------------------------------------------

RUN_RECORD_FORMAT = "loda-score-run/1"


def run_record_path(path: PathLike) -> Path:
    """The JSON record beside a result file: ``scores.csv`` -> ``scores.csv.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_run_record(path: PathLike, record: dict[str, Any], *, resume: bool) -> None:
    """Write the settings that decide the scores (model, preprocessing with its decode mode,
    crop seed) beside the result file at ``path``.

    With ``resume`` an existing record must hold the same settings: rows made with other
    settings (say, exact and fast decoding) are never mixed in one file silently; that is one
    :class:`OutputError` naming the settings that differ.
    """
    from loda.atomic import write_bytes_atomic

    target = run_record_path(path)
    record = {"format": RUN_RECORD_FORMAT, **record}
    if resume and target.is_file():
        try:
            before = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            before = None
        if not isinstance(before, dict):
            raise OutputError(f"{target}: not a loda-score run record (damaged?)")
        differ = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))
        if differ:
            raise OutputError(
                f"--resume: {path} was scored with other settings ({', '.join(differ)} differ; "
                f"see {target.name}); score into a new file"
            )
        return
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(target, text.encode("utf-8"))
