"""TensorRT backend: a serialized plan (``loda-trt build``) plus its ``.engine.json`` sidecar.

No torch, no PyCUDA: buffers and the stream come from cuda-python (``cuda.bindings.runtime``),
as docs/tensorrt-notes.md section 2 describes for TensorRT 10.12+ and 11.x alike:

- at open: the sidecar is compared with the local TensorRT version and GPU (a plan only runs on
  the TensorRT version and compute capability that built it) and a mismatch is one line
  saying what differs and to rebuild; ``deserialize_cuda_engine`` returning ``None`` is an error
  carrying TensorRT's logged messages;
- buffers are allocated once at the profile's maximum batch: pinned host memory
  (``cudaMallocHost``) and device memory (``cudaMalloc``) for the uint8 crops and the float32
  scores, and one non-default stream (``cudaStreamCreate``);
- per chunk: copy into the pinned buffer, ``cudaMemcpyAsync`` host to device,
  ``set_input_shape``, ``set_tensor_address`` for both tensors, ``execute_async_v3``,
  ``cudaMemcpyAsync`` back, ``cudaStreamSynchronize``. A chunk smaller than the profile
  minimum is padded with copies of its first crop (the extra scores are dropped).

The preprocessing and calibration come from the sidecar's ``loda`` record (the ONNX metadata
copied at build time).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np

from loda.errors import LodaError
from loda.metadata import CheckpointMeta

from .backend import ArtifactInfo, Backend, BackendError, BackendUnavailable, check_file

__all__ = ["TensorRTBackend"]


def _native_handle(obj: Any) -> int:
    """The integer handle of a cuda-python object (``int(obj)`` is deprecated in bindings 13)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


def _unavailable(exc: LodaError) -> BackendUnavailable:
    return BackendUnavailable(str(exc))


class TensorRTBackend(Backend):
    name = "tensorrt"
    suffixes = (".engine", ".plan")

    def __init__(self, info: ArtifactInfo, parts: dict[str, Any], max_batch: int) -> None:
        super().__init__(info, max_batch=max_batch)
        self._p = parts

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, device_id: int = 0, **_ignored: Any
    ) -> TensorRTBackend:
        from loda.export.trt import (
            TrtUnavailable,
            _cuda_check,
            _make_logger,
            _mismatch,
            gpu_properties,
            import_cudart,
            import_tensorrt,
            read_sidecar,
            sidecar_path,
        )

        path = check_file(path, "TensorRT engine")
        try:
            trt = import_tensorrt()
            cudart = import_cudart()
            gpu = gpu_properties(device_id)
        except TrtUnavailable as exc:
            raise _unavailable(exc) from None
        sidecar = read_sidecar(path)
        if sidecar is None:
            raise BackendError(
                f"{path} has no sidecar {sidecar_path(path).name}: the engine's preprocessing is "
                "unknown; build engines with loda-trt build, which writes it"
            )
        mismatch = _mismatch(sidecar, trt.__version__, gpu)
        if mismatch:
            raise BackendError(
                f"engine {path} cannot run here: {mismatch}; rebuild it here with loda-trt build"
            )
        record = sidecar.get("loda")
        if not isinstance(record, dict):
            raise BackendError(f"{sidecar_path(path)} carries no LoDa metadata record")
        try:
            meta = CheckpointMeta.from_dict(record)
        except LodaError as exc:
            raise BackendError(f"{sidecar_path(path)}: {exc}") from None

        def check(result: Any, what: str) -> Any:
            try:
                return _cuda_check(cudart, result, what)
            except TrtUnavailable as exc:
                raise BackendError(str(exc)) from None

        check(cudart.cudaSetDevice(device_id), "cudaSetDevice")
        logger = _make_logger(trt, lambda _m: None)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            detail = logger.errors[-1] if logger.errors else "no message from TensorRT"
            raise BackendError(f"TensorRT cannot load {path}: {detail}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{path}: expected 1 input and 1 output, got {inputs} / {outputs}")
        inp, out = inputs[0], outputs[0]
        crop = meta.preprocess.crop_size
        if trt.nptype(engine.get_tensor_dtype(inp)) != np.uint8:
            raise BackendError(f"{path}: input {inp} is not uint8 (re-export with loda-export)")
        lo, _opt, hi = engine.get_tensor_profile_shape(inp, 0)
        min_batch, max_batch = int(lo[0]), int(hi[0])
        out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(out)))
        context = engine.create_execution_context()
        in_bytes = max_batch * crop * crop * 3
        out_bytes = max_batch * out_dtype.itemsize
        stream = check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        h_in = check(cudart.cudaMallocHost(in_bytes), "cudaMallocHost")
        h_out = check(cudart.cudaMallocHost(out_bytes), "cudaMallocHost")
        d_in = check(cudart.cudaMalloc(in_bytes), "cudaMalloc")
        d_out = check(cudart.cudaMalloc(out_bytes), "cudaMalloc")
        host_in = np.ctypeslib.as_array(
            (ctypes.c_uint8 * in_bytes).from_address(int(h_in))
        ).reshape(max_batch, crop, crop, 3)
        host_out = np.ctypeslib.as_array(
            (ctypes.c_uint8 * out_bytes).from_address(int(h_out))
        ).view(out_dtype)
        parts = {
            "trt": trt,
            "cudart": cudart,
            "check": check,
            "runtime": runtime,
            "engine": engine,
            "context": context,
            "input": inp,
            "output": out,
            "min_batch": min_batch,
            "stream": stream,
            "h_in": h_in,
            "h_out": h_out,
            "d_in": d_in,
            "d_out": d_out,
            "host_in": host_in,
            "host_out": host_out,
        }
        info = ArtifactInfo(
            path=path,
            meta=meta,
            precision=str(sidecar.get("precision", "unknown")),
            device=f"cuda:{device_id}",
            details={
                "tensorrt": trt.__version__,
                "gpu": gpu["name"],
                "compute_capability": gpu["compute_capability"],
                "profile": [min_batch, int(_opt[0]), max_batch],
            },
        )
        return cls(info, parts, max_batch)

    def _infer(self, crops: np.ndarray) -> np.ndarray:
        p = self._p
        cudart, check = p["cudart"], p["check"]
        n = len(crops)
        run = max(n, p["min_batch"])
        p["host_in"][:n] = crops
        if run > n:
            p["host_in"][n:run] = crops[0]
        ctx, stream = p["context"], p["stream"]
        kind = cudart.cudaMemcpyKind
        nbytes = run * crops[0].nbytes
        check(
            cudart.cudaMemcpyAsync(
                p["d_in"], p["h_in"], nbytes, kind.cudaMemcpyHostToDevice, stream
            ),
            "cudaMemcpyAsync",
        )
        c = crops.shape[1]
        if not ctx.set_input_shape(p["input"], (run, c, c, 3)):
            raise BackendError(f"TensorRT refused input shape ({run}, {c}, {c}, 3)")
        if not ctx.set_tensor_address(p["input"], int(p["d_in"])):
            raise BackendError("TensorRT refused the input address")
        if not ctx.set_tensor_address(p["output"], int(p["d_out"])):
            raise BackendError("TensorRT refused the output address")
        if not ctx.execute_async_v3(_native_handle(stream)):
            raise BackendError("TensorRT execute_async_v3 failed")
        out_bytes = run * p["host_out"].itemsize
        check(
            cudart.cudaMemcpyAsync(
                p["h_out"], p["d_out"], out_bytes, kind.cudaMemcpyDeviceToHost, stream
            ),
            "cudaMemcpyAsync",
        )
        check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return p["host_out"][:n].astype(np.float32)

    def _close(self) -> None:
        p, self._p = self._p, {}
        cudart = p.get("cudart")
        if cudart is None:
            return
        p.pop("context", None)
        p.pop("engine", None)
        for key, free in (("d_in", cudart.cudaFree), ("d_out", cudart.cudaFree)):
            free(p[key])
        for key in ("h_in", "h_out"):
            cudart.cudaFreeHost(p[key])
        cudart.cudaStreamDestroy(p["stream"])
