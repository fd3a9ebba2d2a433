"""PyTorch backend: the reference model, straight from our ``.safetensors`` checkpoint.

Only available where torch is installed (``loda.runtime`` itself never imports torch; this
module imports it when a backend is opened). The crops are normalised by the shared numpy code
(:func:`loda.inference.crops_to_tensor`), so the pixels are those of every other backend.

``device="auto"`` (default) runs on CUDA when torch sees a GPU, else on the CPU. ``precision``:
``"fp32"`` (default: the reference; on CUDA, TF32 matmuls stay as torch's defaults leave
them, i.e. off for matmul), ``"fp16"`` or ``"bf16"`` autocast (CUDA only).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .backend import ArtifactInfo, Backend, BackendError, BackendUnavailable, check_file

__all__ = ["TorchBackend"]

_PRECISIONS = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(
            "the torch backend needs PyTorch: pip install torch (or score an .onnx / .engine "
            "file with the onnxruntime / tensorrt backends)"
        ) from None
    return torch


class TorchBackend(Backend):
    name = "torch"
    suffixes = (".safetensors",)

    def __init__(self, info: ArtifactInfo, model: Any, device: Any, dtype: Any) -> None:
        super().__init__(info, max_batch=None)
        self._model = model
        self._device = device
        self._dtype = dtype

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
        **_ignored: Any,
    ) -> TorchBackend:
        path = check_file(path, "LoDa checkpoint (.safetensors)")
        torch = _import_torch()
        if precision not in _PRECISIONS:
            raise BackendError(
                f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}"
            )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch sees no CUDA GPU here (use --device cpu)")
        if device not in ("cpu",) and not device.startswith("cuda"):
            raise BackendError(f"device must be auto, cpu or cuda[:N], got {device!r}")
        if precision != "fp32" and not device.startswith("cuda"):
            raise BackendError(f"{precision} autocast runs on CUDA only; use fp32 on the CPU")
        if threads is not None:
            torch.set_num_threads(int(threads))
        from loda.checkpoint import load_checkpoint

        model, meta = load_checkpoint(path, device=device)
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        label = "fp32" if precision == "fp32" else f"{precision}-autocast"
        info = ArtifactInfo(
            path=path,
            meta=meta,
            precision=label,
            device=str(dev),
            details={"torch": torch.__version__},
        )
        dtype = None if _PRECISIONS[precision] is None else getattr(torch, _PRECISIONS[precision])
        return cls(info, model, dev, dtype)

    def _infer(self, crops: np.ndarray) -> np.ndarray:
        import torch

        from loda.inference import crops_to_tensor

        x = crops_to_tensor(crops, self.info.meta.preprocess).to(self._device, non_blocking=True)
        with torch.inference_mode():
            if self._dtype is None:
                scores = self._model.score(x)
            else:
                with torch.autocast("cuda", dtype=self._dtype):
                    scores = self._model.score(x)
        return scores.float().cpu().numpy()

    def _close(self) -> None:
        self._model = None
