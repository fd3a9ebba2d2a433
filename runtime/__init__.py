"""``loda.runtime``: torch-free scoring (ONNX Runtime, TensorRT, and PyTorch when installed).

Importing this package never imports torch; only opening a ``.safetensors`` artifact with the
``torch`` backend does. Entry points: :class:`Scorer` (``Scorer.open(path)``), the backend
contract :class:`Backend`, the whole scoring run as a call (:mod:`loda.runtime.job`) and the
``loda-score`` command that parses its options (:mod:`loda.runtime.cli`).
"""

from .backend import ArtifactInfo, Backend, BackendError, BackendUnavailable
from .scorer import (
    BACKENDS,
    CropPacker,
    ImageScore,
    Scorer,
    backend_class,
    backend_for_path,
    image_seed,
    open_backend,
)

__all__ = [
    "BACKENDS",
    "ArtifactInfo",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "CropPacker",
    "ImageScore",
    "Scorer",
    "backend_class",
    "backend_for_path",
    "image_seed",
    "open_backend",
]
