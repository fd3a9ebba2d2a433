"""``loda-score-ray``: the ``loda-score`` run on Ray Data, from one machine to a GPU cluster.

The same inputs, preprocessing, backends, per-image reduction and row columns as ``loda-score``;
the work is spread by Ray Data instead of ``loda-score``'s own worker processes::

    driver                         CPU tasks (one per unit)           actor pool            driver
    iter_inputs(read_data=False)   read the files / the archive's     Scorer per actor:     rows ->
    -> units: a chunk of files,    members (iter_inputs again),       pack crops, infer,    part files
       or one archive (shard)      decode + crop (prepare_image)      mean / std per image

* **Enumeration** is the runtime's (``loda.runtime.inputs.iter_inputs``): the driver names every
  item once without reading member bytes, so the set of rows, the error rows of missing / special
  / colliding inputs and the documented skips are ``loda-score``'s. Consecutive files (and error
  items) go into a unit of ``files_per_task`` items; each archive is a unit of its own, so the
  shards of a WebDataset-style set are read by parallel tasks. A unit carries the sources the
  naming pass found: its task reads the archive again (``iter_inputs([archive])``, with the bytes)
  and emits exactly those sources, once each (a member that is gone on the second read becomes an
  error row), whatever the archive holds besides.
* **Decode + crop** run in the read task (``scorer.prepare_image``, the one preprocessing), so
  member bytes never travel through the object store; crops travel as bytes to the actors.
* **Scoring**: ``map_batches`` with a callable class opening one :class:`Scorer` per actor
  (``concurrency`` actors, ``num_gpus`` each when the cluster has GPUs, ONNX Runtime on CPU
  otherwise). An actor call gets the images of one backend batch (``Scorer.batch_size`` crops,
  from the artifact's profile for engines) and reduces them with ``Scorer.iter_scores``, the
  function ``loda-score`` uses (mean of the crop scores, spread = population std, calibrated MOS).
* **Nothing lost, nothing twice**: tasks are retried ``max_retries`` times and actors restarted
  ``max_retries`` times with their tasks retried (set explicitly, not left to Ray's defaults); the
  driver writes the rows, drops (and counts) a source it already wrote, and fails the run (no
  ``_SUCCESS``) if an input got no row.
* **Output directory**: rows go to ``part-NNNNN-RUN.parquet`` (or ``.csv`` / ``.jsonl``, the
  ``loda-score`` encodings through its ``ResultWriter``). A part is written under a hidden
  temporary name (``.part-...tmp``) and renamed when it is complete (every ``rows_per_file`` rows
  or ``seconds_per_file`` seconds, and at the end), so a visible part file is always complete; an
  empty ``_SUCCESS`` marker is written last, only when every input has its row. ``resume`` reads
  the complete parts (of any of the three formats), deletes stale temporary files and scores the
  rest.

The driver holds the enumerated names (a few tens of bytes per image) and, for the duplicate
check, one key per row; images, crops and member bytes stay in the tasks, bounded by Ray Data's
streaming back-pressure, so memory does not grow with the size of an archive.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loda.errors import LodaError, first_line
from loda.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, PreprocessConfig

from .inputs import (
    MEMBER_SEP,
    InputItem,
    check_specs,
    is_archive_name,
    iter_inputs,
    member_cap,
    normalise_key,
)
from .output import COLUMNS, ResultRow, ResultWriter
from .pipeline import prepare_item
from .scorer import PreparedImage, Scorer

__all__ = [
    "KILL_HOOK_ENV",
    "OUTPUT_FORMATS",
    "SUCCESS_NAME",
    "RayJobError",
    "RayRunStats",
    "RayScoreOptions",
    "init_ray",
    "read_output",
    "score_to_directory",
]

#: Test-only: a marker-file path; the first scoring actor to see no marker creates it and exits
#: (``os._exit``) on its first batch, so the fault-tolerance path is exercised for real.
KILL_HOOK_ENV = "LODA_RAY_TEST_KILL_FIRST_ACTOR"
OUTPUT_FORMATS: tuple[str, ...] = ("parquet", "csv", "jsonl")
SUCCESS_NAME = "_SUCCESS"
_SUFFIX = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
_TMP_PREFIX = ".part-"
_PART_PREFIX = "part-"


class RayJobError(LodaError):
    """The Ray run cannot start or did not complete; one line."""


@dataclass(frozen=True)
class RayScoreOptions:
    """What ``loda-score-ray`` is told; the defaults are ``loda-score``'s where both have one."""

    model: str
    backend: str | None = None
    device: str = "auto"
    threads: int | None = None
    batch_size: int | None = None  # crops per inference call (default: the Scorer's)
    crops: int | None = None
    layout: str | None = None
    seed: int = 0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_member_bytes: int | None = None
    fmt: str = "parquet"
    resume: bool = False
    overwrite: bool = False
    actors: int | None = None  # default: one per GPU, else 1
    gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0
    files_per_task: int = 64
    max_retries: int = 3
    rows_per_file: int = 100_000
    seconds_per_file: float = 600.0
    progress: bool = True


@dataclass
class RayRunStats:
    images: int = 0  # rows written by this run
    ok: int = 0
    failed: int = 0
    crops: int = 0
    infer_seconds: float = 0.0
    seconds: float = 0.0
    resumed: int = 0
    resumed_failed: int = 0
    duplicates_dropped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    parts: list[Path] = field(default_factory=list)
    actors: int = 0
    gpus_per_actor: float = 0.0

    def summary(self, where: str) -> str:
        """The final line, in ``loda-score``'s words."""
        notes = []
        if self.skipped:
            notes.append(f"{len(self.skipped)} skipped")
        if self.resumed:
            notes.append(f"{self.resumed} already done, {self.resumed_failed} of them failed")
        if self.duplicates_dropped:
            notes.append(f"{self.duplicates_dropped} duplicate row(s) from retries dropped")
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        crop_rate = self.crops / self.seconds if self.seconds > 0 else 0.0
        return (
            f"scored {self.ok} of {self.images} image(s), {self.failed} failed"
            + (f" ({', '.join(notes)})" if notes else "")
            + f" in {self.seconds:.1f}s: {rate:.2f} images/s, {crop_rate:.1f} crops/s "
            f"(inference {self.infer_seconds:.1f}s over {self.actors} actor(s)) -> {where}"
        )


# --------------------------------------------------------------------------------------------
# Units: what one read task does
# --------------------------------------------------------------------------------------------


def _archive_of(source: str, current: str | None) -> str:
    """The archive a member key belongs to. Members of one archive come one after another, so
    the archive of the previous member is tried first; otherwise the first ``::`` after an
    archive suffix splits the key (the rule ``loda.runtime.inputs`` documents for keys)."""
    if current is not None and source.startswith(current + MEMBER_SEP):
        return current
    start = 0
    while True:
        i = source.find(MEMBER_SEP, start)
        if i < 0:
            raise RayJobError(f"internal: {source!r} is neither a file nor an archive member")
        if is_archive_name(source[:i]):
            return source[:i]
        start = i + 1


def _units(
    items: Iterator[InputItem], files_per_task: int, left_out: Callable[[str], bool]
) -> Iterator[tuple[str, int]]:
    """``(unit as JSON, number of rows it yields)`` in input order.

    A unit is ``{"items": [[source, path, error], ...]}`` (files and error items) or
    ``{"archive": path, "members": [source, ...]}``. JSON keeps lone surrogates (file names that
    are not UTF-8) as escapes that load back to the same strings.
    """
    chunk: list[list[Any]] = []
    archive: str | None = None
    members: list[str] = []

    def flush_chunk() -> Iterator[tuple[str, int]]:
        if chunk:
            yield json.dumps({"items": chunk}), len(chunk)
            chunk.clear()

    def flush_archive() -> Iterator[tuple[str, int]]:
        if members:
            unit = {"archive": archive, "open": os.path.abspath(archive), "members": members}
            yield json.dumps(unit), len(members)
        members.clear()

    for item in items:
        if left_out(item.source):
            continue
        if item.error is None and item.path is None:  # an archive member, named only
            owner = _archive_of(item.source, archive)
            if owner != archive:
                yield from flush_archive()
                archive = owner
            yield from flush_chunk()
            members.append(item.source)
            continue
        yield from flush_archive()
        archive = None
        path = None if item.path is None else os.path.abspath(item.path)  # tasks' cwd differs
        chunk.append([item.source, path, item.error])
        if len(chunk) >= files_per_task:
            yield from flush_chunk()
    yield from flush_archive()
    yield from flush_chunk()


def _unit_items(unit: dict[str, Any], max_member_bytes: int) -> Iterator[InputItem]:
    """The items of a unit, with member bytes: exactly the sources the unit names, once each."""
    if "items" in unit:
        for source, path, error in unit["items"]:
            yield InputItem(source, path=path, error=error)
        return
    wanted = dict.fromkeys(unit["members"])  # ordered set
    spelled, opened = unit["archive"], unit["open"]  # sources keep the spelling of the INPUT
    for item in iter_inputs([opened], max_member_bytes=max_member_bytes):
        if spelled != opened and item.source.startswith(opened):
            item = dataclasses.replace(item, source=spelled + item.source[len(opened) :])
        if item.source in wanted:
            del wanted[item.source]
            yield item
        del item
    for source in wanted:  # named by the first read, gone in this one
        yield InputItem(source, error="cannot read member: not found when the archive was read")


def _decode(item: InputItem, cfg: PreprocessConfig, seed: int, max_pixels: int | None) -> tuple:
    """``(crops, width, height, None)`` or ``(None, None, None, error line)``, as ``loda-score``'s
    decode workers answer."""
    if item.error is not None:
        return None, None, None, item.error
    return prepare_item(item.source, item.path, item.data, cfg, seed, max_pixels)


def _columns(rows: list[tuple]) -> dict[str, np.ndarray]:
    sources, crops, counts, widths, heights, errors = zip(*rows, strict=True)
    return {
        "source": np.array(sources, dtype=object),
        "crops": np.array(crops, dtype=object),
        "n": np.array(counts, dtype=np.int64),
        "width": np.array(widths, dtype=np.int64),
        "height": np.array(heights, dtype=np.int64),
        "error": np.array(errors, dtype=object),
    }


def _read_decode(
    batch: dict[str, np.ndarray],
    *,
    cfg: dict[str, Any],
    seed: int,
    max_pixels: int | None,
    max_member_bytes: int,
    rows_per_batch: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Read task: the units of ``batch`` -> decoded images, ``rows_per_batch`` at a time."""
    config = PreprocessConfig.from_dict(cfg)
    rows: list[tuple] = []
    for text in batch["unit"]:
        for item in _unit_items(json.loads(text), max_member_bytes):
            source = item.source
            crops, width, height, error = _decode(item, config, seed, max_pixels)
            del item  # hold no member's bytes while the next one is read
            if error is None:
                rows.append((source, crops.tobytes(), len(crops), width, height, ""))
            else:
                rows.append((source, b"", 0, -1, -1, error))
            if len(rows) >= rows_per_batch:
                yield _columns(rows)
                rows = []
    if rows:
        yield _columns(rows)


# --------------------------------------------------------------------------------------------
# Scoring actor
# --------------------------------------------------------------------------------------------


class _ScoreActor:
    """One :class:`Scorer` per actor; a call scores one batch of decoded images."""

    def __init__(
        self,
        model: str,
        backend: str | None,
        backend_options: dict[str, Any],
        batch_size: int | None,
        crop_size: int,
        kill_marker: str | None,
    ) -> None:
        self.scorer = Scorer.open(model, backend=backend, batch_size=batch_size, **backend_options)
        self.crop_size = crop_size
        self.kill_marker = kill_marker

    def _maybe_die(self) -> None:
        marker, self.kill_marker = self.kill_marker, None
        if not marker:
            return
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # an actor died already: this one (a restart, or another) works
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        os._exit(1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._maybe_die()
        size = self.crop_size
        items: list[tuple[str, PreparedImage | BaseException]] = []
        for source, crops, n, width, height, error in zip(
            batch["source"],
            batch["crops"],
            batch["n"],
            batch["width"],
            batch["height"],
            batch["error"],
            strict=True,
        ):
            if error:
                items.append((source, ImageDecodeError(error)))
            else:
                array = np.frombuffer(crops, dtype=np.uint8).reshape(int(n), size, size, 3)
                items.append((source, PreparedImage(array, int(width), int(height))))
        infer_seconds = 0.0
        infer = self.scorer.backend.infer

        def timed(crops: np.ndarray) -> np.ndarray:
            nonlocal infer_seconds
            t0 = time.perf_counter()
            out = infer(crops)
            infer_seconds += time.perf_counter() - t0
            return out

        results = list(self.scorer.iter_scores(items, infer=timed))
        rows = [ResultRow.from_result(r) for r in results]
        share = infer_seconds / max(1, len(rows))
        return {
            "source": np.array([r.source for r in rows], dtype=object),
            "score": _floats([r.score for r in rows]),
            "spread": _floats([r.spread for r in rows]),
            "mos": _floats([r.mos for r in rows]),
            "width": _ints([r.width for r in rows]),
            "height": _ints([r.height for r in rows]),
            "status": np.array([r.status for r in rows], dtype=object),
            "error": np.array([r.error for r in rows], dtype=object),
            "_crops": np.array(
                [0 if r.crop_scores is None else len(r.crop_scores) for r in results], np.int64
            ),
            "_infer": np.full(len(rows), share, dtype=np.float64),
        }


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _ints(values: list[int | None]) -> np.ndarray:
    return np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Output directory
# --------------------------------------------------------------------------------------------


def _parquet_text(text: str) -> str:
    """Parquet strings are UTF-8: a file name that is not (lone surrogates) keeps its bytes as
    ``\\xNN`` escapes (the same rule for writing and for ``--resume``)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _parquet_schema() -> Any:
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


class _PartWriter:
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

            self._writer = pq.ParquetWriter(self._tmp, _parquet_schema())
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
                    "source": _parquet_text(row.source),
                    "score": row.score,
                    "spread": row.spread,
                    "mos": row.mos,
                    "width": row.width,
                    "height": row.height,
                    "status": row.status,
                    "error": _parquet_text(row.error),
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

            self._writer.write_table(pa.Table.from_pylist(self._buffer, _parquet_schema()))
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
        _fsync_dir(self.directory)
        self.parts.append(self._final)

    def abandon(self) -> None:
        """A failed run: close the current temporary file and leave it as it is (hidden)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prepare_directory(out: Path, options: RayScoreOptions) -> dict[str, str]:
    """Check / clean the output directory; return ``{normalised source: status}`` to resume."""
    if out.exists() and not out.is_dir():
        raise RayJobError(f"--output {out} is not a directory (loda-score-ray writes a folder)")
    out.mkdir(parents=True, exist_ok=True)
    ours = _parts(out) + _temporaries(out) + [p for p in [out / SUCCESS_NAME] if p.exists()]
    if ours and not (options.resume or options.overwrite):
        raise RayJobError(
            f"--output {out} already holds results: pass --resume to continue or --overwrite"
        )
    done: dict[str, str] = {}
    if options.overwrite:
        for p in ours:
            p.unlink()
    elif options.resume:
        (out / SUCCESS_NAME).unlink(missing_ok=True)
        for p in _temporaries(out):  # parts of a run that did not finish them
            p.unlink()
        for source, (status, _row) in read_output(out).items():
            done[normalise_key(source)] = status
    return done


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _ray() -> Any:
    import ray

    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start a local Ray (``address`` None) or join a cluster; False when one is already up."""
    ray = _ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning"}
    if address:
        kwargs["address"] = address
    elif num_cpus:
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
    return True


def score_to_directory(
    inputs: Sequence[str],
    output: str | os.PathLike,
    options: RayScoreOptions,
    *,
    log: Callable[[str], None] | None = None,
) -> RayRunStats:
    """Score ``inputs`` on the Ray that is initialised (``init_ray``) into the folder ``output``.

    Raises ``InputError`` for a missing INPUT, ``RayJobError`` when the run cannot start or does
    not complete (then no ``_SUCCESS`` and the complete parts so far stay for ``resume``).
    """
    import ray
    from ray.data import DataContext

    log = log or (lambda _m: None)
    if options.fmt not in OUTPUT_FORMATS:
        raise RayJobError(f"unknown format {options.fmt!r}; choose one of {OUTPUT_FORMATS}")
    if options.files_per_task < 1 or options.rows_per_file < 1 or options.max_retries < 0:
        raise RayJobError("files_per_task and rows_per_file must be >= 1, max_retries >= 0")
    if not ray.is_initialized():
        raise RayJobError("Ray is not initialised: call init_ray() first")
    inputs = [os.fspath(spec) for spec in inputs]
    check_specs(inputs)
    start = time.perf_counter()
    out = Path(output)
    stats = RayRunStats()

    # The artifact's preprocessing and batch size, read once here.
    backend_options: dict[str, Any] = {"device": options.device, "threads": options.threads}
    gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus_per_actor = options.gpus_per_actor
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus > 0 and options.device != "cpu" else 0.0
    if gpus_per_actor > 0 and gpus < gpus_per_actor:
        raise RayJobError(f"{gpus_per_actor} GPU(s) per actor, but the cluster has {gpus}")
    if gpus_per_actor == 0 and options.device == "auto":
        backend_options["device"] = "cpu"
    # The driver only reads the artifact's metadata: on the CPU where the backend allows it, so
    # the head node needs no GPU (a TensorRT engine has to be opened where it can run).
    probe = dict(backend_options)
    if (options.backend or _suffix_backend(options.model)) in ("onnxruntime", "torch"):
        probe["device"] = "cpu"
    with Scorer.open(
        options.model, backend=options.backend, batch_size=options.batch_size, **probe
    ) as scorer:
        try:
            cfg = scorer.config(num_crops=options.crops, layout=options.layout)
        except ValueError as exc:
            raise RayJobError(first_line(exc)) from None
        batch_crops = scorer.batch_size
        info = scorer.backend.info
    actors = options.actors or (max(1, int(gpus // gpus_per_actor)) if gpus_per_actor else 1)
    images_per_call = max(1, batch_crops // cfg.num_crops)
    stats.actors, stats.gpus_per_actor = actors, gpus_per_actor
    log(
        f"model {info.path.name} ({info.meta.model.name}, {info.precision}); {cfg.num_crops} "
        f"{cfg.layout} crops of {cfg.crop_size}px per image, batches of {batch_crops} crops "
        f"({images_per_call} image(s) per actor call); {actors} scoring actor(s) with "
        f"{gpus_per_actor:g} GPU(s) and {options.cpus_per_actor:g} CPU(s) each; Ray "
        f"{ray.__version__}, cluster {_resources(ray.cluster_resources())}"
    )

    done = _prepare_directory(out, options)
    if done:
        errors = sum(s == "error" for s in done.values())
        log(f"resuming: {len(done)} input(s) already in {out} ({errors} error row(s))")
    max_pixels = options.max_pixels or None
    member_bytes = options.max_member_bytes or member_cap(max_pixels)
    fmt_key = _parquet_text if options.fmt == "parquet" else (lambda s: s)

    def left_out(source: str) -> bool:
        if not done:
            return False
        status = done.get(normalise_key(fmt_key(source)))
        if status is None:
            return False
        stats.resumed += 1
        stats.resumed_failed += status == "error"
        return True

    items = iter_inputs(
        inputs,
        skipped=lambda s, r: stats.skipped.append((s, r)),
        read_data=False,
        max_member_bytes=member_bytes,
    )
    units: list[str] = []
    expected = 0
    for unit, n in _units(items, options.files_per_task, left_out):
        units.append(unit)
        expected += n
    log(f"{expected} input(s) to score in {len(units)} read task(s)")

    writer = _PartWriter(out, options.fmt, options.rows_per_file, options.seconds_per_file)
    written: set[str] = set()
    context = DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True
    context.enable_progress_bars = options.progress
    try:
        if units:
            ds = _dataset(
                units,
                cfg=cfg,
                options=options,
                backend_options=backend_options,
                batch_crops=batch_crops,
                images_per_call=images_per_call,
                actors=actors,
                gpus_per_actor=gpus_per_actor,
                member_bytes=member_bytes,
                max_pixels=max_pixels,
            )
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    _write_batch(batch, writer, written, stats)
            except ray.exceptions.RayError as exc:
                raise RayJobError(
                    f"the Ray run failed after {stats.images} row(s) (the complete part files "
                    f"are kept: rerun with --resume): {first_line(exc)}"
                ) from exc
        writer.close_part()
    except BaseException:
        writer.abandon()
        raise
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
    stats.parts = writer.parts
    stats.seconds = time.perf_counter() - start
    missing = expected - len(written)
    if missing:
        raise RayJobError(
            f"{missing} of {expected} input(s) got no row (the rows written are kept): "
            "rerun with --resume"
        )
    (out / SUCCESS_NAME).write_bytes(b"")
    _fsync_dir(out)
    return stats


def _suffix_backend(model: str) -> str | None:
    from .scorer import backend_for_path

    try:
        return backend_for_path(model)
    except LodaError:
        return None


def _resources(resources: dict[str, float]) -> str:
    keys = [k for k in ("CPU", "GPU") if k in resources]
    return ", ".join(f"{resources[k]:g} {k}" for k in keys) or "no resources"


def _write_batch(
    batch: dict[str, np.ndarray], writer: _PartWriter, written: set[str], stats: RayRunStats
) -> None:
    for i, source in enumerate(batch["source"]):
        source = str(source)
        key = normalise_key(source)
        if key in written:  # a retried task's row that already came: once only
            stats.duplicates_dropped += 1
            continue
        written.add(key)
        status = str(batch["status"][i])
        row = ResultRow(
            source=source,
            score=_opt_float(batch["score"][i]),
            spread=_opt_float(batch["spread"][i]),
            mos=_opt_float(batch["mos"][i]),
            width=_opt_int(batch["width"][i]),
            height=_opt_int(batch["height"][i]),
            status=status,
            error=str(batch["error"][i] or ""),
        )
        writer.write(row)
        stats.images += 1
        if status == "ok":
            stats.ok += 1
        else:
            stats.failed += 1
        stats.crops += int(batch["_crops"][i])
        stats.infer_seconds += float(batch["_infer"][i])


def _opt_float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _opt_int(value: Any) -> int | None:
    value = int(value)
    return None if value < 0 else value


def _dataset(
    units: list[str],
    *,
    cfg: PreprocessConfig,
    options: RayScoreOptions,
    backend_options: dict[str, Any],
    batch_crops: int,
    images_per_call: int,
    actors: int,
    gpus_per_actor: float,
    member_bytes: int,
    max_pixels: int | None,
) -> Any:
    import ray.data

    ds = ray.data.from_items([{"unit": u} for u in units], override_num_blocks=len(units))
    # Retries and restarts are set explicitly (Ray Data's actor default is to restart for ever,
    # which turns a model that kills its actor on every batch into a run that never ends). Ray
    # takes them only as free remote arguments (deprecated, with no named parameter yet).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            _read_decode,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={
                "cfg": cfg.to_dict(),
                "seed": options.seed,
                "max_pixels": max_pixels,
                "max_member_bytes": member_bytes,
                "rows_per_batch": images_per_call,
            },
            num_cpus=1,
            max_retries=options.max_retries,
        )
        kill_marker = os.environ.get(KILL_HOOK_ENV) or None
        return ds.map_batches(
            _ScoreActor,
            batch_size=images_per_call,
            batch_format="numpy",
            fn_constructor_kwargs={
                "model": os.path.abspath(options.model),
                "backend": options.backend,
                "backend_options": backend_options,
                "batch_size": batch_crops,
                "crop_size": cfg.crop_size,
                "kill_marker": kill_marker,
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=options.cpus_per_actor,
            num_gpus=gpus_per_actor or None,
            max_restarts=options.max_retries,
            max_task_retries=options.max_retries,
        )
