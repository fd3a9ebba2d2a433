"""The backend contract: open an artifact, turn uint8 crops into float scores, close.

Every backend (ONNX Runtime, TensorRT, the PyTorch reference) implements :class:`Backend`;
``abc`` refuses to instantiate one that misses a method, and one conformance test
(``tests/runtime/test_runtime_backends.py``) runs the same checks against each of them.

The contract:

- ``Backend.open(path, **options)`` (classmethod) loads an artifact and reads the LoDa metadata
  that travels with it (model, preprocessing, calibration) into ``backend.info``. A missing
  dependency or device raises :class:`BackendUnavailable`; a bad artifact :class:`BackendError`
  (both one-line :class:`loda.errors.LodaError`).
- ``backend.infer(crops)``: ``crops`` is uint8 ``[n, crop, crop, 3]`` (RGB NHWC, what
  :func:`loda.preprocess.preprocess_image` returns); the result is float32 ``[n]``, one score
  per crop. The base class validates the input, splits it into chunks of at most
  ``max_batch`` crops and calls the backend's ``_infer`` per chunk. ``n == 0`` gives ``[0]``.
- ``backend.close()`` frees the session / engine / buffers; ``infer`` afterwards raises.
  Backends are context managers.

This module imports no torch: the PyTorch backend imports it lazily in its own module.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from loda.errors import LodaError
from loda.metadata import CheckpointMeta

__all__ = ["ArtifactInfo", "Backend", "BackendError", "BackendUnavailable"]


class BackendError(LodaError):
    """An artifact cannot be opened or run by a backend (bad file, wrong format, mismatch)."""


class BackendUnavailable(BackendError):
    """A backend's library or device is missing here; the message says how to get it."""


@dataclass(frozen=True)
class ArtifactInfo:
    """What a backend opened: the file, its LoDa metadata, precision, and where it runs."""

    path: Path
    meta: CheckpointMeta
    precision: str  # fp32 | fp16 | int8 (graph precision) or fp16-autocast / bf16-autocast
    device: str  # "cpu", "cuda:0", ...
    details: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """One way of running a LoDa artifact. Subclasses set ``name`` and ``suffixes``."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]

    def __init__(self, info: ArtifactInfo, *, max_batch: int | None = None) -> None:
        self.info = info
        self.max_batch = max_batch
        self._closed = False

    # -- the contract ------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def open(cls, path: str | os.PathLike, **options: Any) -> Backend:
        """Load ``path`` and its metadata; raise BackendUnavailable / BackendError."""

    @abc.abstractmethod
    def _infer(self, crops: np.ndarray) -> np.ndarray:
        """Scores of one validated, C-contiguous chunk of at most ``max_batch`` crops."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the backend's resources (called once)."""

    # -- shared behaviour ------------------------------------------------------------------------

    @property
    def crop_size(self) -> int:
        return self.info.meta.preprocess.crop_size

    @property
    def closed(self) -> bool:
        return self._closed

    def infer(self, crops: np.ndarray) -> np.ndarray:
        """float32 ``[n]`` scores of uint8 ``[n, crop, crop, 3]`` crops."""
        if self._closed:
            raise BackendError(f"{self.name} backend for {self.info.path} is closed")
        c = self.crop_size
        if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8:
            got = crops.dtype if isinstance(crops, np.ndarray) else type(crops).__name__
            raise BackendError(f"crops must be a uint8 array, got {got}")
        if crops.ndim != 4 or crops.shape[1:] != (c, c, 3):
            raise BackendError(f"crops must have shape [n, {c}, {c}, 3], got {list(crops.shape)}")
        n = len(crops)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        step = self.max_batch or n
        out = []
        for start in range(0, n, step):
            chunk = np.ascontiguousarray(crops[start : start + step])
            scores = np.asarray(self._infer(chunk), dtype=np.float32).reshape(-1)
            if scores.shape != (len(chunk),):
                raise BackendError(
                    f"{self.name} returned {scores.shape[0]} scores for {len(chunk)} crops"
                )
            out.append(scores)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.info.device
        return f"<{type(self).__name__} {self.info.path.name} {self.info.precision} {state}>"


def check_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, or a one-line BackendError when it is not a readable file."""
    p = Path(path)
    if not p.exists():
        raise BackendError(f"no {what} at {p}")
    if not p.is_file():
        raise BackendError(f"{p} is not a file (expected a {what})")
    return p


def meta_from_json(text: str | None, path: Path, where: str) -> CheckpointMeta:
    """Parse the LoDa record stored in an artifact, with a one-line error naming the file."""
    if not text:
        raise BackendError(f"{path} carries no LoDa metadata ({where}): not a LoDa artifact")
    try:
        return CheckpointMeta.from_json(text)
    except LodaError as exc:
        raise BackendError(f"{path}: {exc}") from None
