"""Engines from LoDa ONNX graphs: TensorRT for RTX (default) and TensorRT >= 10.12 / 11.x.

Both flavors build strongly typed networks (``create_network(1 << STRONGLY_TYPED)``: required
on TensorRT 10.x, the only mode on 11.x and TensorRT-RTX), so the precision comes only from the
ONNX graph (FP32 export, FP16 graph of :mod:`loda.calib.fp16`, INT8 Q/DQ graph of
:mod:`loda.calib.int8`). The only precision knob left is TF32, on by default: it is cleared for
an FP32 graph (``loda.precision`` in ``metadata_props``), so an FP32 engine is a parity
reference.

One code path for both flavors (:mod:`loda.trt_common` holds what differs): parse with
``trt.OnnxParser.parse_from_file`` (parser errors reported one line per node, nothing written),
summarise the parsed network (:func:`network_stats`: layer count and the GEMM FLOPs by the data
type TensorRT computes them in), one optimisation profile on ``crops`` (batch
``MIN:OPT:MAX``), workspace limit, builder optimisation level, then the flavor's part
(:func:`_configure_flavor`): TensorRT-RTX targets a list of compute capabilities and needs no
GPU (and gets no timing cache, which would query one); TensorRT builds on the GPU that will run
the plan, optionally with a timing cache. The plan bytes are written untouched (``trtexec
--loadEngine`` works) with a sidecar ``<engine>.json``: flavor and its version, targets or GPU,
precision, profile, ONNX and plan sha256, the network summary, the ONNX's ``loda`` record and
the build time.

:func:`inspect_engine`: the sidecar plus, where the flavor's runtime can deserialise the plan
(a GPU), the engine's I/O tensors and layer count; without them the sidecar alone.

TensorRT, TensorRT-RTX and cuda-python are imported only inside the functions that need them;
this module imports without any of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loda.artifacts import INPUT_NAME, read_onnx_metadata, sha256_file
from loda.atomic import write_bytes_atomic
from loda.trt_common import (
    DEFAULT_FLAVOR,
    FLAVORS,
    GPU_HINT,
    SIDECAR_FORMAT,
    Flavor,
    TrtError,
    TrtUnavailable,
    compute_capability_enum,
    engine_validity,
    flavor_of,
    gpu_properties,
    import_cudart,
    import_tensorrt,
    make_logger,
    mismatch,
    parse_compute_capabilities,
    read_sidecar,
    sidecar_path,
)

__all__ = [
    "DEFAULT_FLAVOR",
    "DEFAULT_OPT_LEVEL",
    "DEFAULT_PROFILE",
    "FLAVORS",
    "GPU_HINT",
    "INSTALL_HINT",
    "MIN_TENSORRT",
    "BatchProfile",
    "BuildReport",
    "GemmLayer",
    "NetworkStats",
    "TrtError",
    "TrtUnavailable",
    "build_engine",
    "gpu_properties",
    "import_cudart",
    "import_tensorrt",
    "inspect_engine",
    "network_stats",
    "parse_batch_profile",
    "parse_compute_capabilities",
    "read_sidecar",
    "sidecar_path",
]

MIN_TENSORRT = FLAVORS["tensorrt"].min_version
DEFAULT_OPT_LEVEL = 3
INSTALL_HINT = FLAVORS["tensorrt"].install_hint

log = logging.getLogger(__name__)


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
# The parsed network: layers and GEMM precision as TensorRT sees them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GemmLayer:
    name: str
    kind: str  # MATRIX_MULTIPLY | CONVOLUTION | ...
    flops: int | None  # multiply-adds counted as 2 FLOPs, per crop (batch 1); None: unknown shape
    dtype: str  # what TensorRT computes it in: FLOAT, HALF, BF16, INT8 (Q/DQ-fed), FP8, ...


@dataclass(frozen=True)
class NetworkStats:
    """Layer count of a parsed network and its GEMM layers with their compute data type."""

    layers: int
    int64_layers: int  # layers with an INT64 output: shape arithmetic
    gemms: tuple[GemmLayer, ...]

    def flops(self, dtype: str | None = None) -> int:
        return sum(g.flops or 0 for g in self.gemms if dtype is None or g.dtype == dtype)

    def shares(self) -> dict[str, float]:
        """Share of the GEMM FLOPs per data type, largest first."""
        total = self.flops()
        if not total:
            return {}
        per: dict[str, int] = {}
        for g in self.gemms:
            per[g.dtype] = per.get(g.dtype, 0) + (g.flops or 0)
        return {k: v / total for k, v in sorted(per.items(), key=lambda kv: -kv[1])}

    def share(self, dtype: str) -> float:
        return self.shares().get(dtype, 0.0)

    @property
    def unknown(self) -> list[str]:
        return [g.name for g in self.gemms if g.flops is None]

    def describe(self) -> str:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in self.shares().items()) or "none"
        unknown = f"; {len(self.unknown)} of unknown shape" if self.unknown else ""
        return (
            f"{len(self.gemms)} GEMM layers, {self.flops() / 1e9:.2f} GFLOP per crop: "
            f"{shares}{unknown}"
        )

    def to_dict(self) -> dict[str, Any]:
        per_kind: dict[str, dict[str, int]] = {}
        for g in self.gemms:
            d = per_kind.setdefault(g.kind, {})
            d[g.dtype] = d.get(g.dtype, 0) + (g.flops or 0)
        return {
            "layers": self.layers,
            "int64_layers": self.int64_layers,
            "gemm_layers": len(self.gemms),
            "gemm_flops_per_crop": self.flops(),
            "gemm_flop_share": {k: round(v, 6) for k, v in self.shares().items()},
            "gemm_flops_by_kind": per_kind,
            "gemm_unknown_shape": self.unknown,
        }


_GEMM_KINDS = ("MATRIX_MULTIPLY", "CONVOLUTION", "DECONVOLUTION", "FULLY_CONNECTED")
# Layers that move data without computing on it: a DEQUANTIZE behind them still feeds the GEMM.
_DATA_MOVEMENT = ("SHUFFLE", "SQUEEZE", "UNSQUEEZE", "IDENTITY", "SLICE")


def _prod(dims: Any) -> int | None:
    n = 1
    for d in dims:
        if int(d) < 0:
            return None
        n *= int(d)
    return n


def _gemm_flops(trt: Any, layer: Any, kind: str) -> int | None:
    out = _prod(layer.get_output(0).shape)
    if out is None:
        return None
    if kind == "MATRIX_MULTIPLY":
        layer.__class__ = trt.IMatrixMultiplyLayer
        a = tuple(layer.get_input(0).shape)
        k = a[-2] if layer.op0 == trt.MatrixOperation.TRANSPOSE else a[-1]
        return None if k < 0 else 2 * out * int(k)
    if kind in ("CONVOLUTION", "DECONVOLUTION"):
        cls = trt.IConvolutionLayer if kind == "CONVOLUTION" else trt.IDeconvolutionLayer
        layer.__class__ = cls
        kernel = layer.get_input(1) if layer.num_inputs > 1 else None
        if kernel is not None:
            per_out = _prod(tuple(kernel.shape)[1:])
        else:
            maps = int(layer.num_output_maps) or 1
            per_out = int(layer.kernel.size) // maps
        if not per_out:
            return None
        if kind == "DECONVOLUTION":  # every input element meets the whole kernel slice
            inp = _prod(layer.get_input(0).shape)
            return None if inp is None else 2 * inp * int(layer.kernel.size or 0)
        return 2 * out * per_out
    return None  # FULLY_CONNECTED: not in TensorRT >= 10


def _quantized_dtype(trt: Any, tensor: Any, producers: dict[str, Any]) -> str | None:
    """The quantized type a GEMM input is dequantized from (Q/DQ), or None."""
    seen = 0
    while tensor is not None and seen < 16:
        layer = producers.get(tensor.name)
        if layer is None:
            return None
        kind = layer.type.name
        if kind == "DEQUANTIZE":
            source = layer.get_input(0)
            return source.dtype.name if source is not None else None
        source = layer.get_input(0)
        if kind not in _DATA_MOVEMENT or source is None or source.dtype != tensor.dtype:
            return None  # computes, or casts: not a plain Q/DQ feed
        tensor = source
        seen += 1
    return None


def network_stats(trt: Any, network: Any, crop_size: int) -> NetworkStats:
    """Layers and GEMM precision of a parsed network (no GPU needed).

    FLOPs are counted at one crop: the dynamic batch of the input is set to 1 while the shapes
    are read, then restored. A GEMM whose every input is dequantized (Q/DQ) counts as the
    quantized type (TensorRT fuses Q/DQ into the GEMM); otherwise it is its input's type.
    """
    inp = network.get_input(0)
    saved = tuple(inp.shape)
    if saved and saved[0] < 0:
        inp.shape = (1, *saved[1:])
    try:
        producers: dict[str, Any] = {}
        int64 = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            outs = [layer.get_output(j) for j in range(layer.num_outputs)]
            for t in outs:
                producers[t.name] = layer
            if any(t.dtype == trt.DataType.INT64 for t in outs):
                int64 += 1
        gemms = []
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            kind = layer.type.name
            if kind not in _GEMM_KINDS:
                continue
            inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
            inputs = [t for t in inputs if t is not None]
            quant = [_quantized_dtype(trt, t, producers) for t in inputs]
            # A convolution with its weights inside the layer: only the activation is checked.
            if quant and all(quant) and (kind == "MATRIX_MULTIPLY" or len(inputs) > 1):
                dtype = quant[0]
            else:
                dtype = inputs[0].dtype.name
            gemms.append(GemmLayer(layer.name, kind, _gemm_flops(trt, layer, kind), dtype))
        return NetworkStats(network.num_layers, int64, tuple(gemms))
    finally:
        inp.shape = saved


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
    network: NetworkStats
    warnings: list[str] = field(default_factory=list)

    @property
    def size_mb(self) -> float:
        return self.plan_bytes / 1e6


def _read_onnx_record(onnx_path: Path) -> tuple[dict[str, str], int]:
    """metadata_props and the crop size of a LoDa ONNX file (weights not loaded)."""
    import onnx

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


def _configure_flavor(
    f: Flavor,
    trt: Any,
    config: Any,
    *,
    compute_capabilities: tuple[str, ...] | None,
    timing_cache: Path | None,
) -> tuple[dict[str, Any], Callable[[], None]]:
    """What the flavors do differently: targets (RTX) or a timing cache (TensorRT).

    Returns the flavor's sidecar fields and a function to call after a successful build.
    """
    if f.name == "rtx":
        targets: list[str] | str = "default"
        if compute_capabilities:
            values = [compute_capability_enum(trt, cc) for cc in compute_capabilities]
            config.num_compute_capabilities = len(values)
            for i, value in enumerate(values):
                config.set_compute_capability(value, i)
            targets = list(compute_capabilities)
        return {"compute_capabilities": targets, "timing_cache": None}, lambda: None

    cache_info: dict[str, Any] | None = None
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        loaded = bool(config.set_timing_cache(cache, ignore_mismatch=False))
        if blob and not loaded:
            log.warning(
                "timing cache %s does not match this GPU or TensorRT version; "
                "building without its entries (it will be rewritten)",
                timing_cache,
            )
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
        cache_info = {"path": str(timing_cache), "loaded_bytes": len(blob) if loaded else 0}

    def save_cache() -> None:
        if cache_info is not None:
            serialized = bytes(config.get_timing_cache().serialize())
            write_bytes_atomic(Path(cache_info["path"]), serialized)
            cache_info["saved_bytes"] = len(serialized)

    fields = {
        "timing_cache": cache_info,
        "hardware_compatibility_level": "NONE",
        "version_compatible": False,
    }
    return fields, save_cache


@dataclass(frozen=True)
class _Request:
    """What :func:`build_engine` was asked for; :meth:`check` refuses it before TensorRT loads."""

    onnx: Path
    engine: Path
    flavor: Flavor
    compute_capabilities: tuple[str, ...]
    profile: BatchProfile
    workspace_gb: float | None
    timing_cache: Path | None
    opt_level: int

    def check(self) -> None:
        f = self.flavor
        if not self.onnx.is_file():
            raise TrtError(f"no ONNX file at {self.onnx}")
        if self.engine.is_dir():
            raise TrtError(f"output {self.engine} is a directory; name a .engine file")
        if self.engine.resolve() == self.onnx.resolve():
            raise TrtError(f"output {self.engine} would overwrite the ONNX file")
        if not 0 <= self.opt_level <= 5:
            raise TrtError(f"builder optimisation level must be 0..5, got {self.opt_level}")
        if self.workspace_gb is not None and self.workspace_gb <= 0:
            raise TrtError(f"workspace must be > 0 GB, got {self.workspace_gb}")
        if self.timing_cache is not None and not f.timing_cache:
            raise TrtError(
                f"{f.label} builds take no timing cache (it would make the build query a GPU); "
                "drop --timing-cache"
            )
        if self.compute_capabilities and not f.compute_capability_targets:
            raise TrtError(
                f"{f.label} builds for the GPU it runs on; --compute-capability is for --flavor rtx"
            )

    @property
    def workspace_bytes(self) -> int | None:
        return None if self.workspace_gb is None else int(self.workspace_gb * 2**30)

    def target(self, gpu: dict[str, Any] | None) -> str:
        """Where the plan will run, for the "building" line."""
        if gpu:
            return f"on {gpu['name']} (sm {gpu['compute_capability']})"
        ccs = self.compute_capabilities
        which = (
            f"compute capabilities {','.join(ccs)}"
            if ccs
            else "TensorRT-RTX's default compute capabilities"
        )
        return f"for {which} (no GPU needed)"


@dataclass(frozen=True)
class _Network:
    """A parsed network with its parser, which owns the weights: both live until the build."""

    network: Any
    parser: Any
    stats: NetworkStats


def _create_builder(trt: Any, f: Flavor, logger: Any) -> Any:
    try:
        return trt.Builder(logger)
    except (RuntimeError, TypeError) as exc:  # pybind: "factory function returned nullptr"
        detail = logger.errors[-1] if logger.errors else str(exc)
        hint = f" ({GPU_HINT})" if f.build_needs_gpu else ""
        raise TrtUnavailable(f"{f.label} cannot create a builder: {detail}{hint}") from None


def _network_from_onnx(
    trt: Any, builder: Any, logger: Any, req: _Request, precision: str, crop: int
) -> _Network:
    """Parse the ONNX file into a strongly typed network (no EXPLICIT_BATCH: strong typing is
    required on 10.x and the only mode on 11.x and TensorRT-RTX) and summarise it."""
    f = req.flavor
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    log.info("parsing %s (%s) with %s %s", req.onnx, precision, f.label, trt.__version__)
    logger.mute = True  # node errors are reported below, one line each
    parsed = parser.parse_from_file(str(req.onnx))
    logger.mute = False
    if not parsed:
        lines = _parser_errors(parser)
        for line in lines:
            log.error("parser: %s", line)
        first = lines[0] if lines else (logger.errors[-1] if logger.errors else "unknown error")
        raise TrtError(
            f"{f.label} {trt.__version__} cannot parse {req.onnx}: {len(lines)} node error(s); "
            f"first: {first}"
        )
    if network.num_inputs != 1 or network.get_input(0).name != INPUT_NAME:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise TrtError(f"parsed network has inputs {names}; expected ['{INPUT_NAME}']")
    batch, *_ = network.get_input(0).shape
    if batch != -1 and not req.profile.min == req.profile.max == batch:
        raise TrtError(
            f"{req.onnx} has a fixed batch of {batch}; --batch {req.profile} needs a "
            "dynamic batch dimension (re-export with loda-export)"
        )
    stats = network_stats(trt, network, crop)
    log.info("network: %d layers (%d with INT64 outputs)", stats.layers, stats.int64_layers)
    log.info("GEMM precision (TensorRT network): %s", stats.describe())
    return _Network(network, parser, stats)


def _builder_config(
    trt: Any, builder: Any, req: _Request, crop: int, tf32: bool
) -> tuple[Any, dict[str, Any], Callable[[], None]]:
    """The builder config: one profile on ``crops``, workspace, optimisation level, TF32 and
    the flavor's part; with the flavor's sidecar fields and its after-build step."""
    config = builder.create_builder_config()
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *req.profile.shapes(crop))
    config.add_optimization_profile(opt_profile)
    if req.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, req.workspace_bytes)
    config.builder_optimization_level = req.opt_level
    if not tf32:
        # TF32 is on by default; an FP32 graph is the parity reference: keep GEMMs in FP32.
        config.clear_flag(trt.BuilderFlag.TF32)
    fields, after_build = _configure_flavor(
        req.flavor,
        trt,
        config,
        compute_capabilities=req.compute_capabilities,
        timing_cache=req.timing_cache,
    )
    return config, fields, after_build


def _build_plan(
    trt: Any,
    builder: Any,
    net: _Network,
    config: Any,
    logger: Any,
    req: _Request,
    gpu: dict[str, Any] | None,
    tf32: bool,
) -> tuple[bytes, float]:
    """The serialised plan's bytes and the seconds the build took."""
    f = req.flavor
    log.info(
        "building %s %s engine %s: batch %s, opt level %d, TF32 %s",
        f.label,
        trt.__version__,
        req.target(gpu),
        req.profile,
        req.opt_level,
        "on" if tf32 else "off",
    )
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(net.network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        detail = logger.errors[-1] if logger.errors else f"no error message from {f.label}"
        raise TrtError(f"{f.label} engine build failed: {detail}")
    return bytes(plan), seconds


def _sidecar(
    req: _Request,
    *,
    trt_version: str,
    gpu: dict[str, Any] | None,
    plan: bytes,
    meta: dict[str, str],
    crop: int,
    flavor_fields: dict[str, Any],
    stats: NetworkStats,
    onnx_sha: str,
    build_seconds: float,
) -> dict[str, Any]:
    """The engine's provenance record (``<engine>.json``)."""
    from loda.metadata import now_utc

    precision = meta.get("loda.precision", "fp32")
    profile = req.profile
    return {
        "format": SIDECAR_FORMAT,
        "engine": req.engine.name,
        "flavor": req.flavor.name,
        "flavor_label": req.flavor.label,
        "tensorrt_version": trt_version,
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "plan_bytes": len(plan),
        "gpu": gpu,
        "precision": precision,
        "tf32": precision != "fp32",
        "strongly_typed": True,
        "profile": {
            "input": INPUT_NAME,
            "batch": {"min": profile.min, "opt": profile.opt, "max": profile.max},
            "shapes": dict(
                zip(("min", "opt", "max"), map(list, profile.shapes(crop)), strict=True)
            ),
        },
        "builder_optimization_level": req.opt_level,
        "workspace_bytes": req.workspace_bytes,
        **flavor_fields,
        "network": stats.to_dict(),
        "onnx": {"file": req.onnx.name, "sha256": onnx_sha},
        "loda": json.loads(meta["loda"]),  # checked by _read_onnx_record
        "loda_io": json.loads(meta["loda.io"]) if "loda.io" in meta else None,
        "build_seconds": round(build_seconds, 3),
        "built_at": now_utc(),
    }


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    flavor: str | Flavor = DEFAULT_FLAVOR,
    compute_capabilities: tuple[str, ...] | None = None,
    profile: BatchProfile = DEFAULT_PROFILE,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike | None = None,
    opt_level: int = DEFAULT_OPT_LEVEL,
) -> BuildReport:
    """Build a strongly typed engine of ``flavor`` (``rtx`` or ``tensorrt``) from a LoDa ONNX.

    ``rtx`` builds on the CPU for ``compute_capabilities`` (default: TensorRT-RTX's own set);
    ``tensorrt`` builds on CUDA device 0 (choose another with ``CUDA_VISIBLE_DEVICES``). Writes
    ``engine_path`` (the plan bytes) and its sidecar ``<engine>.json``. Raises
    :class:`TrtUnavailable` when the flavor (or, for ``tensorrt``, cuda-python or a GPU) is
    missing, :class:`TrtError` when the ONNX cannot be parsed (parser errors are logged one
    node per line; nothing is written) or the build fails. Progress goes to this module's
    logger.
    """
    start = time.perf_counter()
    req = _Request(
        onnx=Path(onnx_path),
        engine=Path(engine_path),
        flavor=flavor_of(flavor),
        compute_capabilities=tuple(compute_capabilities or ()),
        profile=profile,
        workspace_gb=workspace_gb,
        timing_cache=None if timing_cache is None else Path(timing_cache),
        opt_level=opt_level,
    )
    req.check()
    f = req.flavor
    trt = import_tensorrt(f)
    for cc in req.compute_capabilities:
        compute_capability_enum(trt, cc)  # an unknown target fails before the parse
    gpu = gpu_properties(0) if f.build_needs_gpu else None
    meta, crop = _read_onnx_record(req.onnx)
    onnx_sha = sha256_file(req.onnx)  # the file that is parsed
    precision = meta.get("loda.precision", "fp32")
    tf32 = precision != "fp32"

    logger = make_logger(trt, log.warning)
    builder = _create_builder(trt, f, logger)
    net = _network_from_onnx(trt, builder, logger, req, precision, crop)
    config, flavor_fields, after_build = _builder_config(trt, builder, req, crop, tf32)
    plan, build_seconds = _build_plan(trt, builder, net, config, logger, req, gpu, tf32)
    after_build()

    req.engine.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(req.engine, plan)  # the plan, untouched
    sidecar = _sidecar(
        req,
        trt_version=trt.__version__,
        gpu=gpu,
        plan=plan,
        meta=meta,
        crop=crop,
        flavor_fields=flavor_fields,
        stats=net.stats,
        onnx_sha=onnx_sha,
        build_seconds=build_seconds,
    )
    side = sidecar_path(req.engine)
    write_bytes_atomic(side, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return BuildReport(
        engine_path=req.engine,
        sidecar_path=side,
        plan_bytes=len(plan),
        build_seconds=build_seconds,
        total_seconds=time.perf_counter() - start,
        sidecar=sidecar,
        network=net.stats,
        warnings=list(logger.warnings),
    )


# --------------------------------------------------------------------------------------------
# Inspect
# --------------------------------------------------------------------------------------------


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


def _engine_layers(trt: Any, engine: Any) -> int | None:
    """Number of layers of a deserialised engine (its inspector), or None when unavailable."""
    try:
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # inspector missing or no JSON: the count is optional
        return None
    layers = info.get("Layers") if isinstance(info, dict) else None
    return len(layers) if isinstance(layers, list) else None


def inspect_engine(engine_path: str | os.PathLike) -> dict[str, Any]:
    """``{"engine", "plan_sha256", "sidecar", "io", "layers", "note"}`` for an engine file.

    ``io`` lists the I/O tensors (name, mode, dtype, shape, profile) and ``layers`` the engine's
    layer count when the flavor named by the sidecar (TensorRT when there is none) and a GPU
    are present; otherwise they are None and ``note`` says what is missing. A plan that cannot
    be deserialised raises :class:`TrtError` with the reason.
    """
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
        "layers": None,
        "note": None,
    }
    if sidecar is None:
        log.warning("no sidecar %s: the engine's provenance is unknown", sidecar_path(engine_path))
    elif sidecar.get("plan_sha256") not in (None, result["plan_sha256"]):
        log.warning(
            "the sidecar %s describes another plan (sha256 differs)", sidecar_path(engine_path)
        )
    try:
        f = flavor_of(str((sidecar or {}).get("flavor", "tensorrt")))
    except TrtError as exc:
        raise TrtError(f"sidecar {sidecar_path(engine_path)}: {exc}") from None
    try:
        trt = import_tensorrt(f)
        if f.name == "rtx":
            logger = make_logger(trt, lambda _m: None)
            verdict, reason = engine_validity(trt, trt.Runtime(logger), plan, logger)
            result["validity"] = {"verdict": verdict, "reason": reason}
            if verdict == "INVALID":
                result["note"] = (
                    f"{f.label} {trt.__version__} cannot run {engine_path} here: "
                    f"{reason or 'invalid engine'}"
                )
                return result
            gpu = _rtx_gpu()
        else:
            gpu = gpu_properties()
    except TrtUnavailable as exc:
        result["note"] = f"the I/O listing needs {f.label} and a GPU: {exc}"
        return result
    logger = make_logger(trt, lambda _m: None)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        why = mismatch(sidecar, trt.__version__, gpu, f)
        detail = logger.errors[-1] if logger.errors else f"no error message from {f.label}"
        raise TrtError(
            f"{f.label} {trt.__version__} cannot load {engine_path}: {detail}"
            + (f" ({why}; rebuild with loda-trt build)" if why else "")
        )
    result["io"] = _io_tensors(trt, engine)
    result["layers"] = _engine_layers(trt, engine)
    result["tensorrt_version"] = trt.__version__
    result["gpu"] = gpu
    return result


def _rtx_gpu() -> dict[str, Any] | None:
    """The GPU where cuda-python can say (TensorRT-RTX itself needs no cuda-python)."""
    try:
        return gpu_properties()
    except TrtUnavailable:
        return None
