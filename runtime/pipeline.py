"""The ``loda-score`` pipeline: decode in worker processes, infer in full batches, write rows.

::

    feeder thread                 worker processes (-j N)           main thread
    inputs (files, archives) ->   decode, resize, crop       ->     pack crops into batches,
    submit, at most `queue`       (loda.preprocess, shared)         backend.infer, one row per
    images in flight                                                image, in input order

- Bounded: the feeder blocks when ``queue`` images are in flight, so memory is bounded by the
  queue size (each in-flight image holds its file bytes or its crops), not by the archive size.
- Overlapped: workers decode the next images while the backend runs the current batch (ONNX
  Runtime, TensorRT and torch release the GIL while they compute).
- Ordered and deterministic: rows come in input order, and an image's crops do not depend on
  the worker that made them (random layouts draw from a per-image seed), so ``-j 1`` and
  ``-j 8`` write identical files.
- One bad input never stops a run: a decode failure (or an input the reader flagged) becomes an
  error row; only a backend failure (the model itself) stops the run.

``jobs=0`` decodes in the feeder thread (no processes; for debugging and tiny inputs).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loda.errors import LodaError, one_line
from loda.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, PreprocessConfig

from .scorer import ImageScore, PreparedImage, Scorer, prepare_image

__all__ = ["PipelineError", "PipelineOptions", "RunStats", "default_jobs", "score_items"]


class PipelineError(LodaError):
    """The run itself cannot go on (a worker process died); one line."""


def default_jobs() -> int:
    """Worker processes by default: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class PipelineOptions:
    cfg: PreprocessConfig
    seed: int | None = None
    jobs: int = 1
    queue: int | None = None  # images in flight; default 2 * jobs + 2 batches of images
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def queue_size(self, batch_crops: int) -> int:
        if self.queue is not None:
            return max(1, self.queue)
        per_batch = max(1, -(-batch_crops // self.cfg.num_crops))
        return 2 * max(1, self.jobs) + 2 * per_batch


@dataclass
class RunStats:
    images: int = 0
    ok: int = 0
    failed: int = 0
    crops: int = 0
    seconds: float = 0.0
    infer_seconds: float = 0.0
    interrupted: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------

_W: dict[str, Any] = {}


def _worker_init(cfg: dict[str, Any], seed: int | None, max_pixels: int | None) -> None:
    # The main process owns Ctrl-C / SIGTERM: it flushes the output, then stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _set_worker_state(PreprocessConfig.from_dict(cfg), seed, max_pixels)


def _set_worker_state(cfg: PreprocessConfig, seed: int | None, max_pixels: int | None) -> None:
    _W.update(cfg=cfg, seed=seed, max_pixels=max_pixels)


def _prepare(source: str, path: str | None, data: bytes | None) -> tuple:
    """``(crops, width, height, None)`` or ``(None, None, None, error line)``."""
    try:
        image = prepare_image(
            data if path is None else path,
            _W["cfg"],
            name=source,
            seed=_W["seed"],
            max_pixels=_W["max_pixels"],
        )
        return image.crops, image.width, image.height, None
    except Exception as exc:  # one bad input never stops a run: it becomes an error row
        return None, None, None, one_line(exc)


# --------------------------------------------------------------------------------------------
# Main side
# --------------------------------------------------------------------------------------------


class _Done:
    """A finished result with the ``Future`` interface the main loop reads."""

    def __init__(self, value: tuple) -> None:
        self._value = value

    def result(self) -> tuple:
        return self._value


_END = object()


def _worker_died(source: str) -> PipelineError:
    return PipelineError(
        f"a decode worker died near {source} (killed, or out of memory); the rows so far are "
        "written: rerun with --resume (and a smaller --queue or -j)"
    )


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _feeder(
    items: Iterable[Any],
    submit: Callable[[str, str | None, bytes | None], Any],
    q: queue.Queue,
    stop: threading.Event,
) -> None:
    try:
        for item in items:
            if stop.is_set():
                return
            if item.error is not None:
                entry = (item.source, _Done((None, None, None, item.error)))
            else:
                try:
                    entry = (item.source, submit(item.source, item.path, item.data))
                except BrokenProcessPool:
                    raise _worker_died(item.source) from None
            if not _put(q, entry, stop):
                return
        _put(q, _END, stop)
    except BaseException as exc:  # an input error (e.g. unreadable list): stop the run
        _put(q, exc, stop)


def score_items(
    scorer: Scorer,
    items: Iterable[Any],
    options: PipelineOptions,
    on_result: Callable[[ImageScore], None],
) -> RunStats:
    """Score ``items`` (``loda.runtime.inputs.InputItem``) and call ``on_result`` per image.

    Returns the statistics; ``KeyboardInterrupt`` and other exceptions propagate after the
    workers are stopped (results already passed to ``on_result`` are complete rows).
    """
    stats = RunStats()
    start = time.perf_counter()
    cfg = options.cfg
    stop = threading.Event()
    q: queue.Queue = queue.Queue(maxsize=options.queue_size(scorer.batch_size))
    executor: ProcessPoolExecutor | None = None
    if options.jobs > 0:
        method = "forkserver" if sys.platform.startswith("linux") else "spawn"
        executor = ProcessPoolExecutor(
            max_workers=options.jobs,
            mp_context=multiprocessing.get_context(method),
            initializer=_worker_init,
            initargs=(cfg.to_dict(), options.seed, options.max_pixels),
        )

        def submit(source: str, path: str | None, data: bytes | None) -> Future:
            return executor.submit(_prepare, source, path, data)

    else:
        _set_worker_state(cfg, options.seed, options.max_pixels)

        def submit(source: str, path: str | None, data: bytes | None) -> _Done:
            return _Done(_prepare(source, path, data))

    feeder = threading.Thread(
        target=_feeder, args=(items, submit, q, stop), name="loda-feeder", daemon=True
    )
    feeder.start()

    def prepared() -> Iterator[tuple[str, PreparedImage | BaseException]]:
        while True:
            entry = q.get()
            if entry is _END:
                return
            if isinstance(entry, BaseException):
                raise entry
            source, future = entry
            try:
                crops, width, height, error = future.result()
            except BrokenProcessPool:
                raise _worker_died(source) from None
            if error is not None:
                yield source, ImageDecodeError(error)
            else:
                yield source, PreparedImage(crops, width, height)

    infer = scorer.backend.infer

    def timed_infer(crops: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = infer(crops)
        stats.infer_seconds += time.perf_counter() - t0
        stats.crops += len(crops)
        return out

    try:
        for result in scorer.iter_scores(prepared(), infer=timed_infer):
            stats.images += 1
            if result.ok:
                stats.ok += 1
            else:
                stats.failed += 1
            on_result(result)
    finally:
        stop.set()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        feeder.join(timeout=5)
        stats.seconds = time.perf_counter() - start
    return stats
