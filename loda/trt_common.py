"""TensorRT and TensorRT-RTX: the two flavors, their lazy imports, the GPU, the engine sidecar.

Shared by ``loda-trt`` (:mod:`loda.export.trt`, which builds engines) and the runtime backends
(:mod:`loda.runtime.trt_backend`, which run them). Torch-free and onnx-free, so the runtime may
import it. TensorRT (``tensorrt``), TensorRT for RTX (``tensorrt_rtx``) and cuda-python
(``cuda.bindings``) are imported only inside the functions that need them.

The two flavors expose the same builder / network / parser / runtime objects; what differs is
kept in :class:`Flavor` (module, install hint, whether a build needs a GPU, timing cache,
compute-capability targets) and in the few ``flavor.name == "rtx"`` branches of the build and
load code:

- ``tensorrt`` (TensorRT >= 10.12 / 11.x, data-centre and any CUDA GPU): the build runs on the
  GPU that will run the plan; a plan loads only on that TensorRT version and compute
  capability.
- ``rtx`` (TensorRT for RTX, ``tensorrt-rtx-cu12``): the ahead-of-time build needs no GPU and
  targets a list of compute capabilities; the plan is specialised just in time on the user's
  RTX GPU. A timing cache would make the build query a GPU, so none is used.
  ``Runtime.get_engine_validity`` reads the plan header and says why a plan cannot run here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loda.errors import LodaError

__all__ = [
    "DEFAULT_FLAVOR",
    "FLAVORS",
    "GPU_HINT",
    "SIDECAR_FORMAT",
    "Flavor",
    "TrtError",
    "TrtUnavailable",
    "compute_capability_enum",
    "cuda_check",
    "engine_validity",
    "flavor_of",
    "gpu_properties",
    "import_cudart",
    "import_tensorrt",
    "make_logger",
    "mismatch",
    "parse_compute_capabilities",
    "read_sidecar",
    "sidecar_path",
]

GPU_HINT = "TensorRT engines need an NVIDIA GPU with its driver installed"
SIDECAR_FORMAT = "loda-trt-engine/1"

Log = Callable[[str], None]


class TrtError(LodaError):
    """The engine cannot be built or read."""


class TrtUnavailable(TrtError):
    """TensorRT, cuda-python or an NVIDIA GPU is missing."""


@dataclass(frozen=True)
class Flavor:
    """One TensorRT distribution: everything the build and load code must know about it."""

    name: str  # "rtx" | "tensorrt": the --flavor / sidecar value
    module: str  # the Python module
    label: str  # for messages
    min_version: tuple[int, int]
    install_hint: str
    build_needs_gpu: bool
    timing_cache: bool  # a timing cache is meaningful (TensorRT-RTX: it forces a GPU query)
    compute_capability_targets: bool  # the builder takes a list of target compute capabilities


FLAVORS: dict[str, Flavor] = {
    "rtx": Flavor(
        name="rtx",
        module="tensorrt_rtx",
        label="TensorRT-RTX",
        min_version=(1, 0),
        install_hint="pip install 'loda[rtx]' (tensorrt-rtx-cu12)",
        build_needs_gpu=False,
        timing_cache=False,
        compute_capability_targets=True,
    ),
    "tensorrt": Flavor(
        name="tensorrt",
        module="tensorrt",
        label="TensorRT",
        min_version=(10, 12),  # strong typing "fully available from 10.12"
        install_hint="pip install 'loda[gpu]' (tensorrt>=10.12, cuda-python)",
        build_needs_gpu=True,
        timing_cache=True,
        compute_capability_targets=False,
    ),
}
DEFAULT_FLAVOR = "rtx"


def flavor_of(name: str | Flavor) -> Flavor:
    if isinstance(name, Flavor):
        return name
    try:
        return FLAVORS[name]
    except KeyError:
        raise TrtError(f"unknown TensorRT flavor {name!r}; known: {', '.join(FLAVORS)}") from None


# --------------------------------------------------------------------------------------------
# Optional dependencies and the GPU
# --------------------------------------------------------------------------------------------


def import_tensorrt(flavor: str | Flavor = "tensorrt") -> Any:
    """The flavor's module (``tensorrt`` >= 10.12 or ``tensorrt_rtx``), or TrtUnavailable."""
    f = flavor_of(flavor)
    gpu = "" if not f.build_needs_gpu else f"; {GPU_HINT}"
    try:
        trt = __import__(f.module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) in (f.module, None)
        cause = (
            f"{f.label} is not installed" if missing else f"{f.label} cannot be imported ({exc})"
        )
        raise TrtUnavailable(f"{cause}: {f.install_hint}{gpu}") from None
    except OSError as exc:  # libnvinfer / libcudart not found
        raise TrtUnavailable(
            f"{f.label}'s libraries cannot be loaded ({exc}): {f.install_hint}{gpu}"
        ) from None
    version = tuple(int(p) for p in trt.__version__.split(".")[:2] if p.isdigit())
    if version < f.min_version:
        need = ".".join(map(str, f.min_version))
        raise TrtUnavailable(
            f"{f.label} {trt.__version__} is too old: strongly typed builds need >= {need}; "
            f"{f.install_hint}"
        )
    return trt


def import_cudart(install_hint: str = FLAVORS["tensorrt"].install_hint) -> Any:
    """``cuda.bindings.runtime`` (cuda-python), or :class:`TrtUnavailable`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise TrtUnavailable(
            f"cuda-python (cuda.bindings) is not installed: {install_hint}, cuda-python; {GPU_HINT}"
        ) from None
    return cudart


def cuda_check(cudart: Any, result: Any, what: str) -> Any:
    """cuda-python returns ``(err, *values)``; raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = err.name if hasattr(err, "name") else str(err)
        raise TrtUnavailable(f"{what} failed: {name} ({GPU_HINT})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_properties(device: int = 0, cudart: Any = None) -> dict[str, Any]:
    """Name, compute capability, memory, driver and runtime versions of CUDA device ``device``."""
    cudart = cudart or import_cudart()
    count = cuda_check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not count:
        raise TrtUnavailable(f"no CUDA device found ({GPU_HINT})")
    if not 0 <= device < count:
        raise TrtError(f"CUDA device {device} does not exist ({count} found)")
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes | bytearray):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    driver = cuda_check(cudart, cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    runtime = cuda_check(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
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


def make_logger(trt: Any, log: Log) -> Any:
    """A ``trt.ILogger`` that keeps every error and forwards errors and warnings to ``log``.

    Set ``logger.mute = True`` to keep messages without forwarding them (the ONNX parser's
    multi-line node reports, which are summarised one line per node instead).
    """

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []
            self.mute = False

        def log(self, severity: Any, msg: str) -> None:
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(msg)
                if not self.mute:
                    log(f"tensorrt: [E] {msg}")
            elif severity == sev.WARNING:
                self.warnings.append(msg)
                if not self.mute:
                    log(f"tensorrt: [W] {msg}")

    return CapturingLogger()


# --------------------------------------------------------------------------------------------
# Compute capabilities (TensorRT-RTX targets)
# --------------------------------------------------------------------------------------------


def parse_compute_capabilities(text: str) -> tuple[str, ...]:
    """``"8.6,8.9,12.0"`` -> ``("8.6", "8.9", "12.0")``; ValueError with a readable reason."""
    items = [p.strip() for p in str(text).split(",")]
    if not any(items):
        raise ValueError("empty list; give compute capabilities like 8.6,8.9,12.0")
    out: list[str] = []
    for item in items:
        m = re.fullmatch(r"(?:sm_?)?(\d{1,2})\.?(\d)", item, flags=re.IGNORECASE)
        if not m:
            raise ValueError(f"{item!r} is not a compute capability (e.g. 8.6, 8.9, 12.0)")
        cc = f"{int(m.group(1))}.{m.group(2)}"
        if cc not in out:
            out.append(cc)
    return tuple(out)


def compute_capability_enum(trt: Any, cc: str) -> Any:
    """``"8.9"`` -> ``trt.ComputeCapability.SM89``; TrtError naming the ones this version has."""
    name = "SM" + cc.replace(".", "")
    value = getattr(trt.ComputeCapability, name, None)
    if value is None:
        known = [
            f"{m[2:-1]}.{m[-1]}"
            for m in sorted(trt.ComputeCapability.__members__, key=lambda m: (len(m), m))
            if m.startswith("SM")
        ]
        raise TrtError(
            f"compute capability {cc} is not a target of TensorRT-RTX {trt.__version__} "
            f"(known: {', '.join(known)}); data-centre GPUs use --flavor tensorrt"
        )
    return value


# --------------------------------------------------------------------------------------------
# Sidecar and load checks
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


def mismatch(
    sidecar: dict[str, Any] | None,
    trt_version: str,
    gpu: dict[str, Any] | None,
    flavor: str | Flavor = "tensorrt",
) -> str:
    """Why a plan may not load here, from its sidecar ('' when nothing differs or unknown)."""
    if not sidecar:
        return ""
    f = flavor_of(flavor)
    built_flavor = sidecar.get("flavor", "tensorrt")  # sidecars before flavors: TensorRT
    if built_flavor != f.name:
        other = FLAVORS.get(built_flavor)
        return (
            f"built with {other.label if other else built_flavor}, this is {f.label} "
            f"(use --backend {'tensorrt-rtx' if built_flavor == 'rtx' else 'tensorrt'})"
        )
    reasons = []
    built = sidecar.get("tensorrt_version")
    if built and built != trt_version:
        reasons.append(f"built with {f.label} {built}, this is {trt_version}")
    if f.name == "rtx":
        targets = sidecar.get("compute_capabilities")
        if gpu and isinstance(targets, list) and gpu["compute_capability"] not in targets:
            reasons.append(
                f"built for compute capabilities {', '.join(targets)}, this is {gpu['name']} "
                f"(sm {gpu['compute_capability']})"
            )
        return "; ".join(reasons)
    built_gpu = sidecar.get("gpu") or {}
    if gpu and built_gpu.get("compute_capability") not in (None, gpu["compute_capability"]):
        reasons.append(
            f"built on {built_gpu.get('name')} (sm {built_gpu.get('compute_capability')}), "
            f"this is {gpu['name']} (sm {gpu['compute_capability']})"
        )
    return "; ".join(reasons)


_DIAGNOSTIC_TEXT = {
    "VERSION_MISMATCH": "built by another TensorRT-RTX version",
    "UNSUPPORTED_CC": "this GPU's compute capability is not among the engine's targets",
    "OLD_CUDA_DRIVER": "the CUDA driver is too old",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old",
    "INSUFFICIENT_GPU_MEMORY": "not enough GPU memory",
    "MALFORMED_ENGINE": "the file is not a TensorRT-RTX engine (malformed header)",
    "CUDA_ERROR": "a CUDA error (no usable GPU or driver?)",
}


def engine_validity(trt: Any, runtime: Any, header: bytes, logger: Any = None) -> tuple[str, str]:
    """TensorRT-RTX's verdict on a plan header: ``("VALID"|"SUBOPTIMAL"|"INVALID", reason)``.

    ``reason`` is the readable text of the diagnostic bits ('' for VALID). Without a usable
    CUDA driver the check itself cannot run (TensorRT-RTX answers INVALID with no diagnostic
    and logs the CUDA error to ``logger``, a :func:`make_logger` logger): that raises
    :class:`TrtUnavailable` naming the CUDA error.
    """
    size = int(getattr(runtime, "engine_header_size", 64) or 64)
    errors = getattr(logger, "errors", [])
    seen = len(errors)
    try:
        validity, diagnostics = runtime.get_engine_validity(bytes(header[:size]))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise TrtUnavailable(
            f"TensorRT-RTX cannot check the engine header here ({exc}); {GPU_HINT}"
        ) from None
    verdict = str(getattr(validity, "name", validity))
    flags = trt.EngineInvalidityDiagnostics
    reasons = [
        _DIAGNOSTIC_TEXT.get(name, name.lower())
        for name, member in flags.__members__.items()
        if int(diagnostics) & int(member)
    ]
    new_errors = errors[seen:]
    if verdict == "INVALID" and not reasons and new_errors:
        detail = new_errors[-1].split(" In ", 1)[0].strip()
        cause = next((e for e in new_errors if "cudaError" in e or "CUDA" in e), None)
        if cause:
            short = cause.split("(cudaError", 1)[-1].split(")", 1)[0]
            raise TrtUnavailable(
                f"TensorRT-RTX cannot check the engine here: {detail} (cudaError{short}); "
                f"{GPU_HINT}"
            )
        reasons = [detail]
    return verdict, "; ".join(reasons)
