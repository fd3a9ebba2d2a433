"""The Python API: ``Scorer.open(artifact)`` and whole-image scores.

``Scorer.open(path)`` picks the backend from the artifact's suffix (``.onnx`` -> ONNX Runtime,
``.engine`` / ``.plan`` -> TensorRT, ``.safetensors`` -> the PyTorch reference), and takes the
preprocessing (resize rule, crop size, number of crops, layout) and the score calibration from
the metadata the artifact carries. An image's score is the mean of its crop scores (the
authors' evaluation rule); ``spread`` is their population standard deviation; ``mos`` is the
calibrated score on the training dataset's MOS scale when the artifact carries a calibration.

Crops of consecutive images are packed into backend batches of ``batch_size`` crops
(:class:`CropPacker`), so a GPU sees full batches however many crops an image has.

Random crop layouts are reproducible per image: image ``source`` with ``--seed S`` gets the
generator ``numpy.random.default_rng(image_seed(S, source))``, so a score never depends on
which worker or in which order an image was processed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loda.errors import one_line
from loda.metadata import Calibration, CheckpointMeta
from loda.preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    PreprocessConfig,
    preprocess_image_with_info,
)

from .backend import Backend, BackendError

__all__ = [
    "BACKENDS",
    "DEFAULT_BATCH_CROPS",
    "CropPacker",
    "ImageScore",
    "PreparedImage",
    "Scorer",
    "backend_class",
    "backend_for_path",
    "image_seed",
    "open_backend",
    "prepare_image",
]

#: Backend name -> "module:class" (imported on demand: the torch backend imports torch).
BACKENDS: dict[str, str] = {
    "onnxruntime": "loda.runtime.ort_backend:OnnxRuntimeBackend",
    "tensorrt": "loda.runtime.trt_backend:TensorRTBackend",
    "tensorrt-rtx": "loda.runtime.trt_backend:TensorRTRtxBackend",
    "torch": "loda.runtime.torch_backend:TorchBackend",
}
_SUFFIX_BACKEND = {
    ".onnx": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".safetensors": "torch",
}
#: Crops per backend call: four 15-crop images.
DEFAULT_BATCH_CROPS = 60


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def backend_for_path(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_BACKEND:
        raise BackendError(
            f"cannot tell the backend of {path}: expected "
            f"{', '.join(sorted(_SUFFIX_BACKEND))} (loda-score: or name one with --backend)"
        )
    return _SUFFIX_BACKEND[suffix]


def open_backend(path: str | os.PathLike, backend: str | None = None, **options: Any) -> Backend:
    """Open ``path`` with ``backend`` (default: chosen from the suffix).

    An ONNX file is checked first (``loda.onnx_files``): a damaged one, or one whose external
    data lies outside its folder, is one line and nothing outside the folder is read.
    """
    name = backend or backend_for_path(path)
    if name == "onnxruntime":
        from loda.onnx_files import ModelFileError, check_onnx_file

        try:
            check_onnx_file(path)
        except ModelFileError as exc:
            raise BackendError(str(exc)) from None
    return backend_class(name).open(path, **options)


def image_seed(seed: int, source: str) -> int:
    """Per-image seed for random crops: independent of order and worker (see module doc)."""
    digest = hashlib.sha256(f"{int(seed)}\0{source}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """An image ready for a backend: its crops and original size."""

    crops: np.ndarray
    width: int
    height: int


def prepare_image(
    source: Any,
    cfg: PreprocessConfig,
    *,
    name: str,
    seed: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> PreparedImage:
    """Decode / resize / crop one image (path, bytes or RGB array) with the shared code.

    ``max_pixels`` (``None``: no limit) is the only pixel limit: see ``_pillow_limit``.
    """
    rng = None if cfg.layout == "grid" else image_seed(0 if seed is None else seed, name)
    with _pillow_limit(max_pixels):
        info = preprocess_image_with_info(source, cfg, seed=rng, max_pixels=max_pixels)
    return PreparedImage(info.crops, info.original_width, info.original_height)


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_limit(max_pixels: int | None) -> Iterator[None]:
    """Lift Pillow's own bomb limit to ``max_pixels`` (or off, for None) during one decode.

    Pillow refuses any image over twice its process-wide ``PIL.Image.MAX_IMAGE_PIXELS`` (179
    Mpx by default), whatever ``max_pixels`` says. ``decode_image`` checks ``max_pixels`` on
    the header before decoding, so within Pillow's default (``DEFAULT_MAX_PIXELS``) nothing is
    touched; above it (or for None) Pillow's limit is raised under a lock and restored after.
    Other threads that decode through Pillow meanwhile see the raised limit.
    """
    if max_pixels is not None and max_pixels <= DEFAULT_MAX_PIXELS:
        yield
        return
    from PIL import Image

    with _PILLOW_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        if previous is not None:
            Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max(previous, max_pixels)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


@dataclass(frozen=True, eq=False)
class ImageScore:
    """One image's result; ``error`` is a one-line message when it could not be scored."""

    source: str
    score: float | None = None
    spread: float | None = None
    mos: float | None = None
    width: int | None = None
    height: int | None = None
    crop_scores: np.ndarray | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def summarize(
    source: str,
    crop_scores: np.ndarray,
    width: int,
    height: int,
    calibration: Calibration | None,
) -> ImageScore:
    """Image score (mean), spread (std) and calibrated MOS from float crop scores."""
    s = np.asarray(crop_scores, dtype=np.float64)
    score = float(s.mean())
    mos = None if calibration is None else float(np.asarray(calibration(np.array([score])))[0])
    return ImageScore(source, score, float(s.std()), mos, width, height, crop_scores)


class CropPacker:
    """Packs the crops of consecutive images into backend batches of ``batch_size`` crops.

    ``add(key, crops)`` queues an image (``crops`` may have 0 rows: it completes at once) and
    runs full batches; ``finish()`` runs what is left. Both return the images completed so far,
    in the order they were added, as ``(key, crop_scores)``. Images may straddle batches.
    """

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._infer = infer
        self.batch_size = batch_size
        # pending images: [key, n_crops, scores filled so far (list of arrays), n_filled]
        self._pending: deque[list[Any]] = deque()
        self._queued: list[np.ndarray] = []  # crops not yet sent, in order
        self._n_queued = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, key: Any, crops: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        self._pending.append([key, len(crops), [], 0])
        if len(crops):
            self._queued.append(crops)
            self._n_queued += len(crops)
        while self._n_queued >= self.batch_size:
            self._run(self.batch_size)
        return self._completed()

    def finish(self) -> list[tuple[Any, np.ndarray]]:
        while self._n_queued:
            self._run(min(self._n_queued, self.batch_size))
        return self._completed()

    def _run(self, n: int) -> None:
        batch = np.concatenate(self._queued) if len(self._queued) > 1 else self._queued[0]
        head, rest = batch[:n], batch[n:]
        self._queued = [rest] if len(rest) else []
        self._n_queued = len(rest)
        scores = np.asarray(self._infer(head))
        at = 0
        for entry in self._pending:
            need = entry[1] - entry[3]
            if need == 0:
                continue
            take = min(need, n - at)
            entry[2].append(scores[at : at + take])
            entry[3] += take
            at += take
            if at == n:
                break

    def _completed(self) -> list[tuple[Any, np.ndarray]]:
        done = []
        while self._pending and self._pending[0][3] == self._pending[0][1]:
            key, _n, parts, _f = self._pending.popleft()
            done.append((key, np.concatenate(parts) if parts else np.zeros(0, np.float32)))
        return done


class Scorer:
    """A backend plus the preprocessing and calibration its artifact carries."""

    def __init__(self, backend: Backend, *, batch_size: int | None = None) -> None:
        self.backend = backend
        self.meta: CheckpointMeta = backend.info.meta
        self.preprocess: PreprocessConfig = self.meta.preprocess
        self.calibration: Calibration | None = self.meta.calibration
        cap = backend.max_batch
        size = batch_size or DEFAULT_BATCH_CROPS
        self.batch_size = min(size, cap) if cap else size

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        backend: str | None = None,
        batch_size: int | None = None,
        **options: Any,
    ) -> Scorer:
        """Open an artifact (.onnx, .engine, .safetensors); ``options`` go to the backend."""
        return cls(open_backend(path, backend, **options), batch_size=batch_size)

    def config(
        self, *, num_crops: int | None = None, layout: str | None = None
    ) -> PreprocessConfig:
        """The artifact's preprocessing with the crop count / layout overridden."""
        changes = {k: v for k, v in (("num_crops", num_crops), ("layout", layout)) if v is not None}
        return dataclasses.replace(self.preprocess, **changes) if changes else self.preprocess

    def score_crops(self, crops: np.ndarray) -> np.ndarray:
        """float32 per-crop scores of uint8 NHWC crops."""
        return self.backend.infer(crops)

    def iter_scores(
        self,
        items: Iterable[tuple[str, PreparedImage | BaseException]],
        *,
        infer: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Iterator[ImageScore]:
        """Score prepared images (or pass their errors on), packing crops into batches.

        Results come in input order; an error item becomes an ``ImageScore`` with ``error``.
        ``infer`` replaces ``self.backend.infer`` (e.g. a timed wrapper around it).
        """
        packer = CropPacker(infer or self.backend.infer, self.batch_size)
        empty = np.zeros((0, self.crop_size, self.crop_size, 3), np.uint8)
        for name, item in items:
            if isinstance(item, BaseException):
                yield from self._results(packer.add((name, item), empty))
            else:
                yield from self._results(packer.add((name, item), item.crops))
        yield from self._results(packer.finish())

    @property
    def crop_size(self) -> int:
        return self.preprocess.crop_size

    def _results(self, done: list[tuple[Any, np.ndarray]]) -> Iterator[ImageScore]:
        for (name, item), scores in done:
            if isinstance(item, BaseException):
                yield ImageScore(name, error=one_line(item))
            else:
                yield summarize(name, scores, item.width, item.height, self.calibration)

    def score_images(
        self,
        images: Iterable[Any],
        *,
        names: Sequence[str] | None = None,
        num_crops: int | None = None,
        layout: str | None = None,
        seed: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> list[ImageScore]:
        """Scores of images given as paths, bytes, file objects or RGB uint8 arrays.

        An image that cannot be decoded gets an ``ImageScore`` with ``error`` (never raises
        for one bad image). ``names`` label the results (default: the path, or ``image[i]``).
        """
        cfg = self.config(num_crops=num_crops, layout=layout)
        images = list(images)
        if names is None:
            names = [
                os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"image[{i}]"
                for i, x in enumerate(images)
            ]
        elif len(names) != len(images):
            raise ValueError(f"{len(names)} names for {len(images)} images")

        def prepared() -> Iterator[tuple[str, PreparedImage | BaseException]]:
            for name, image in zip(names, images, strict=True):
                try:
                    yield (
                        name,
                        prepare_image(image, cfg, name=name, seed=seed, max_pixels=max_pixels),
                    )
                except (ImageDecodeError, ValueError, OSError) as exc:
                    yield name, exc

        return list(self.iter_scores(prepared()))

    def score_paths(self, paths: Iterable[str | os.PathLike], **kwargs: Any) -> list[ImageScore]:
        """``score_images`` for files on disk, each labelled with its path."""
        paths = [os.fspath(p) for p in paths]
        return self.score_images(paths, names=paths, **kwargs)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
