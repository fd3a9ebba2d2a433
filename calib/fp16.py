"""FP16 LoDa graphs for strongly typed TensorRT (the precision lives in the graph).

TensorRT 11 builds every network strongly typed: it runs each layer in the type the ONNX graph
gives it, so an FP16 engine needs an FP16 graph. :func:`convert_onnx_fp16` turns the FP32 export
of :mod:`loda.export.onnx` into one:

- FP16: Conv / MatMul / Gemm (weights and activations) and the elementwise ops between them;
- FP32 (kept on purpose): ``LayerNormalization``, ``Softmax``, every ``Reduce*``, ``Pow``,
  ``Sqrt``, Instance/Group normalisation (:data:`FP32_OP_TYPES`); the input normalisation (the
  nodes between the uint8 input and the first Conv: cast, /255, -mean, /std, transpose); and the
  head (everything after the last LayerNormalization: class-token select, the cosine
  normalisation ``x / max(||x||, eps)`` with its ReduceL2/Div, and the 1-output projection,
  which is < 0.01 % of the FLOPs);
- graph input and output unchanged: uint8 ``crops`` in, float32 ``score`` out.

Converter: onnxconverter-common's ``float16.convert_float_to_float16`` (the one FP16 path: it
runs and is tested here; ModelOpt AutoCast was an untested alternative and was removed) with
``keep_io_types=True`` and ``op_block_list = DEFAULT_OP_BLOCK_LIST + FP32_OP_TYPES`` (the
argument replaces the default list) plus the two FP32 regions as ``node_block_list``. Its known
traps are handled here: ``Constant`` nodes become initializers and initializers shared between
FP32 and FP16 nodes are duplicated first (else one copy is cast for both); afterwards
pre-existing ``Cast(to=FLOAT)`` nodes in the FP16 part are retargeted to FLOAT16 and a graph
output the converter turned into FLOAT16 is restored to FLOAT. The result must pass
``onnx.checker`` (strict type inference) and load in ONNX Runtime.

Report: the share of GEMM FLOPs (Conv/MatMul/Gemm, from shapes at batch 1) computed in FP16
(goal >= 95 %), and, on real images, Spearman(FP16 image scores, FP32 image scores) >= 0.999,
max and mean |d score| per crop; any inf/NaN fails. Written to ``metadata_props``:
``loda.precision = "fp16"`` and ``loda.fp16`` (JSON: converter, share, kept op types).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from loda.errors import LodaError, first_line

from .graph_stats import GEMM_OPS, gemm_stats
from .verify import spearman_problems

if TYPE_CHECKING:
    import onnx

    from loda.data.images import VerificationImages

__all__ = [
    "DEFAULT_FP16_VERIFY_IMAGES",
    "FP32_OP_TYPES",
    "MIN_FP16_SHARE",
    "MIN_SPEARMAN",
    "Fp16Error",
    "Fp16Report",
    "compare_fp16",
    "convert_onnx_fp16",
    "fp32_regions",
]

FP32_OP_TYPES: tuple[str, ...] = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "Pow",
    "Sqrt",
)
MIN_VERIFY_IMAGES = 50  # the FP16 check: Spearman over >= 50 images x 15 crops
DEFAULT_FP16_VERIFY_IMAGES = MIN_VERIFY_IMAGES
MIN_SPEARMAN = 0.999
MIN_FP16_SHARE = 0.95

Log = Callable[[str], None]


class Fp16Error(LodaError):
    """FP16 conversion failed a check (share, types, inf/NaN, rank agreement with FP32)."""

    def __init__(self, message: str, report: Fp16Report | None = None) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Fp16Report:
    converter: str
    fp16_share: float
    gemm_flops: int
    fp32_kept: dict[str, int]  # op type -> nodes kept in FP32
    n_casts: int
    clamped_initializers: int = 0  # initializers with values clamped to +-1e4 for FP16
    n_images: int = 0
    n_crops: int = 0
    spearman: float | None = None
    max_abs: float | None = None
    mean_abs: float | None = None
    n_nonfinite: int = 0
    worst_image: str = ""
    seconds: float = 0.0
    checks: list[str] = field(default_factory=list)  # failed checks, empty when all passed

    @property
    def verified(self) -> bool:
        return self.spearman is not None

    @property
    def passed(self) -> bool:
        return not self.checks

    def summary(self) -> str:
        text = f"FP16 GEMM FLOPs {100 * self.fp16_share:.1f}%"
        if self.verified:
            text += (
                f", Spearman vs FP32 {self.spearman:.5f} on {self.n_images} images, "
                f"max|d| {self.max_abs:.2e}"
            )
        return text

    def table(self) -> str:
        rows = [
            ("converter", self.converter),
            ("GEMM FLOPs in FP16", f"{100 * self.fp16_share:.2f}%  (goal >= {MIN_FP16_SHARE:.0%})"),
            ("kept in FP32", ", ".join(f"{k} {v}" for k, v in sorted(self.fp32_kept.items()))),
            ("Cast nodes", str(self.n_casts)),
        ]
        if self.clamped_initializers:
            rows.append(
                ("clamped weights", f"{self.clamped_initializers} initializers clamped to +-1e4")
            )
        if self.verified:
            rows += [
                ("images / crops", f"{self.n_images} / {self.n_crops}"),
                ("Spearman (images)", f"{self.spearman:.6f}  (goal >= {MIN_SPEARMAN})"),
                ("max |d| (crops)", f"{self.max_abs:.3e}"),
                ("mean |d| (crops)", f"{self.mean_abs:.3e}"),
                ("worst image", self.worst_image),
                ("inf/NaN scores", str(self.n_nonfinite)),
            ]
        rows.append(("result", "PASS" if self.passed else "FAIL: " + "; ".join(self.checks)))
        width = max(len(k) for k, _ in rows)
        title = "FP16 vs FP32, ONNX Runtime (CPU)"
        return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in rows)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "converter": self.converter,
            "fp16_gemm_flops_share": round(self.fp16_share, 6),
            "gemm_flops_batch1": self.gemm_flops,
            "fp32_kept": dict(sorted(self.fp32_kept.items())),
            "fp32_op_types": list(FP32_OP_TYPES),
            "n_images": self.n_images,
            "spearman_vs_fp32": self.spearman,
            "max_abs_vs_fp32": self.max_abs,
            "mean_abs_vs_fp32": self.mean_abs,
        }


# --------------------------------------------------------------------------------------------
# Graph helpers
# --------------------------------------------------------------------------------------------


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _descendants(graph: onnx.GraphProto, roots: Iterable[onnx.NodeProto]) -> set[str]:
    consumers = _consumers(graph)
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        for out in node.output:
            stack.extend(consumers.get(out, ()))
    return seen


def _name_nodes(graph: onnx.GraphProto) -> None:
    names = {n.name for n in graph.node if n.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"loda_{node.op_type}_{i}"
            while name in names:
                name += "_"
            node.name = name
            names.add(name)


def fp32_regions(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """Names of the nodes of the input normalisation and of the head (kept in FP32).

    Input normalisation: nodes reachable from the graph inputs through float tensors, stopping
    at (not including) the first Conv/MatMul/Gemm. Head: the last LayerNormalization's
    descendants plus those of any ReduceL2/ReduceSumSquare (the cosine normalisation).
    """
    import onnx

    graph = model.graph
    types = _elem_types(model)
    consumers = _consumers(graph)
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    initializers = {t.name for t in graph.initializer}

    inputs = [i for i in graph.input if i.name not in initializers]
    # The pixel path: float tensors and the input's own type (uint8 crops may be transposed
    # before the cast); int64 tensors (Shape, indices) are metadata, not pixels.
    pixel_types = float_types | {i.type.tensor_type.elem_type for i in inputs}
    input_region: set[str] = set()
    stack = [n for i in inputs for n in consumers[i.name]]
    while stack:
        node = stack.pop()
        if node.name in input_region or node.op_type in GEMM_OPS:
            continue
        pixel_outputs = [o for o in node.output if types.get(o) in pixel_types]
        if not pixel_outputs:
            continue
        input_region.add(node.name)
        for out in pixel_outputs:
            stack.extend(consumers.get(out, ()))

    layernorms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    roots = [n for n in graph.node if n.op_type in ("ReduceL2", "ReduceSumSquare")]
    if layernorms:
        roots.append(layernorms[-1])  # nodes are topologically sorted: the final norm
    return input_region, _descendants(graph, roots)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Constant nodes -> initializers, so the FP32/FP16 decision applies to them like weights."""
    from onnx import helper, numpy_helper

    keep = []
    for node in graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1:
            keep.append(node)
            continue
        attr = node.attribute[0]
        if attr.name == "value":
            tensor = numpy_helper.to_array(attr.t)
        elif attr.name in ("value_float", "value_int"):
            value = helper.get_attribute_value(attr)
            tensor = np.array(value, dtype=np.float32 if attr.name == "value_float" else np.int64)
        elif attr.name in ("value_floats", "value_ints"):
            value = helper.get_attribute_value(attr)
            dtype = np.float32 if attr.name == "value_floats" else np.int64
            tensor = np.array(list(value), dtype=dtype)
        else:
            keep.append(node)
            continue
        graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
    del graph.node[:]
    graph.node.extend(keep)


def _drop_initializer_value_info(graph: onnx.GraphProto) -> None:
    """The dynamo exporter lists every initializer in ``value_info``. onnxconverter-common
    then retypes them FLOAT16 and wraps the FP32 nodes that read them in Cast(to=FLOAT), so
    an FP32 LayerNorm or the input mean/std would get FP16-rounded constants. Without the
    entries, initializers read only by FP32 nodes stay FP32."""
    initializers = {t.name for t in graph.initializer}
    kept = [vi for vi in graph.value_info if vi.name not in initializers]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _fold_cast_round_trips(graph: onnx.GraphProto) -> int:
    """Remove FLOAT -> Cast(FLOAT16) -> Cast(FLOAT) round trips between FP32 nodes.

    onnxconverter-common folds such pairs only when the FP16 tensor has one consumer, so a
    tensor passed between two FP32 regions with several consumers (the class token feeding
    the cosine normalisation) would be rounded to FP16 on the way. Returns the casts removed.
    """
    from onnx import TensorProto

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    graph_outputs = {o.name for o in graph.output}
    producers = {o: n for n in graph.node for o in n.output}
    value_types = {vi.name: vi.type.tensor_type.elem_type for vi in graph.value_info}
    value_types.update({t.name: t.data_type for t in graph.initializer})
    value_types.update({vi.name: vi.type.tensor_type.elem_type for vi in graph.input})
    rename: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != TensorProto.FLOAT or node.output[0] in graph_outputs:
            continue
        first = producers.get(node.input[0])
        if first is None or cast_to(first) != TensorProto.FLOAT16:
            continue
        if value_types.get(first.input[0]) != TensorProto.FLOAT:
            continue
        rename[node.output[0]] = first.input[0]
    if not rename:
        return 0
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
    # Drop casts whose outputs nobody reads any more.
    removed = 0
    while True:
        used = {i for n in graph.node for i in n.input} | graph_outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            return removed
        for n in dead:
            graph.node.remove(n)
        removed += len(dead)


def _split_shared_initializers(graph: onnx.GraphProto, blocked: set[str], op_block: set[str]):
    """Give FP32 nodes their own copy of initializers that FP16 nodes also read."""
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            users[name].append((node, i))
    by_name = {t.name: t for t in graph.initializer}
    for name, uses in users.items():
        init = by_name.get(name)
        if init is None:
            continue
        is_fp32 = [n.name in blocked or n.op_type in op_block for n, _ in uses]
        if all(is_fp32) or not any(is_fp32):
            continue
        copy = graph.initializer.add()
        copy.CopyFrom(init)
        copy.name = f"{name}__fp32"
        for (node, i), fp32 in zip(uses, is_fp32, strict=True):
            if fp32:
                node.input[i] = copy.name


def _fix_casts_and_outputs(model: onnx.ModelProto, io_types: dict[str, int]) -> None:
    """Repair what onnxconverter-common leaves inconsistent for a strongly typed parser."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    value_types = {vi.name: vi.type.tensor_type.elem_type for vi in graph.value_info}
    # 1. pre-existing Cast(to=FLOAT) inside the FP16 part: the converter retyped its output
    #    tensor to FLOAT16 but kept the attribute.
    for node in graph.node:
        if node.op_type != "Cast":
            continue
        to = next(a for a in node.attribute if a.name == "to")
        if to.i == TensorProto.FLOAT and value_types.get(node.output[0]) == TensorProto.FLOAT16:
            to.i = TensorProto.FLOAT16
    # 2. graph outputs (and inputs) keep their original types.
    producers = {o: n for n in graph.node for o in n.output}
    for out in graph.output:
        want = io_types[out.name]
        if out.type.tensor_type.elem_type == want:
            continue
        producer = producers.get(out.name)
        if (
            producer is not None
            and producer.op_type == "Cast"
            and not any(out.name in n.input for n in graph.node)
        ):
            # blocked node -> Cast(to=FLOAT16) -> output: make the cast lossless.
            next(a for a in producer.attribute if a.name == "to").i = want
        else:
            inner = f"{out.name}__fp16"
            for node in graph.node:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            graph.node.append(helper.make_node("Cast", [inner], [out.name], to=want))
        out.type.tensor_type.elem_type = want
    for inp in graph.input:
        if inp.name in io_types and inp.type.tensor_type.elem_type != io_types[inp.name]:
            raise Fp16Error(
                f"FP16 conversion changed the type of input {inp.name!r} "
                f"({onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)})"
            )


def _convert_onnxconverter(model: onnx.ModelProto, blocked: set[str]) -> tuple[Any, int]:
    from onnxconverter_common import float16

    op_block_list = [*float16.DEFAULT_OP_BLOCK_LIST, *FP32_OP_TYPES]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=op_block_list,
            node_block_list=sorted(blocked),
        )
    # Only the clamps to +-max_finite_val (1e4) matter; tiny values -> 1e-7 are harmless.
    clamped = sum(_is_overflow_clamp(str(w.message)) for w in caught)
    return converted, clamped


def _is_overflow_clamp(message: str) -> bool:
    if "will be truncated to" not in message:
        return False
    try:
        return abs(float(message.rsplit(" ", 1)[-1])) >= 1e4
    except ValueError:
        return False


def _kept_fp32(model: onnx.ModelProto) -> dict[str, int]:
    """Op types (other than Cast) whose outputs stay FP32, with their counts."""
    import onnx

    types = _elem_types(model)
    kept: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        if node.op_type == "Cast":
            continue
        if any(types.get(o) == onnx.TensorProto.FLOAT for o in node.output):
            kept[node.op_type] += 1
    return dict(kept)


# --------------------------------------------------------------------------------------------
# Conversion and verification
# --------------------------------------------------------------------------------------------


def compare_fp16(
    fp32_model: str | os.PathLike | bytes,
    fp16_model: str | os.PathLike | bytes,
    images: VerificationImages,
) -> dict[str, Any]:
    """Score ``images`` with both models in ONNX Runtime (CPU); per-crop and per-image stats."""
    from .verify import compare_graphs, verification_numbers

    stats = compare_graphs(fp32_model, fp16_model, images)
    return verification_numbers(stats, MIN_VERIFY_IMAGES)


CONVERTER = "onnxconverter-common"


def _convert(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The FP16 graph of ``model`` (FP32 regions and graph I/O types kept), checked by
    onnx.checker and against the LoDa interface; and the number of clamped initializers."""
    import onnx

    from loda.artifacts import check_exported_graph

    work = onnx.ModelProto()
    work.CopyFrom(model)
    _name_nodes(work.graph)
    _constants_to_initializers(work.graph)
    input_region, head_region = fp32_regions(work)
    blocked = input_region | head_region
    io_types = {
        vi.name: vi.type.tensor_type.elem_type for vi in [*work.graph.input, *work.graph.output]
    }
    crop_size = next(iter(work.graph.input)).type.tensor_type.shape.dim[1].dim_value
    _drop_initializer_value_info(work.graph)
    _split_shared_initializers(work.graph, blocked, set(FP32_OP_TYPES))
    # The converter prints nothing useful to stdout; keep stdout for data.
    with contextlib.redirect_stdout(sys.stderr):
        converted, clamped = _convert_onnxconverter(work, blocked)
    _fold_cast_round_trips(converted.graph)
    _fix_casts_and_outputs(converted, io_types)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = first_line(exc)
        raise Fp16Error(f"FP16 graph fails onnx.checker: {first}") from None
    check_exported_graph(converted, crop_size=crop_size)  # I/O names, types, dynamic batch
    return converted, clamped


def _fp16_report(converted: onnx.ModelProto, clamped: int, min_share: float) -> Fp16Report:
    """The FP16 share of GEMM FLOPs and the kept FP32 ops; a failed goal goes to ``checks``."""
    stats = gemm_stats(converted)
    report = Fp16Report(
        converter=CONVERTER,
        fp16_share=stats.fp16_share,
        gemm_flops=stats.total_flops,
        fp32_kept=_kept_fp32(converted),
        n_casts=sum(n.op_type == "Cast" for n in converted.graph.node),
        clamped_initializers=clamped,
    )
    if stats.unknown:
        report.checks.append(f"{len(stats.unknown)} GEMM nodes without inferred shapes")
    if report.fp16_share < min_share:
        report.checks.append(
            f"only {100 * report.fp16_share:.1f}% of GEMM FLOPs in FP16 (goal {min_share:.0%})"
        )
    return report


def convert_onnx_fp16(
    model: onnx.ModelProto,
    *,
    images: VerificationImages | None = None,
    fp32_model: str | os.PathLike | bytes | None = None,
    min_share: float = MIN_FP16_SHARE,
    min_spearman: float = MIN_SPEARMAN,
    log: Log | None = None,
) -> tuple[onnx.ModelProto, Fp16Report]:
    """Convert the FP32 LoDa graph ``model`` to a strongly typed FP16 graph and check it.

    With ``images`` the FP16 model is compared with ``fp32_model`` (default: ``model``) in ONNX
    Runtime. Raises :class:`Fp16Error` (with the report as ``.report``) when a check fails.
    """
    import onnx

    from loda.artifacts import ort_session, read_onnx_metadata, stamp_precision

    log = log or (lambda _m: None)
    start = time.perf_counter()
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        raise Fp16Error("the model already holds FP16 weights; convert the FP32 export")
    metadata = read_onnx_metadata(model, source="the FP32 model")
    if images is not None and len(images.names) < MIN_VERIFY_IMAGES:
        raise Fp16Error(
            f"FP16 verification needs at least {MIN_VERIFY_IMAGES} images, got "
            f"{len(images.names)} ({images.source}); pass a folder or archive with more"
        )
    fp32_bytes = model.SerializeToString() if fp32_model is None else fp32_model

    log(f"converting to FP16 with {CONVERTER}")
    converted, clamped = _convert(model)
    report = _fp16_report(converted, clamped, min_share)
    fp16_bytes = converted.SerializeToString()
    try:
        ort_session(fp16_bytes)
    except LodaError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0]
        raise Fp16Error(f"ONNX Runtime cannot load the FP16 graph: {first}") from None

    if images is not None:
        log(f"comparing FP16 with FP32 on {images.n_crops} crops of {len(images.names)} images")
        numbers = compare_fp16(fp32_bytes, fp16_bytes, images)
        for key in ("n_images", "n_crops", "spearman", "max_abs", "mean_abs", "n_nonfinite"):
            setattr(report, key, numbers[key])
        report.worst_image = numbers["worst_image"]
        report.checks += spearman_problems(report.n_nonfinite, report.spearman, min_spearman)
    report.seconds = time.perf_counter() - start
    if report.checks:
        raise Fp16Error("FP16 model failed: " + "; ".join(report.checks), report)
    stamp_precision(converted, model, metadata, "fp16", report.to_dict(), tools=(CONVERTER,))
    return converted, report
