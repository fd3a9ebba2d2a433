"""The work of ``loda-score-ray``'s Ray tasks: read units, decode + crop, score in actors.

* A *unit* is what one read task does: a chunk of files (and error items) named by the driver,
  or one archive (a WebDataset-style shard) with the member sources the driver named. JSON keeps
  lone surrogates (file names that are not UTF-8) as escapes that load back to the same strings.
* The read task reads the files / the archive again (the bytes this time, local or by URI:
  ``ray_fs``), emits exactly the named sources once each, and decodes + crops them with the one
  preprocessing (``pipeline.prepare_item``), so member bytes never travel through Ray's object
  store; the crops travel to the actors as one bytes value per image.
* The actor opens one ``Scorer`` and reduces each batch with ``Scorer.iter_scores``, the function
  ``loda-score`` uses (mean of the crop scores, population std, calibrated MOS).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from loda.preprocess import ImageDecodeError, PreprocessConfig

from .inputs import MEMBER_SEP, InputItem, is_archive_name, open_regular
from .output import ResultRow
from .pipeline import prepare_item
from .ray_fs import UriFiles, is_uri, iter_any, local_path
from .ray_output import RayJobError
from .scorer import PreparedImage, Scorer

__all__ = ["KILL_HOOK_ENV", "ScoreActor", "read_decode", "units_of"]

#: Test-only: a marker-file path; the first scoring actor to see no marker creates it and exits
#: (``os._exit``) on its first batch, so the fault-tolerance path is exercised for real.
KILL_HOOK_ENV = "LODA_RAY_TEST_KILL_FIRST_ACTOR"


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


def units_of(
    items: Iterator[InputItem], files_per_task: int, left_out: Callable[[str], bool]
) -> Iterator[tuple[str, int]]:
    """``(unit as JSON, number of rows it yields)`` in input order.

    A unit is ``{"first": SEQ, "items": [[source, path, error], ...]}`` (files and error items)
    or ``{"first": SEQ, "archive": path, "members": [source, ...]}``; its rows are numbered from
    ``first`` in input order (the row's ``seq``, which the driver writes in order). JSON keeps
    lone surrogates (file names that are not UTF-8) as escapes that load back to the same strings.
    """
    chunk: list[list[Any]] = []
    archive: str | None = None
    members: list[str] = []
    first = 0

    def flush_chunk() -> Iterator[tuple[str, int]]:
        nonlocal first
        if chunk:
            yield json.dumps({"first": first, "items": chunk}), len(chunk)
            first += len(chunk)
            chunk.clear()

    def flush_archive() -> Iterator[tuple[str, int]]:
        nonlocal first
        if members:
            unit = {"first": first, "archive": archive, "open": local_path(archive)}
            yield json.dumps(unit | {"members": members}), len(members)
            first += len(members)
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
        path = None if item.path is None else local_path(item.path)  # tasks' cwd differs
        chunk.append([item.source, path, item.error])
        if len(chunk) >= files_per_task:
            yield from flush_chunk()
    yield from flush_archive()
    yield from flush_chunk()


def _unit_items(
    unit: dict[str, Any], max_member_bytes: int, files: UriFiles
) -> Iterator[tuple[int, InputItem]]:
    """``(seq, item)`` of a unit, with member bytes: exactly the sources it names, once each."""
    first = unit["first"]
    if "items" in unit:
        for i, (source, path, error) in enumerate(unit["items"]):
            yield first + i, InputItem(source, path=path, error=error)
        return
    wanted = {source: first + i for i, source in enumerate(unit["members"])}  # ordered
    spelled, opened = unit["archive"], unit["open"]  # sources keep the spelling of the INPUT
    for item in iter_any([opened], files, max_member_bytes=max_member_bytes):
        if spelled != opened and item.source.startswith(opened):
            item = dataclasses.replace(item, source=spelled + item.source[len(opened) :])
        seq = wanted.pop(item.source, None)
        if seq is not None:
            yield seq, item
        del item
    for source, seq in wanted.items():  # named by the first read, gone in this one
        error = "cannot read member: not found when the archive was read"
        yield seq, InputItem(source, error=error)


def _decode(
    item: InputItem, cfg: PreprocessConfig, seed: int, max_pixels: int | None, files: UriFiles
) -> tuple:
    """``(crops, width, height, None)`` or ``(None, None, None, error line)``, as ``loda-score``'s
    decode workers answer."""
    if item.error is not None:
        return None, None, None, item.error
    # a URI is read through a buffered reader of its store (no whole-object download first)
    opener = files.open if item.path is not None and is_uri(item.path) else open_regular
    return prepare_item(item.source, item.path, item.data, cfg, seed, max_pixels, opener)


def _columns(rows: list[tuple]) -> dict[str, np.ndarray]:
    seqs, sources, crops, counts, widths, heights, errors = zip(*rows, strict=True)
    return {
        "seq": np.array(seqs, dtype=np.int64),
        "source": np.array(sources, dtype=object),
        "crops": np.array(crops, dtype=object),
        "n": np.array(counts, dtype=np.int64),
        "width": np.array(widths, dtype=np.int64),
        "height": np.array(heights, dtype=np.int64),
        "error": np.array(errors, dtype=object),
    }


def read_decode(
    batch: dict[str, np.ndarray],
    *,
    cfg: dict[str, Any],
    seed: int,
    max_pixels: int | None,
    max_member_bytes: int,
    rows_per_batch: int,
    files: UriFiles,
) -> Iterator[dict[str, np.ndarray]]:
    """Read task: the units of ``batch`` -> decoded images, ``rows_per_batch`` at a time."""
    config = PreprocessConfig.from_dict(cfg)
    rows: list[tuple] = []
    for text in batch["unit"]:
        for seq, item in _unit_items(json.loads(text), max_member_bytes, files):
            source = item.source
            crops, width, height, error = _decode(item, config, seed, max_pixels, files)
            del item  # hold no member's bytes while the next one is read
            if error is None:
                rows.append((seq, source, crops.tobytes(), len(crops), width, height, ""))
            else:
                rows.append((seq, source, b"", 0, -1, -1, error))
            if len(rows) >= rows_per_batch:
                yield _columns(rows)
                rows = []
    if rows:
        yield _columns(rows)


# -- the scoring actor -------------------------------------------------------------------------


class ScoreActor:
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
        if [r.source for r in rows] != list(batch["source"]):
            raise RayJobError("internal: the scores came back in another order than the images")
        return {
            "seq": batch["seq"],
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
