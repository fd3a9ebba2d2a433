"""TensorRT engines from LoDa ONNX graphs: one code path for TensorRT >= 10.12 and 11.x.

TensorRT 11 builds every network strongly typed and removed the precision builder flags
(``BuilderFlag.FP16``/``INT8``), ``EXPLICIT_BATCH`` and ``platform_has_*``. The portable
idiom, used here and nowhere else: ``builder.create_network(1 << STRONGLY_TYPED)`` (required on
10.x to opt in, deprecated and ignored on 11.x), so the precision comes only from the ONNX
graph (FP32 export, FP16 graph of :mod:`loda.calib.fp16`, INT8 Q/DQ graph of
:mod:`loda.calib.int8`). The only precision knob left is TF32, on by default: it is cleared
for an FP32 graph (``loda.precision`` in ``metadata_props``), so an FP32 engine is a parity
reference.

:func:`build_engine`: ``trt.OnnxParser.parse_from_file`` (parser errors are reported node by
node), one optimisation profile on ``crops`` (batch ``MIN:OPT:MAX``), workspace limit,
builder optimisation level, a timing cache loaded from and saved back to a file, then the plan
bytes written untouched (never prefixed with metadata, so ``trtexec --loadEngine`` works) and a
sidecar ``<engine>.json`` with what a loader needs to detect a mismatch: TensorRT version, GPU
name and compute capability, precision, profile, ONNX and plan sha256, the ONNX's ``loda``
record and the build time.

:func:`inspect_engine`: the sidecar plus the engine's I/O tensors (deserialised with
``trt.Runtime``); without TensorRT the sidecar alone.

TensorRT (``tensorrt``) and cuda-python (``cuda.bindings``) are imported only inside the
functions that need them; this module imports without either. A missing one, or a machine
without an NVIDIA GPU, is one :class:`TrtUnavailable` line saying what to install.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loda.atomic import write_bytes_atomic
from loda.errors import LodaError

__all__ = [
    "DEFAULT_OPT_LEVEL",
    "DEFAULT_PROFILE",
    "GPU_HINT",
    "INSTALL_HINT",
    "MIN_TENSORRT",
    "BatchProfile",
    "BuildReport",
    "TrtError",
    "TrtUnavailable",
    "build_engine",
    "gpu_properties",
    "import_cudart",
    "import_tensorrt",
    "inspect_engine",
    "parse_batch_profile",
    "read_sidecar",
    "sidecar_path",
]

MIN_TENSORRT = (10, 12)  # strong typing "fully available from 10.12"
DEFAULT_OPT_LEVEL = 3
INSTALL_HINT = "pip install 'loda[gpu]' (tensorrt>=10.12, cuda-python)"
GPU_HINT = "TensorRT engines need an NVIDIA GPU with its driver installed"
SIDECAR_FORMAT = "loda-trt-engine/1"
INPUT_NAME = "crops"  # as loda.export.onnx.INPUT_NAME (not imported: that module imports torch)

Log = Callable[[str], None]


class TrtError(LodaError):
    """The engine cannot be built or read."""


class TrtUnavailable(TrtError):
    """TensorRT, cuda-python or an NVIDIA GPU is missing."""


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Batch profile
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of the one optimisation profile on ``crops``: ``min <= opt <= max``."""

    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def shapes(self, crop_size: int) -> tuple[tuple[int, ...], ...]:
        return tuple((b, crop_size, crop_size, 3) for b in (self.min, self.opt, self.max))


DEFAULT_PROFILE = BatchProfile(15, 60, 240)  # one image, four images, sixteen images of crops


def parse_batch_profile(text: str) -> BatchProfile:
    """``"MIN:OPT:MAX"`` -> :class:`BatchProfile`; ``ValueError`` with a readable reason."""
    parts = str(text).strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"{text!r} is not MIN:OPT:MAX (three batch sizes, e.g. 15:60:240)")
    values = []
    for name, part in zip(("MIN", "OPT", "MAX"), parts, strict=True):
        try:
            value = int(part.strip())
        except ValueError:
            raise ValueError(f"{text!r}: {name} {part!r} is not an integer") from None
        if value < 1:
            raise ValueError(f"{text!r}: {name} must be >= 1, got {value}")
        values.append(value)
    lo, opt, hi = values
    if not lo <= opt <= hi:
        raise ValueError(f"{text!r}: need MIN <= OPT <= MAX, got {lo}:{opt}:{hi}")
    return BatchProfile(lo, opt, hi)


# --------------------------------------------------------------------------------------------
# Optional dependencies and the GPU
# --------------------------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (>= 10.12), or :class:`TrtUnavailable`."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        missing = getattr(exc, "name", None) in ("tensorrt", None)
        cause = "TensorRT is not installed" if missing else f"TensorRT cannot be imported ({exc})"
        raise TrtUnavailable(f"{cause}: {INSTALL_HINT}; {GPU_HINT}") from None
    except OSError as exc:  # libnvinfer / libcudart not found
        raise TrtUnavailable(
            f"TensorRT's libraries cannot be loaded ({exc}): {INSTALL_HINT}; {GPU_HINT}"
        ) from None
    version = tuple(int(p) for p in trt.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_TENSORRT:
        raise TrtUnavailable(
            f"TensorRT {trt.__version__} is too old: strongly typed builds need >= "
            f"{MIN_TENSORRT[0]}.{MIN_TENSORRT[1]}; {INSTALL_HINT}"
        )
    return trt


def import_cudart() -> Any:
    """``cuda.bindings.runtime`` (cuda-python), or :class:`TrtUnavailable`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise TrtUnavailable(
            f"cuda-python (cuda.bindings) is not installed: {INSTALL_HINT}; {GPU_HINT}"
        ) from None
    return cudart


def _cuda_check(cudart: Any, result: Any, what: str) -> Any:
    """cuda-python returns ``(err, *values)``; raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = err.name if hasattr(err, "name") else str(err)
        raise TrtUnavailable(f"{what} failed: {name} ({GPU_HINT})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_properties(device: int = 0) -> dict[str, Any]:
    """Name, compute capability, memory, driver and runtime versions of CUDA device ``device``."""
    cudart = import_cudart()
    count = _cuda_check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not count:
        raise TrtUnavailable(f"no CUDA device found ({GPU_HINT})")
    if not 0 <= device < count:
        raise TrtError(f"CUDA device {device} does not exist ({count} found)")
    props = _cuda_check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes | bytearray):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    driver = _cuda_check(cudart, cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    runtime = _cuda_check(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    return {
        "index": device,
        "name": str(name).strip(),
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_bytes": int(props.totalGlobalMem),
        "cuda_driver_version": _cuda_version(driver),
        "cuda_runtime_version": _cuda_version(runtime),
    }


def _cuda_version(v: int) -> str:
    return f"{int(v) // 1000}.{int(v) % 1000 // 10}"


def _make_logger(trt: Any, log: Log) -> Any:
    """A ``trt.ILogger`` that keeps every error and forwards errors and warnings to ``log``."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(msg)
                log(f"tensorrt: [E] {msg}")
            elif severity == sev.WARNING:
                self.warnings.append(msg)
                log(f"tensorrt: [W] {msg}")

    return CapturingLogger()


# --------------------------------------------------------------------------------------------
# Sidecar
# --------------------------------------------------------------------------------------------


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar JSON of an engine, or None when there is none."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrtError(f"sidecar {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TrtError(f"sidecar {path} is not a JSON object")
    return data


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    engine_path: Path
    sidecar_path: Path
    plan_bytes: int
    build_seconds: float
    total_seconds: float
    sidecar: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def size_mb(self) -> float:
        return self.plan_bytes / 1e6


def _read_onnx_record(onnx_path: Path) -> tuple[dict[str, str], int]:
    """metadata_props and the crop size of a LoDa ONNX file (weights not loaded)."""
    import onnx

    from loda.export.onnx import read_onnx_metadata

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise TrtError(f"{onnx_path} is not an ONNX model: {type(exc).__name__}") from None
    meta = read_onnx_metadata(model, source=onnx_path)
    if "loda" not in meta:
        raise TrtError(
            f"{onnx_path} has no LoDa metadata (metadata_props 'loda'); build from an ONNX made "
            "by loda-export or loda-calib"
        )
    int8_target = json.loads(meta.get("loda.int8") or "{}").get("target")
    if int8_target not in (None, "tensorrt"):
        raise TrtError(
            f"{onnx_path} is an INT8 graph for ONNX Runtime's CPU provider (loda-calib --target "
            f"{int8_target}: u8 activations, ONNX Runtime-only fused ops); for TensorRT run "
            "loda-calib int8 on the FP32 ONNX with --target tensorrt"
        )
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise TrtError(
            f"{onnx_path} has inputs {[i.name for i in inputs]}; expected ['{INPUT_NAME}']"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    crop = dims[1].dim_value if len(dims) == 4 else 0
    if not crop:
        raise TrtError(f"{onnx_path}: input '{INPUT_NAME}' is not [batch, crop, crop, 3]")
    return meta, crop


def _parser_errors(parser: Any) -> list[str]:
    """One line per ``parser.get_error(i)``: node name (operator): description [code]."""

    def call(error: Any, method: str, default: Any) -> Any:
        fn = getattr(error, method, None)  # node_name/node_operator: newer parsers only
        return fn() if callable(fn) else default

    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = call(e, "node", -1)
        name = call(e, "node_name", "") or (f"node #{node}" if node >= 0 else "graph")
        op = call(e, "node_operator", "") or "?"
        code = call(e, "code", "?")
        lines.append(f"{name} ({op}): {call(e, 'desc', str(e))} [{getattr(code, 'name', code)}]")
    return lines


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    profile: BatchProfile = DEFAULT_PROFILE,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike | None = None,
    opt_level: int = DEFAULT_OPT_LEVEL,
    log: Log | None = _log_stderr,
) -> BuildReport:
    """Build a strongly typed TensorRT engine from a LoDa ONNX file.

    Builds on CUDA device 0 (choose another with ``CUDA_VISIBLE_DEVICES``). Writes
    ``engine_path`` (the plan bytes) and its sidecar ``<engine>.json``. Raises
    :class:`TrtUnavailable` without TensorRT, cuda-python or a GPU, :class:`TrtError` when the
    ONNX cannot be parsed or the build fails (parser errors are logged one node per line).
    """
    log = log or (lambda _m: None)
    start = time.perf_counter()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise TrtError(f"no ONNX file at {onnx_path}")
    if engine_path.is_dir():
        raise TrtError(f"output {engine_path} is a directory; name a .engine file")
    if engine_path.resolve() == onnx_path.resolve():
        raise TrtError(f"output {engine_path} would overwrite the ONNX file")
    if not 0 <= opt_level <= 5:
        raise TrtError(f"builder optimisation level must be 0..5, got {opt_level}")
    if workspace_gb is not None and workspace_gb <= 0:
        raise TrtError(f"workspace must be > 0 GB, got {workspace_gb}")

    trt = import_tensorrt()
    gpu = gpu_properties(0)

    # After the TensorRT/GPU checks: loda.export.onnx imports torch.
    from loda.export.onnx import sha256_file
    from loda.metadata import now_utc

    meta, crop = _read_onnx_record(onnx_path)
    precision = meta.get("loda.precision", "fp32")
    onnx_sha = sha256_file(onnx_path)

    logger = _make_logger(trt, log)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as exc:  # pybind: "factory function returned nullptr"
        detail = logger.errors[-1] if logger.errors else str(exc)
        raise TrtUnavailable(f"TensorRT cannot create a builder: {detail} ({GPU_HINT})") from None
    # Strong typing: required on 10.x, the only mode (flag ignored) on 11.x. No EXPLICIT_BATCH.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {onnx_path} ({precision})")
    if not parser.parse_from_file(str(onnx_path)):
        lines = _parser_errors(parser)
        for line in lines:
            log(f"parser: {line}")
        first = lines[0] if lines else (logger.errors[-1] if logger.errors else "unknown error")
        raise TrtError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path}: {len(lines)} error(s); "
            f"first: {first}"
        )
    if network.num_inputs != 1 or network.get_input(0).name != INPUT_NAME:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise TrtError(f"parsed network has inputs {names}; expected ['{INPUT_NAME}']")
    input_shape = tuple(network.get_input(0).shape)
    if input_shape[0] != -1 and not profile.min == profile.max == input_shape[0]:
        raise TrtError(
            f"{onnx_path} has a fixed batch of {input_shape[0]}; --batch {profile} needs a "
            "dynamic batch dimension (re-export with loda-export)"
        )

    config = builder.create_builder_config()
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *profile.shapes(crop))
    config.add_optimization_profile(opt_profile)
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    config.builder_optimization_level = opt_level
    tf32 = precision != "fp32"
    if not tf32:
        # TF32 is on by default; an FP32 graph is the parity reference: keep GEMMs in FP32.
        config.clear_flag(trt.BuilderFlag.TF32)

    cache_info: dict[str, Any] | None = None
    if timing_cache is not None:
        cache_path = Path(timing_cache)
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        loaded = bool(config.set_timing_cache(cache, ignore_mismatch=False))
        if blob and not loaded:
            log(
                f"timing cache {cache_path} does not match this GPU or TensorRT version; "
                "building without its entries (it will be rewritten)"
            )
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
        cache_info = {"path": str(cache_path), "loaded_bytes": len(blob) if loaded else 0}

    log(
        f"building TensorRT {trt.__version__} engine on {gpu['name']} "
        f"(sm {gpu['compute_capability']}): batch {profile}, opt level {opt_level}, "
        f"TF32 {'on' if tf32 else 'off'}"
    )
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - t0
    if plan is None:
        detail = logger.errors[-1] if logger.errors else "no error message from TensorRT"
        raise TrtError(f"TensorRT engine build failed: {detail}")
    plan_bytes = bytes(plan)

    if cache_info is not None:
        serialized = bytes(config.get_timing_cache().serialize())
        write_bytes_atomic(Path(cache_info["path"]), serialized)
        cache_info["saved_bytes"] = len(serialized)

    engine_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(engine_path, plan_bytes)  # the plan, untouched
    loda_record = json.loads(meta["loda"])  # checked by _read_onnx_record
    sidecar = {
        "format": SIDECAR_FORMAT,
        "engine": engine_path.name,
        "plan_sha256": hashlib.sha256(plan_bytes).hexdigest(),
        "plan_bytes": len(plan_bytes),
        "tensorrt_version": trt.__version__,
        "gpu": gpu,
        "precision": precision,
        "tf32": tf32,
        "strongly_typed": True,
        "profile": {
            "input": INPUT_NAME,
            "batch": {"min": profile.min, "opt": profile.opt, "max": profile.max},
            "shapes": dict(
                zip(("min", "opt", "max"), map(list, profile.shapes(crop)), strict=True)
            ),
        },
        "builder_optimization_level": opt_level,
        "workspace_bytes": None if workspace_gb is None else int(workspace_gb * 2**30),
        "timing_cache": cache_info,
        "hardware_compatibility_level": "NONE",
        "version_compatible": False,
        "onnx": {"file": onnx_path.name, "sha256": onnx_sha},
        "loda": loda_record,
        "loda_io": json.loads(meta["loda.io"]) if "loda.io" in meta else None,
        "build_seconds": round(build_seconds, 3),
        "built_at": now_utc(),
    }
    side = sidecar_path(engine_path)
    write_bytes_atomic(side, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return BuildReport(
        engine_path=engine_path,
        sidecar_path=side,
        plan_bytes=len(plan_bytes),
        build_seconds=build_seconds,
        total_seconds=time.perf_counter() - start,
        sidecar=sidecar,
        warnings=list(logger.warnings),
    )


# --------------------------------------------------------------------------------------------
# Inspect
# --------------------------------------------------------------------------------------------


def _mismatch(sidecar: dict[str, Any] | None, trt_version: str, gpu: dict[str, Any] | None) -> str:
    """Why a plan may not load here, from its sidecar ('' when nothing differs or unknown)."""
    if not sidecar:
        return ""
    reasons = []
    built = sidecar.get("tensorrt_version")
    if built and built != trt_version:
        reasons.append(f"built with TensorRT {built}, this is {trt_version}")
    built_gpu = sidecar.get("gpu") or {}
    if gpu and built_gpu.get("compute_capability") not in (None, gpu["compute_capability"]):
        reasons.append(
            f"built on {built_gpu.get('name')} (sm {built_gpu.get('compute_capability')}), "
            f"this is {gpu['name']} (sm {gpu['compute_capability']})"
        )
    return "; ".join(reasons)


def _io_tensors(trt: Any, engine: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        entry: dict[str, Any] = {
            "name": name,
            "mode": "input" if mode == trt.TensorIOMode.INPUT else "output",
            "dtype": str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1],
            "shape": list(engine.get_tensor_shape(name)),
        }
        if mode == trt.TensorIOMode.INPUT:
            lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
            entry["profile"] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        out.append(entry)
    return out


def inspect_engine(
    engine_path: str | os.PathLike, *, log: Log | None = _log_stderr
) -> dict[str, Any]:
    """``{"engine", "plan_sha256", "sidecar", "io", "note"}`` for an engine file.

    ``io`` lists the I/O tensors (name, mode, dtype, shape, profile) when TensorRT and a GPU
    are present; otherwise it is None and ``note`` says what is missing. A plan TensorRT cannot
    deserialise raises :class:`TrtError` with TensorRT's error and the sidecar mismatch.
    """
    log = log or (lambda _m: None)
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise TrtError(f"no engine file at {engine_path}")
    plan = engine_path.read_bytes()
    sidecar = read_sidecar(engine_path)
    result: dict[str, Any] = {
        "engine": str(engine_path),
        "plan_bytes": len(plan),
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "sidecar": sidecar,
        "io": None,
        "note": None,
    }
    if sidecar is None:
        log(f"no sidecar {sidecar_path(engine_path)}: the engine's provenance is unknown")
    elif sidecar.get("plan_sha256") not in (None, result["plan_sha256"]):
        log(f"the sidecar {sidecar_path(engine_path)} describes another plan (sha256 differs)")
    try:
        trt = import_tensorrt()
        gpu = gpu_properties()
    except TrtUnavailable as exc:
        result["note"] = f"the I/O listing needs TensorRT and a GPU: {exc}"
        return result
    logger = _make_logger(trt, lambda _m: None)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        why = _mismatch(sidecar, trt.__version__, gpu)
        detail = logger.errors[-1] if logger.errors else "no error message from TensorRT"
        raise TrtError(
            f"TensorRT {trt.__version__} cannot load {engine_path}: {detail}"
            + (f" ({why}; rebuild with loda-trt build)" if why else "")
        )
    result["io"] = _io_tensors(trt, engine)
    result["tensorrt_version"] = trt.__version__
    result["gpu"] = gpu
    return result
