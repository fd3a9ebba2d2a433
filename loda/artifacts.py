"""ONNX artifacts without torch: the LoDa graph interface, its ``metadata_props`` records, file
hashes, tool versions and an ONNX Runtime reference session.

Export (:mod:`loda.export.onnx`, which needs torch), the precision passes (:mod:`loda.calib`) and
the benchmarks share these; keeping them here lets ``loda.calib`` run without torch. ``onnx`` and
``onnxruntime`` are imported where they are used.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np

from loda.errors import LodaError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "BATCH_DIM",
    "INPUT_NAME",
    "JSON_PROPS",
    "OUTPUT_NAME",
    "ArtifactError",
    "check_exported_graph",
    "ort_scores",
    "ort_session",
    "read_onnx_metadata",
    "set_metadata",
    "sha256_file",
    "stamp_precision",
    "tool_versions",
]

INPUT_NAME = "crops"
OUTPUT_NAME = "score"
BATCH_DIM = "batch"
_ORT_HINT = "pip install 'loda[cpu]' (onnxruntime) or 'loda[gpu]' (onnxruntime-gpu)"
_TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "timm", "loda")


class ArtifactError(LodaError):
    """An ONNX graph is not the LoDa interface, its records are damaged, or the images to check
    it with cannot be read."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tool_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of the export toolchain (packages that are absent are left out)."""
    out = {}
    for name in (*_TOOLS, *extra):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ArtifactError(f"ONNX Runtime is needed to verify the export; {_ORT_HINT}") from None
    return onnxruntime


def ort_session(model: str | os.PathLike | bytes) -> Any:
    """An ONNX Runtime CPU session with default options (the verification reference); on CPUs
    whose u8s8 integer kernels saturate, ONNX Runtime's exact ones (:mod:`loda.cpu_isa`)."""
    from loda.cpu_isa import int8_session_config

    ort = _import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no fp16 "cast inserted" chatter
    int8_session_config(options)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ort_scores(session: Any, crops: np.ndarray) -> np.ndarray:
    """Scores (float32 [n]) of uint8 NHWC crops, in one run."""
    name = session.get_inputs()[0].name
    (out,) = session.run(None, {name: np.ascontiguousarray(crops)})
    return np.asarray(out)


def _elem_type_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "undefined"


def _dims(value_info: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_param"):
            dims.append(d.dim_param)
        elif d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            dims.append("?")
    return dims


#: metadata_props entries that hold a JSON object (the others are plain strings).
JSON_PROPS = ("loda", "loda.io", "loda.fp16", "loda.int8", "loda.tool_versions")


def read_onnx_metadata(model: onnx.ModelProto, *, source: object = None) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict.

    With ``source`` (a path or a name for messages) the :data:`JSON_PROPS` present are checked
    to be JSON objects: a damaged record is a one-line :class:`ArtifactError` naming the key.
    """
    meta = {p.key: p.value for p in model.metadata_props}
    for key in JSON_PROPS if source is not None else ():
        if key not in meta:
            continue
        try:
            record = json.loads(meta[key])
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise ArtifactError(f"{source}: metadata_props '{key}' is not a JSON object (damaged?)")
    return meta


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set (or replace) ``metadata_props`` entries."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for graph_nodes in [model.graph.node, *(f.node for f in model.functions)]:
        for node in graph_nodes:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# --------------------------------------------------------------------------------------------
# Graph checks
# --------------------------------------------------------------------------------------------


def check_exported_graph(
    model: onnx.ModelProto,
    *,
    crop_size: int,
    expected_layernorms: int | None = None,
    input_elem_type: int | None = None,
    output_elem_type: int | None = None,
) -> dict[str, int]:
    """Assert the LoDa ONNX interface and return the op counts.

    One input ``crops`` uint8 ``[batch, crop, crop, 3]`` whose dim 0 is symbolic
    (``dim_param``), one output ``score`` float32 ``[batch]`` with the same symbol, and (when
    ``expected_layernorms`` is given) that many ``LayerNormalization`` nodes: a LayerNorm that
    was decomposed into ReduceMean/Sub/Pow/Sqrt/Div would lose precision in FP16.
    """
    import onnx

    in_type = onnx.TensorProto.UINT8 if input_elem_type is None else input_elem_type
    out_type = onnx.TensorProto.FLOAT if output_elem_type is None else output_elem_type
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    problems = []
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ArtifactError(
            f"exported graph has inputs {[i.name for i in inputs]} and outputs "
            f"{[o.name for o in graph.output]}; expected ['{INPUT_NAME}'] and ['{OUTPUT_NAME}']"
        )
    (inp,), (out,) = inputs, graph.output
    in_dims, out_dims = _dims(inp), _dims(out)
    if inp.type.tensor_type.elem_type != in_type:
        problems.append(f"input type {_elem_type_name(inp.type.tensor_type.elem_type)}")
    if out.type.tensor_type.elem_type != out_type:
        problems.append(f"output type {_elem_type_name(out.type.tensor_type.elem_type)}")
    batch_dim = inp.type.tensor_type.shape.dim[0] if in_dims else None
    if batch_dim is None or not batch_dim.HasField("dim_param"):
        problems.append(f"input batch dimension is not symbolic (input shape {in_dims})")
    if in_dims[1:] != [crop_size, crop_size, 3]:
        problems.append(f"input shape {in_dims}, expected [batch, {crop_size}, {crop_size}, 3]")
    if len(out_dims) != 1 or not isinstance(out_dims[0], str) or out_dims[:1] != in_dims[:1]:
        problems.append(f"output shape {out_dims}, expected [{in_dims[0] if in_dims else '?'}]")
    counts = _op_counts(model)
    n_ln = counts.get("LayerNormalization", 0)
    if expected_layernorms is not None and n_ln != expected_layernorms:
        problems.append(
            f"{n_ln} LayerNormalization nodes for {expected_layernorms} LayerNorm modules "
            "(decomposed LayerNorm; export with opset >= 17)"
        )
    if problems:
        raise ArtifactError("exported graph is wrong: " + "; ".join(problems))
    return counts


def stamp_precision(
    model: onnx.ModelProto,
    source: onnx.ModelProto,
    source_metadata: dict[str, str],
    precision: str,
    record: dict[str, Any],
    *,
    tools: Sequence[str] = (),
) -> None:
    """Give a converted graph its records: the source graph's ``metadata_props`` (a converter
    may drop them), ``loda.precision``, ``loda.<precision>`` (the conversion's report), the tool
    versions and ``loda.io`` with the new precision; and the source's doc string."""
    io_record = json.loads(source_metadata.get("loda.io", "{}") or "{}")
    if io_record:
        io_record["precision"] = precision
    set_metadata(
        model,
        {
            **source_metadata,
            "loda.precision": precision,
            f"loda.{precision}": json.dumps(record, sort_keys=True),
            "loda.tool_versions": json.dumps(tool_versions(extra=tools), sort_keys=True),
            **({"loda.io": json.dumps(io_record, sort_keys=True)} if io_record else {}),
        },
    )
    model.doc_string = source.doc_string
