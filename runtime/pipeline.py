"""The ``loda-score`` pipeline: decode in worker processes, infer in full batches, write rows.

::

    feeder thread                 worker processes (-j N)           main thread
    inputs (files, archives) ->   decode, resize, crop       ->     pack crops into batches,
    submit, at most `queue`       (loda.preprocess, shared)         backend.infer, one row per
    images in flight                                                image, in input order

- Bounded: the feeder blocks when ``queue`` images are in flight, so memory is bounded by the
  queue size (each in-flight image holds its crops), not by the archive size. Archive members
  travel as bytes: they are written to the worker's pipe as they are (no pickled copy), and
  at most ``member_budget`` bytes of them are in the workers at once (one member always
  goes), so a run of large members takes the same memory at ``-j 2`` and ``-j 16``.
- Overlapped: workers decode the next images while the backend runs the current batch (ONNX
  Runtime, TensorRT and torch release the GIL while they compute).
- Ordered and deterministic: rows come in input order, and an image's crops do not depend on
  the worker that made them (random layouts draw from a per-image seed), so ``-j 1`` and
  ``-j 8`` write identical files.
- One bad input never stops a run: a decode failure (or an input the reader flagged) becomes an
  error row; only a backend failure (the model itself) or a killed worker stops the run.
- A killed worker (kill -9, the out-of-memory killer) ends the run with one line, never a hang:
  tasks go round-robin to workers over private pipes (see ``_Worker``), so a death is seen as
  the end of that pipe.

``jobs=0`` decodes in the feeder thread (no processes; for debugging and tiny inputs).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, BinaryIO

import numpy as np

from loda.errors import LodaError, one_line
from loda.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, PreprocessConfig

from .inputs import open_regular
from .scorer import ImageScore, PreparedImage, Scorer, prepare_image

__all__ = [
    "DecodePool",
    "PipelineError",
    "PipelineOptions",
    "RunStats",
    "default_jobs",
    "score_items",
]


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
    member_budget: int | None = None  # member bytes in the workers at once; None: no bound

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
    decode_seconds: float = 0.0  # CPU time of decode + resize + crops, summed over the workers
    interrupted: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def bottleneck(self, jobs: int) -> str | None:
        """One line saying whether the run was decode-bound or inference-bound, with the two
        rates side by side and a hint; None when either side did no measurable work.

        Decoding: the images the ``jobs`` workers could prepare per second together, from their
        CPU time per image (it assumes a core per worker). Inference: images per second of the
        backend's own time. The smaller one bounds the run.
        """
        if not self.images or self.decode_seconds <= 0 or self.infer_seconds <= 0:
            return None
        workers = max(jobs, 1)
        per_worker = self.images / self.decode_seconds
        decode_rate, infer_rate = per_worker * workers, self.images / self.infer_seconds
        if decode_rate < infer_rate:
            verdict = "decode-bound"
            hint = "more decode workers (-j), or --decode fast for camera-size JPEGs"
        else:
            verdict = "inference-bound"
            hint = "a lower-precision graph (FP16/INT8) or a GPU backend is what speeds it up"
        return (
            f"{verdict}: decoding {decode_rate:.1f} images/s ({workers} worker(s) x "
            f"{per_worker:.1f}) vs inference {infer_rate:.1f} images/s; {hint}"
        )


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------

_W: dict[str, Any] = {}


def _set_worker_state(cfg: PreprocessConfig, seed: int | None, max_pixels: int | None) -> None:
    _W.update(cfg=cfg, seed=seed, max_pixels=max_pixels)


# Object reprs ("<_io.BytesIO object at 0x7f...>") differ from run to run: never in a row.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def error_line(exc: BaseException) -> str:
    """The one-line message of a failed input, without object reprs."""
    return _OBJECT_REPR.sub("the image data", one_line(exc))


def prepare_item(
    source: str,
    path: str | None,
    data: bytes | bytearray | None,
    cfg: PreprocessConfig,
    seed: int | None,
    max_pixels: int | None,
    opener: Callable[..., BinaryIO] = open_regular,
) -> tuple:
    """Decode and crop one input (a file ``path`` or member ``data``): ``(crops, width, height,
    None)``, or ``(None, None, None, error line)`` when it cannot be scored.

    ``opener(path, name=source)`` opens ``path`` (default: a local regular file, which never
    blocks on a FIFO put where the file was; loda-score-ray passes a URI store's opener).
    """
    try:
        kwargs = {"name": source, "seed": seed, "max_pixels": max_pixels}
        if path is None:
            image = prepare_image(data, cfg, **kwargs)
        else:
            with opener(path, name=source) as f:
                image = prepare_image(f, cfg, **kwargs)
        return image.crops, image.width, image.height, None
    except Exception as exc:  # one bad input never stops a run: it becomes an error row
        return None, None, None, error_line(exc)


def _prepare(source: str, path: str | None, data: bytes | bytearray | None) -> tuple:
    """:func:`prepare_item` with the worker's settings, plus the CPU seconds it took (the
    decode side of the decode-bound / inference-bound verdict)."""
    t0 = time.thread_time()
    result = prepare_item(source, path, data, _W["cfg"], _W["seed"], _W["max_pixels"])
    return (*result, time.thread_time() - t0)


def _worker_main(conn: Connection, cfg: dict[str, Any], seed: int | None, max_pixels) -> None:
    """A decode worker: answer each task on ``conn`` in the order it came, until EOF."""
    # The main process owns Ctrl-C / SIGTERM: it flushes the output, then stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _set_worker_state(PreprocessConfig.from_dict(cfg), seed, max_pixels)
    # A task is (source, path, size) and, when size is not None, the member's bytes as one raw
    # message (no pickle: the bytes object received is decoded without a copy). A closed pipe
    # (the main process ended or was killed) ends the worker quietly.
    try:
        while True:
            source, path, size = conn.recv()
            data = None if size is None else conn.recv_bytes()
            result = _prepare(source, path, data)
            del data
            conn.send(result)
    except (EOFError, OSError, KeyboardInterrupt):
        return


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


class _Worker:
    """One decode process and the parent's end of its private pipe.

    The pipe is private: once the process has started the parent closes the child's end, so
    the process is the only writer, and its death (even half-way through sending a result) is
    an end of file for the reader thread, never a wait that does not end. (A shared result
    queue, as in ``concurrent.futures.ProcessPoolExecutor``, can block for ever when a worker
    is killed in the middle of a large result.)
    """

    def __init__(self, ctx: Any, index: int, initargs: tuple) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main, args=(child, *initargs), name=f"loda-decode-{index}", daemon=True
        )
        self.process.start()
        child.close()
        self.pending: deque[tuple[Future, str]] = deque()
        self.lock = threading.Lock()
        self.dead = False
        self.reader = threading.Thread(target=self._read, name=f"loda-reader-{index}", daemon=True)
        self.reader.start()

    def submit(self, source: str, path: str | None, data: bytes | bytearray | None) -> Future:
        future: Future = Future()
        with self.lock:
            if self.dead:
                raise _worker_died(source)
            self.pending.append((future, source))
        try:
            self.conn.send((source, path, None if data is None else len(data)))
            if data is not None:
                self.conn.send_bytes(data)  # written from the buffer itself, not a copy
        except (OSError, ValueError):  # the process is gone; the reader fails the futures
            raise _worker_died(source) from None
        return future

    def _read(self) -> None:
        while True:
            try:
                result = self.conn.recv()
            except (EOFError, OSError):
                break
            with self.lock:
                future, _ = self.pending.popleft()
            future.set_result(result)
        with self.lock:
            self.dead = True
            failed, self.pending = list(self.pending), deque()
        for future, source in failed:
            future.set_exception(_worker_died(source))

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)

    def close(self) -> None:
        self.reader.join(timeout=5)
        self.conn.close()


class DecodePool:
    """``jobs`` decode processes, tasks dealt round-robin; each worker answers in order.

    ``submit(source, path, data)`` returns a ``Future`` of ``(crops, width, height, error)``;
    ``initargs`` is ``(PreprocessConfig.to_dict(), seed, max_pixels)``. Processes start lazily
    (three images start at most three). ``stop()`` kills them, ``close()`` releases the pipes.
    ``member_budget``: ``submit`` waits while member bytes already handed out and not yet
    answered would exceed it (a single member always goes).
    """

    def __init__(self, jobs: int, initargs: tuple, member_budget: int | None = None) -> None:
        method = "forkserver" if sys.platform.startswith("linux") else "spawn"
        self._ctx = multiprocessing.get_context(method)
        self._jobs = jobs
        self._initargs = initargs
        self._workers: list[_Worker] = []
        self._count = 0
        self._budget = member_budget
        self._in_flight = 0
        self._budget_cv = threading.Condition()

    def _release(self, n: int) -> None:
        with self._budget_cv:
            self._in_flight -= n
            self._budget_cv.notify_all()

    def submit(self, source: str, path: str | None, data: bytes | bytearray | None) -> Future:
        n = 0 if data is None else len(data)
        if self._budget is not None and n:
            with self._budget_cv:
                while self._in_flight and self._in_flight + n > self._budget:
                    if any(w.dead for w in self._workers):
                        raise _worker_died(source)
                    self._budget_cv.wait(0.1)
                self._in_flight += n
        index = self._count % self._jobs
        self._count += 1
        try:
            if index == len(self._workers):
                self._workers.append(_Worker(self._ctx, index, self._initargs))
            future = self._workers[index].submit(source, path, data)
        except BaseException:
            self._release(n)
            raise
        if n:
            future.add_done_callback(lambda _f: self._release(n))
        return future

    def stop(self) -> None:
        """Kill the processes (a sender blocked on a full pipe gets a broken pipe)."""
        for worker in self._workers:
            worker.stop()

    def close(self) -> None:
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()


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
                entry = (item.source, _Done((None, None, None, item.error, 0.0)))
            else:
                entry = (item.source, submit(item.source, item.path, item.data))
            del item  # the member's bytes are the worker's now: hold none while reading on
            if not _put(q, entry, stop):
                return
        _put(q, _END, stop)
    except BaseException as exc:  # an input error (e.g. unreadable list), a dead worker: stop
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
    pool: DecodePool | None = None
    if options.jobs > 0:
        pool = DecodePool(
            options.jobs,
            (cfg.to_dict(), options.seed, options.max_pixels),
            member_budget=options.member_budget,
        )
        submit = pool.submit
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
            crops, width, height, error, cpu_seconds = future.result()
            stats.decode_seconds += cpu_seconds
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
        if pool is not None:
            pool.stop()
        feeder.join(timeout=5)
        if pool is not None:
            pool.close()
        stats.seconds = time.perf_counter() - start
    return stats
