"""``loda-score-ray``: the ``loda-score`` run on Ray Data, from one machine to a GPU cluster.

The same inputs, preprocessing, backends, per-image reduction and row columns as ``loda-score``;
the work is spread by Ray Data instead of ``loda-score``'s own worker processes::

    driver                         CPU tasks (one per unit)           actor pool            driver
    iter_any(read_data=False)      read the files / the archive's     Scorer per actor:     rows ->
    -> units: a chunk of files,    members (iter_any again),          pack crops, infer,    part files
       or one archive (shard)      decode + crop (prepare_item)       mean / std per image

This module is the driver; ``ray_tasks`` holds the work of the tasks and actors, ``ray_fs`` the
URI INPUTs (``s3://``, ``gs://``, ``file://``: pyarrow filesystems), ``ray_output`` the folder.

* **Enumeration** is the runtime's (``loda.runtime.inputs``'s rules, through ``ray_fs.iter_any``
  for local paths and URIs alike): the driver names every item once without reading member
  bytes, so the set of rows, the error rows of missing / special / colliding inputs and the
  documented skips are ``loda-score``'s. Consecutive files (and error items) go into a unit of
  ``files_per_task`` items; each archive is a unit of its own, so the shards of a
  WebDataset-style set are read by parallel tasks. A unit carries the sources the naming pass
  found and their input positions (``seq``): its task reads the archive again (with the bytes)
  and emits exactly those sources, once each (a member that is gone on the second read becomes
  an error row), whatever the archive holds besides.
* **Decode + crop** run in the read task (``scorer.prepare_image``, the one preprocessing), so
  member bytes never travel through the object store; crops travel as bytes to the actors.
* **Scoring**: ``map_batches`` with a callable class opening one :class:`Scorer` per actor
  (``concurrency`` actors, ``num_gpus`` each when the cluster has GPUs, ONNX Runtime on CPU
  otherwise). An actor call gets the images of one backend batch (``Scorer.batch_size`` crops,
  from the artifact's profile for engines) and reduces them with ``Scorer.iter_scores``, the
  function ``loda-score`` uses (mean of the crop scores, spread = population std, calibrated MOS).
* **Streaming, in order**: a read task hands its decoded images on one actor batch at a time
  (not in 128 MiB blocks), Ray Data's object-store budget bounds what waits for the actors, and
  the rows come back as they are done (``preserve_order`` off); the driver writes them in input
  order (``seq``), holding only the rows that came ahead of their turn.
* **Nothing lost, nothing twice**: tasks are retried ``max_retries`` times and actors restarted
  ``max_retries`` times with their tasks retried (set explicitly, not left to Ray's defaults); the
  driver writes the rows, drops (and counts) a ``seq`` it already wrote, and fails the run (no
  ``_SUCCESS``) if an input got no row.
* **Output directory**: rows go to ``part-NNNNN-RUN.parquet`` (or ``.csv`` / ``.jsonl``, the
  ``loda-score`` encodings through its ``ResultWriter``). A part is written under a hidden
  temporary name (``.part-...tmp``) and renamed when it is complete (every ``rows_per_file`` rows
  or ``seconds_per_file`` seconds, and at the end), so a visible part file is always complete; an
  empty ``_SUCCESS`` marker is written last, only when every input has its row. ``resume`` reads
  the complete parts (of any of the three formats), deletes stale temporary files and scores the
  rest. The folder may be a URI prefix on a store (``ray_output.OutputFolder``: parts are
  uploaded when complete, then moved to their final name).

The driver holds the enumerated names (a few tens of bytes per image) and the rows that came
ahead of their turn; images, crops and member bytes stay in the tasks and Ray's object store,
bounded by the budget, so memory does not grow with the size of an archive.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loda.errors import LodaError, first_line
from loda.preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig

from .inputs import member_cap, normalise_key
from .output import ResultRow
from .ray_fs import UriFiles, check_inputs, iter_any
from .ray_output import (
    OUTPUT_FORMATS,
    SUCCESS_NAME,
    OutputFolder,
    PartWriter,
    RayJobError,
    parquet_text,
    prepare_directory,
    read_output,
)
from .ray_tasks import KILL_HOOK_ENV, ScoreActor, read_decode, units_of
from .scorer import Scorer

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

_log = logging.getLogger(__name__)


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
    actors: int | None = None  # default: one per GPU, else one per CPU (at most 8): cpu_pool
    gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float | None = None  # default: 1 with GPUs, else cpu_pool's share
    files_per_task: int = 64
    max_retries: int = 3
    rows_per_file: int = 100_000
    seconds_per_file: float = 600.0
    progress: bool = True
    filesystem: Any = None  # a pyarrow FileSystem for every URI INPUT (default: from each URI)
    object_store_bytes: int | None = None  # Ray Data's budget (default: 8 batches per actor)


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
    parts: list[str] = field(default_factory=list)  # paths, or URIs on a store
    actors: int = 0
    gpus_per_actor: float = 0.0
    first_row_seconds: float = 0.0  # from the start to the first row: the fixed cost of a run

    def summary(self, where: str) -> str:
        """The final line, in ``loda-score``'s words."""
        from .job import summary_line

        dropped = self.duplicates_dropped
        return summary_line(
            ok=self.ok,
            images=self.images,
            failed=self.failed,
            crops=self.crops,
            seconds=self.seconds,
            inference=f"inference {self.infer_seconds:.1f}s over {self.actors} actor(s)",
            where=where,
            skipped=len(self.skipped),
            resumed=self.resumed,
            resumed_failed=self.resumed_failed,
            more_notes=[f"{dropped} duplicate row(s) from retries dropped"] if dropped else [],
        )


# --------------------------------------------------------------------------------------------
# The run, step by step
# --------------------------------------------------------------------------------------------


def _ray() -> Any:
    import ray

    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start a local Ray (``address`` None) or join a cluster; False when one is already up.

    Ray Data is imported here too (pandas, pyarrow: 1-2 s on a loaded core): start-up, paid
    before a run's clock starts, as ``loda-score`` imports its libraries before its own.
    """
    import ray.data

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


@dataclass(frozen=True)
class _Plan:
    """What the artifact and the cluster decide: crops, batch sizes, actors."""

    cfg: PreprocessConfig
    backend_options: dict[str, Any]
    batch_crops: int
    images_per_call: int
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    read_cpus: float
    member_bytes: int
    max_pixels: int | None

    @property
    def batch_bytes(self) -> int:
        """The crops of one actor call, as they travel (uint8)."""
        return self.images_per_call * self.cfg.num_crops * self.cfg.crop_size**2 * 3


def score_to_directory(
    inputs: Sequence[str],
    output: str | os.PathLike,
    options: RayScoreOptions,
    *,
    log: Callable[[str], None] | None = None,
) -> RayRunStats:
    """Score ``inputs`` (local paths or URIs) on the Ray that is initialised (``init_ray``)
    into the folder ``output`` (a local path, or a URI prefix on a store: ``OutputFolder``).

    Raises ``InputError`` for a missing INPUT, ``RayJobError`` when the run cannot start or does
    not complete (then no ``_SUCCESS`` and the complete parts so far stay for ``resume``).
    """
    say = log or _log.info
    _check_options(options)
    files = UriFiles(options.filesystem)
    inputs = [os.fspath(spec) for spec in inputs]
    check_inputs(inputs, files)
    out = OutputFolder(output, files)
    stats = RayRunStats()
    plan = _plan(options, say)
    # The clock starts after the driver opened the model, as loda-score's starts after its own
    # model load; the actors' start and model load are inside it.
    start = time.perf_counter()
    stats.actors, stats.gpus_per_actor = plan.actors, plan.gpus_per_actor
    done = prepare_directory(out, resume=options.resume, overwrite=options.overwrite)
    if done:
        errors = sum(s == "error" for s in done.values())
        say(f"resuming: {len(done)} input(s) already in {out} ({errors} error row(s))")
    units, expected = _name_units(inputs, files, options, plan, done, stats)
    say(f"{expected} input(s) to score in {len(units)} read task(s)")
    try:
        written = _run(units, out, files, options, plan, stats, start)
    finally:
        out.close()
    stats.parts.sort()
    stats.seconds = time.perf_counter() - start
    if stats.first_row_seconds:
        say(
            f"first row after {stats.first_row_seconds:.1f}s (the fixed cost of a run: naming "
            "the inputs, starting the actors and loading the model, the first read and decode)"
        )
    missing = expected - written
    if missing:
        raise RayJobError(
            f"{missing} of {expected} input(s) got no row (the rows written are kept): "
            "rerun with --resume"
        )
    out.write_empty(SUCCESS_NAME)
    return stats


def _check_options(options: RayScoreOptions) -> None:
    if options.fmt not in OUTPUT_FORMATS:
        raise RayJobError(f"unknown format {options.fmt!r}; choose one of {OUTPUT_FORMATS}")
    if options.files_per_task < 1 or options.rows_per_file < 1 or options.max_retries < 0:
        raise RayJobError("files_per_task and rows_per_file must be >= 1, max_retries >= 0")
    if not _ray().is_initialized():
        raise RayJobError("Ray is not initialised: call init_ray() first")


#: CPU-only pools: one scoring actor per CPU up to this many (each holds its own model copy).
MAX_CPU_ACTORS = 8


def cpu_pool(
    cpus: float, actors: int | None, threads: int | None, cpus_per_actor: float | None
) -> tuple[int, int, float, float]:
    """A CPU-only actor pool: ``(actors, ONNX Runtime threads per actor, Ray CPUs per actor,
    Ray CPUs per read task)``, each given value kept.

    Defaults: one actor per CPU (at most ``MAX_CPU_ACTORS``), the CPUs dealt out as ONNX Runtime
    threads (one each on a small machine), and half of the cluster's Ray CPUs reserved for the
    actors, the rest for the read tasks. Single-threaded actors because ONNX Runtime's threads of
    one call wait for each other: with every core in one session, each preemption by Ray's own
    processes stalls the whole call (docs/ray.md, measured).
    """
    n = max(1, int(cpus))
    actors = actors or min(n, MAX_CPU_ACTORS)
    threads = threads or max(1, n // actors)
    read_cpus = min(1.0, cpus / 2)
    if cpus_per_actor is None:
        cpus_per_actor = cpus / (2 * actors)
    if actors * cpus_per_actor + read_cpus > cpus + 1e-9:
        raise RayJobError(
            f"{actors} actor(s) x {cpus_per_actor:g} CPU(s) leave the read tasks less than "
            f"{read_cpus:g} of the cluster's {cpus:g} CPU(s): lower --actors or --cpus-per-actor"
        )
    return actors, threads, cpus_per_actor, read_cpus


def _plan(options: RayScoreOptions, say: Callable[[str], None]) -> _Plan:
    """Read the artifact's preprocessing and batch size once, here; size the actor pool."""
    ray = _ray()
    backend_options: dict[str, Any] = {"device": options.device, "threads": options.threads}
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
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
    if gpus_per_actor:
        actors = options.actors or max(1, int(gpus // gpus_per_actor))
        cpus_per_actor = 1.0 if options.cpus_per_actor is None else options.cpus_per_actor
        read_cpus = 1.0
    else:
        actors, threads, cpus_per_actor, read_cpus = cpu_pool(
            float(resources.get("CPU", 1)), options.actors, options.threads, options.cpus_per_actor
        )
        backend_options["threads"] = threads
    max_pixels = options.max_pixels or None
    plan = _Plan(
        cfg=cfg,
        backend_options=backend_options,
        batch_crops=batch_crops,
        images_per_call=max(1, batch_crops // cfg.num_crops),
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor,
        read_cpus=read_cpus,
        member_bytes=options.max_member_bytes or member_cap(max_pixels),
        max_pixels=max_pixels,
    )
    threads = backend_options["threads"]
    say(
        f"model {info.path.name} ({info.meta.model.name}, {info.precision}); {cfg.num_crops} "
        f"{cfg.layout} crops of {cfg.crop_size}px per image, batches of {batch_crops} crops "
        f"({plan.images_per_call} image(s) per actor call); {actors} scoring actor(s) with "
        f"{gpus_per_actor:g} GPU(s), {cpus_per_actor:g} CPU(s)"
        + (f" and {threads} ONNX Runtime thread(s)" if threads else "")
        + f" each; Ray {ray.__version__}, cluster {_resources(resources)}"
    )
    return plan


def _name_units(
    inputs: list[str],
    files: UriFiles,
    options: RayScoreOptions,
    plan: _Plan,
    done: dict[str, str],
    stats: RayRunStats,
) -> tuple[list[str], int]:
    """The naming pass: every input once (no member bytes read), grouped into read units;
    inputs already in the output (``--resume``) are left out and counted."""
    fmt_key = parquet_text if options.fmt == "parquet" else (lambda s: s)

    def left_out(source: str) -> bool:
        if not done:
            return False
        status = done.get(normalise_key(fmt_key(source)))
        if status is None:
            return False
        stats.resumed += 1
        stats.resumed_failed += status == "error"
        return True

    items = iter_any(
        inputs,
        files,
        skipped=lambda s, r: stats.skipped.append((s, r)),
        read_data=False,
        max_member_bytes=plan.member_bytes,
    )
    units: list[str] = []
    expected = 0
    for unit, n in units_of(items, options.files_per_task, left_out):
        units.append(unit)
        expected += n
    return units, expected


def _run(
    units: list[str],
    out: OutputFolder,
    files: UriFiles,
    options: RayScoreOptions,
    plan: _Plan,
    stats: RayRunStats,
    start: float,
) -> int:
    """Stream the rows of the Ray Data pipeline into the part files; the number written."""
    ray = _ray()
    from ray.data import DataContext

    writer = PartWriter(out, options.fmt, options.rows_per_file, options.seconds_per_file)
    rows = _InOrder(writer, stats)
    context = DataContext.get_current()
    limits = context.execution_options.resource_limits
    saved = (
        context.execution_options.preserve_order,
        context.enable_progress_bars,
        context.target_max_block_size,
    )
    context.execution_options.preserve_order = False  # _InOrder restores the input order
    context.enable_progress_bars = options.progress
    # A read task's batches leave it one by one: Ray Data would otherwise gather its output up
    # to 128 MiB blocks (a whole shard of crops, held until the shard is decoded).
    context.target_max_block_size = max(1 << 20, int(plan.batch_bytes / 1.25))
    # Decoded crops queued ahead of the actors are bounded by this budget, not by the archive
    # (Ray Data's default is a share of the whole object store: GBs, filled by a fast decode).
    budget = options.object_store_bytes or max(128 << 20, 8 * plan.batch_bytes * plan.actors)
    context.execution_options.resource_limits = limits.copy(object_store_memory=budget)
    try:
        if units:
            ds = _dataset(units, files, options, plan)
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    if not stats.first_row_seconds:
                        stats.first_row_seconds = time.perf_counter() - start
                    rows.add(batch)
            except ray.exceptions.RayError as exc:
                raise RayJobError(
                    f"the Ray run failed after {stats.images} row(s) (the complete part files "
                    f"are kept: rerun with --resume): {first_line(exc)}"
                ) from exc
        rows.finish()
        writer.close_part()
    except BaseException:
        writer.abandon()
        raise
    finally:
        (
            context.execution_options.preserve_order,
            context.enable_progress_bars,
            context.target_max_block_size,
        ) = saved
        context.execution_options.resource_limits = limits
        stats.parts = writer.parts
    return rows.written


def _suffix_backend(model: str) -> str | None:
    from .scorer import backend_for_path

    try:
        return backend_for_path(model)
    except LodaError:
        return None


def _resources(resources: dict[str, float]) -> str:
    keys = [k for k in ("CPU", "GPU") if k in resources]
    return ", ".join(f"{resources[k]:g} {k}" for k in keys) or "no resources"


class _InOrder:
    """Rows to the writer in input order (``seq``), once each.

    Ray Data hands blocks over as tasks produce them (``preserve_order`` off: decode and scoring
    overlap, and no task's output waits for a whole archive to be read), so a row can come ahead
    of its turn: it waits here (a few hundred bytes) until the rows before it came. A row whose
    ``seq`` came already (a retried task's) is dropped and counted.
    """

    def __init__(self, writer: PartWriter, stats: RayRunStats) -> None:
        self.writer = writer
        self.stats = stats
        self.next = 0
        self.pending: dict[int, ResultRow] = {}
        self.written = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        stats = self.stats
        for i, seq in enumerate(batch["seq"].tolist()):
            if seq < self.next or seq in self.pending:
                stats.duplicates_dropped += 1
                continue
            self.pending[seq] = ResultRow(
                source=str(batch["source"][i]),
                score=_opt_float(batch["score"][i]),
                spread=_opt_float(batch["spread"][i]),
                mos=_opt_float(batch["mos"][i]),
                width=_opt_int(batch["width"][i]),
                height=_opt_int(batch["height"][i]),
                status=str(batch["status"][i]),
                error=str(batch["error"][i] or ""),
            )
            stats.crops += int(batch["_crops"][i])
            stats.infer_seconds += float(batch["_infer"][i])
        while self.next in self.pending:
            self._write(self.pending.pop(self.next))
            self.next += 1

    def finish(self) -> None:
        """Rows after a gap (an input that got no row, which fails the run): written in order."""
        for seq in sorted(self.pending):
            self._write(self.pending.pop(seq))

    def _write(self, row: ResultRow) -> None:
        self.writer.write(row)
        self.written += 1
        self.stats.images += 1
        if row.status == "ok":
            self.stats.ok += 1
        else:
            self.stats.failed += 1


def _opt_float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _opt_int(value: Any) -> int | None:
    value = int(value)
    return None if value < 0 else value


def _dataset(units: list[str], files: UriFiles, options: RayScoreOptions, plan: _Plan) -> Any:
    """Read tasks (one per unit) -> the scoring actor pool."""
    import ray.data

    ds = ray.data.from_items([{"unit": u} for u in units], override_num_blocks=len(units))
    # Retries and restarts are set explicitly (Ray Data's actor default is to restart for ever,
    # which turns a model that kills its actor on every batch into a run that never ends). Ray
    # takes them only as free remote arguments (deprecated, with no named parameter yet).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            read_decode,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={
                "cfg": plan.cfg.to_dict(),
                "seed": options.seed,
                "max_pixels": plan.max_pixels,
                "max_member_bytes": plan.member_bytes,
                "rows_per_batch": plan.images_per_call,
                "files": files,
            },
            num_cpus=plan.read_cpus,
            max_retries=options.max_retries,
        )
        return ds.map_batches(
            ScoreActor,
            batch_size=plan.images_per_call,
            batch_format="numpy",
            fn_constructor_kwargs={
                "model": os.path.abspath(options.model),
                "backend": options.backend,
                "backend_options": plan.backend_options,
                "batch_size": plan.batch_crops,
                "crop_size": plan.cfg.crop_size,
                "kill_marker": os.environ.get(KILL_HOOK_ENV) or None,
            },
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_cpus=plan.cpus_per_actor,
            num_gpus=plan.gpus_per_actor or None,
            max_restarts=options.max_retries,
            max_task_retries=options.max_retries,
        )
