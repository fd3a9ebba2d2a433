"""TensorRT backends: a serialized plan (``loda-trt build``) plus its ``.engine.json`` sidecar.

Two flavors share one implementation (:class:`_EngineBackend`): ``tensorrt`` (TensorRT 10.12+
/ 11.x, a plan built on the GPU that runs it) and ``tensorrt-rtx`` (TensorRT for RTX, a plan
built anywhere for a list of compute capabilities and specialised just in time on the user's
RTX GPU). What differs is in each subclass's :meth:`_check` (is this plan for this machine?)
and :meth:`_context` (how the execution context is made); the flavor facts (module, install
hint) come from :mod:`loda.trt_common`, which is torch-free.

No torch, no PyCUDA: buffers and the stream come from cuda-python (``cuda.bindings.runtime``):

- at open: the sidecar gives the flavor and the LoDa record (preprocessing, calibration). The
  ``tensorrt`` flavor compares the sidecar with the local TensorRT version and GPU (a plan only
  runs on the version and compute capability that built it). The ``tensorrt-rtx`` flavor asks
  ``Runtime.get_engine_validity`` about the plan header first: INVALID is one line naming the
  reason (compute capability not targeted, driver too old, another TensorRT-RTX version), and
  so is a machine where the check itself cannot run (no CUDA driver); SUBOPTIMAL is a warning.
  ``deserialize_cuda_engine`` returning ``None`` is an error carrying TensorRT's messages;
- buffers are allocated once at the profile's maximum batch: pinned host memory
  (``cudaMallocHost``) and device memory (``cudaMalloc``) for the uint8 crops and the float32
  scores, and one non-default stream (``cudaStreamCreate``);
- per chunk: copy into the pinned buffer, ``cudaMemcpyAsync`` host to device,
  ``set_input_shape``, ``set_tensor_address`` for both tensors, ``execute_async_v3``,
  ``cudaMemcpyAsync`` back, ``cudaStreamSynchronize``. A chunk smaller than the profile
  minimum is padded with copies of its first crop (the extra scores are dropped).

TensorRT-RTX compiles kernels on first use; its runtime cache keeps them across runs. It is
read at open and written back at close, beside the engine (``model.engine.rtcache``) or in
``cache_dir`` (named after the plan's sha256); a cache from another GPU or version is ignored by
TensorRT-RTX. ``cuda_graph=True`` sets the whole-graph CUDA-graph capture strategy.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from loda.atomic import write_bytes_atomic
from loda.errors import LodaError
from loda.metadata import CheckpointMeta
from loda.trt_common import (
    FLAVORS,
    TrtError,
    TrtUnavailable,
    cuda_check,
    engine_validity,
    gpu_properties,
    import_cudart,
    import_tensorrt,
    make_logger,
    mismatch,
    read_sidecar,
    sidecar_path,
)

from .backend import ArtifactInfo, Backend, BackendError, BackendUnavailable, check_file

__all__ = ["TensorRTBackend", "TensorRTRtxBackend", "runtime_cache_path"]

log = logging.getLogger(__name__)


def _native_handle(obj: Any) -> int:
    """The integer handle of a cuda-python object (``int(obj)`` is deprecated in bindings 13)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


def runtime_cache_path(engine: Path, cache_dir: str | os.PathLike | None, plan: bytes) -> Path:
    """Where the TensorRT-RTX runtime cache of ``engine`` lives."""
    if cache_dir is None:
        return engine.with_name(engine.name + ".rtcache")
    digest = hashlib.sha256(plan).hexdigest()[:16]
    return Path(cache_dir) / f"{engine.name}.{digest}.rtcache"


def _sidecar(path: Path, flavor: Any) -> dict[str, Any]:
    """The engine's sidecar; none at all: first a missing TensorRT, else the plain error."""
    try:
        sidecar = read_sidecar(path)
    except TrtError as exc:
        raise BackendError(str(exc)) from None
    if sidecar is not None:
        return sidecar
    try:  # a missing TensorRT is what the user must fix first
        import_tensorrt(flavor)
    except TrtUnavailable as exc:
        raise BackendUnavailable(str(exc)) from None
    raise BackendError(
        f"{path} has no sidecar {sidecar_path(path).name}: the engine's preprocessing is "
        "unknown; build engines with loda-trt build, which writes it"
    )


def _sidecar_meta(path: Path, sidecar: dict[str, Any]) -> CheckpointMeta:
    """The LoDa record (preprocessing, calibration) the sidecar carries."""
    record = sidecar.get("loda")
    if not isinstance(record, dict):
        raise BackendError(f"{sidecar_path(path)} carries no LoDa metadata record")
    try:
        return CheckpointMeta.from_dict(record)
    except LodaError as exc:
        raise BackendError(f"{sidecar_path(path)}: {exc}") from None


def _cuda_call(cudart: Any, result: Any, what: str) -> Any:
    """The value of a cuda-python call; a CUDA error is a BackendError naming the call."""
    try:
        return cuda_check(cudart, result, what)
    except TrtUnavailable as exc:
        raise BackendError(str(exc)) from None


def _io_tensors(trt: Any, engine: Any, path: Path) -> dict[str, Any]:
    """The engine's one uint8 input and one output, its batch profile and the score dtype."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise BackendError(f"{path}: expected 1 input and 1 output, got {inputs} / {outputs}")
    inp, out = inputs[0], outputs[0]
    if trt.nptype(engine.get_tensor_dtype(inp)) != np.uint8:
        raise BackendError(f"{path}: input {inp} is not uint8 (re-export with loda-export)")
    lo, opt, hi = engine.get_tensor_profile_shape(inp, 0)
    return {
        "input": inp,
        "output": out,
        "profile": [int(lo[0]), int(opt[0]), int(hi[0])],
        "max_batch": int(hi[0]),
        "out_dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(out))),
    }


def _buffers(
    cudart: Any, check: Callable[[Any, str], Any], max_batch: int, crop: int, out_dtype: np.dtype
) -> dict[str, Any]:
    """One stream; pinned host and device buffers for ``max_batch`` uint8 crops and scores."""
    in_bytes = max_batch * crop * crop * 3
    out_bytes = max_batch * out_dtype.itemsize
    stream = check(cudart.cudaStreamCreate(), "cudaStreamCreate")
    h_in = check(cudart.cudaMallocHost(in_bytes), "cudaMallocHost")
    h_out = check(cudart.cudaMallocHost(out_bytes), "cudaMallocHost")
    d_in = check(cudart.cudaMalloc(in_bytes), "cudaMalloc")
    d_out = check(cudart.cudaMalloc(out_bytes), "cudaMalloc")
    host_in = np.ctypeslib.as_array((ctypes.c_uint8 * in_bytes).from_address(int(h_in))).reshape(
        max_batch, crop, crop, 3
    )
    host_out = np.ctypeslib.as_array((ctypes.c_uint8 * out_bytes).from_address(int(h_out))).view(
        out_dtype
    )
    return {
        "stream": stream,
        "h_in": h_in,
        "h_out": h_out,
        "d_in": d_in,
        "d_out": d_out,
        "host_in": host_in,
        "host_out": host_out,
    }


class _EngineBackend(Backend):
    """The shared load / run / close of a TensorRT plan; subclasses say what differs."""

    flavor: ClassVar[str]
    suffixes = (".engine", ".plan")

    def __init__(self, info: ArtifactInfo, parts: dict[str, Any], max_batch: int) -> None:
        super().__init__(info, max_batch=max_batch)
        self._p = parts

    # -- what differs ----------------------------------------------------------------------------

    @classmethod
    def _check(
        cls, trt: Any, path: Path, plan: bytes, sidecar: dict[str, Any], gpu: dict[str, Any]
    ) -> dict[str, Any]:
        """Refuse a plan that cannot run here (BackendError); return details for ``info``."""
        raise NotImplementedError

    @classmethod
    def _context(
        cls, trt: Any, engine: Any, path: Path, plan: bytes, options: dict[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        """The execution context and what to keep for close (default: a plain context)."""
        return engine.create_execution_context(), {}

    def _on_close(self, parts: dict[str, Any]) -> None:
        """Flavor work at close, before the engine is released."""

    # -- shared ----------------------------------------------------------------------------------

    @classmethod
    def _preflight(cls, trt: Any, path: Path, plan: bytes) -> None:
        """Checks that need no GPU, before cuda-python is asked for one."""

    @classmethod
    def open(cls, path: str | os.PathLike, *, device_id: int = 0, **options: Any) -> _EngineBackend:
        flavor = FLAVORS[cls.flavor]
        path = check_file(path, f"{flavor.label} engine")
        sidecar = _sidecar(path, flavor)
        built = sidecar.get("flavor", "tensorrt")
        if built != flavor.name:
            other = {"rtx": TensorRTRtxBackend, "tensorrt": TensorRTBackend}.get(built)
            if other is None:
                raise BackendError(f"{sidecar_path(path)}: unknown engine flavor {built!r}")
            # The suffix says "engine", the sidecar says which TensorRT built it.
            return other.open(path, device_id=device_id, **options)
        meta = _sidecar_meta(path, sidecar)
        plan = path.read_bytes()
        try:
            trt = import_tensorrt(flavor)
            cls._preflight(trt, path, plan)
            cudart = import_cudart(flavor.install_hint)
            gpu = gpu_properties(device_id, cudart)
        except TrtUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
        details = cls._check(trt, path, plan, sidecar, gpu)
        check = functools.partial(_cuda_call, cudart)
        check(cudart.cudaSetDevice(device_id), "cudaSetDevice")
        logger = make_logger(trt, lambda _m: None)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            detail = logger.errors[-1] if logger.errors else f"no message from {flavor.label}"
            raise BackendError(f"{flavor.label} cannot load {path}: {detail}")
        io = _io_tensors(trt, engine, path)
        context, extra = cls._context(trt, engine, path, plan, options)
        details.update(extra.pop("details", {}))
        if context is None:
            detail = logger.errors[-1] if logger.errors else "no message"
            raise BackendError(f"{flavor.label} cannot create an execution context: {detail}")
        crop = meta.preprocess.crop_size
        buffers = _buffers(cudart, check, io["max_batch"], crop, io["out_dtype"])
        parts = {
            "trt": trt,
            "cudart": cudart,
            "check": check,
            "runtime": runtime,
            "engine": engine,
            "context": context,
            "input": io["input"],
            "output": io["output"],
            "min_batch": io["profile"][0],
            **buffers,
            **extra,
        }
        info = ArtifactInfo(
            path=path,
            meta=meta,
            precision=str(sidecar.get("precision", "unknown")),
            device=f"cuda:{device_id}",
            details={
                "flavor": flavor.name,
                "tensorrt": trt.__version__,
                "gpu": gpu["name"],
                "compute_capability": gpu["compute_capability"],
                "profile": io["profile"],
                **details,
            },
        )
        return cls(info, parts, io["max_batch"])

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
            raise BackendError(f"{self.name} refused input shape ({run}, {c}, {c}, 3)")
        if not ctx.set_tensor_address(p["input"], int(p["d_in"])):
            raise BackendError(f"{self.name} refused the input address")
        if not ctx.set_tensor_address(p["output"], int(p["d_out"])):
            raise BackendError(f"{self.name} refused the output address")
        if not ctx.execute_async_v3(_native_handle(stream)):
            raise BackendError(f"{self.name} execute_async_v3 failed")
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
        self._on_close(p)
        p.pop("context", None)
        p.pop("engine", None)
        for key, free in (("d_in", cudart.cudaFree), ("d_out", cudart.cudaFree)):
            free(p[key])
        for key in ("h_in", "h_out"):
            cudart.cudaFreeHost(p[key])
        cudart.cudaStreamDestroy(p["stream"])


class TensorRTBackend(_EngineBackend):
    """TensorRT 10.12+ / 11.x: the plan runs on the TensorRT version and GPU that built it."""

    name = "tensorrt"
    flavor = "tensorrt"

    @classmethod
    def _check(cls, trt, path, plan, sidecar, gpu):
        why = mismatch(sidecar, trt.__version__, gpu, cls.flavor)
        if why:
            raise BackendError(
                f"engine {path} cannot run here: {why}; rebuild it here with loda-trt build "
                "--flavor tensorrt"
            )
        return {}


class TensorRTRtxBackend(_EngineBackend):
    """TensorRT for RTX: validity from the plan header, JIT runtime cache, CUDA graphs.

    Options: ``cache_dir`` (runtime cache folder; default beside the engine), ``cuda_graph``
    (whole-graph capture; default off).
    """

    name = "tensorrt-rtx"
    flavor = "rtx"

    @classmethod
    def _preflight(cls, trt, path, plan):
        # The header check comes before cuda-python: it is what says why a plan cannot run
        # here, and without a CUDA driver it is the one line the user sees.
        logger = make_logger(trt, lambda _m: None)
        verdict, reason = engine_validity(trt, trt.Runtime(logger), plan, logger)
        if verdict == "INVALID":
            raise BackendError(
                f"TensorRT-RTX {trt.__version__} cannot run {path} here: "
                f"{reason or 'invalid engine'}; rebuild it with loda-trt build "
                "(--compute-capability for this GPU)"
            )
        if verdict == "SUBOPTIMAL":
            log.warning(
                f"loda: warning: TensorRT-RTX engine {path} runs here but may be slow: "
                f"{reason or 'suboptimal for this system'}"
            )

    @classmethod
    def _check(cls, trt, path, plan, sidecar, gpu):
        why = mismatch(sidecar, trt.__version__, gpu, cls.flavor)
        if why:
            raise BackendError(f"engine {path} cannot run here: {why}; rebuild with loda-trt build")
        return {}

    @classmethod
    def _context(cls, trt, engine, path, plan, options):
        cache_path = runtime_cache_path(path, options.get("cache_dir"), plan)
        config = engine.create_runtime_config()
        cache = config.create_runtime_cache()
        loaded = 0
        if cache_path.is_file():
            blob = cache_path.read_bytes()
            # False (kept empty) for another GPU, version or a damaged file: JIT compiles again.
            if cache.deserialize(blob):
                loaded = len(blob)
        config.set_runtime_cache(cache)
        if options.get("cuda_graph"):
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        context = engine.create_execution_context(config)
        return context, {
            "runtime_config": config,
            "runtime_cache": cache,
            "runtime_cache_path": cache_path,
            "details": {
                "runtime_cache": str(cache_path),
                "runtime_cache_loaded_bytes": loaded,
                "cuda_graph": bool(options.get("cuda_graph")),
            },
        }

    def _on_close(self, parts):
        cache, path = parts.get("runtime_cache"), parts.get("runtime_cache_path")
        if cache is None or path is None:
            return
        try:
            blob = bytes(cache.serialize())
            if blob:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(path, blob)
        except (OSError, RuntimeError) as exc:  # a read-only folder costs only the next JIT
            log.warning(f"loda: warning: TensorRT-RTX runtime cache not saved to {path}: {exc}")
