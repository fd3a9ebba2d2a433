"""Static statistics of an ONNX graph: GEMM FLOPs (Conv, MatMul, Gemm) and their precision.

Shapes come from ONNX shape inference with every symbolic input dimension fixed to 1 (batch 1);
the precision of a GEMM is the element type of its output tensor. Needs only ``onnx`` and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

__all__ = ["GEMM_OPS", "GemmNode", "GemmStats", "gemm_stats"]

GEMM_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class GemmNode:
    name: str
    op_type: str
    flops: int  # multiply-adds counted as 2 FLOPs, at batch 1
    elem_type: int  # of the output tensor


@dataclass(frozen=True)
class GemmStats:
    nodes: tuple[GemmNode, ...]
    unknown: tuple[str, ...] = field(default=())  # GEMM nodes whose shapes could not be inferred

    def flops(self, elem_type: int | None = None) -> int:
        return sum(n.flops for n in self.nodes if elem_type is None or n.elem_type == elem_type)

    @property
    def total_flops(self) -> int:
        return self.flops()

    @property
    def fp16_share(self) -> float:
        """Share of GEMM FLOPs computed in FP16 (0 when the graph has none)."""
        total = self.total_flops
        return self.flops(TensorProto.FLOAT16) / total if total else 0.0

    def by_type(self) -> dict[str, dict[str, int]]:
        """FLOPs per op type and output precision, e.g. ``{"MatMul": {"float16": ...}}``."""
        out: dict[str, dict[str, int]] = {}
        for n in self.nodes:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(n.elem_type).name
            per = out.setdefault(n.op_type, {})
            per[dtype] = per.get(dtype, 0) + n.flops
        return out


def _fixed_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {t.name for t in fixed.graph.initializer}
    for value_info in fixed.graph.input:
        if value_info.name in initializers:
            continue
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") or not dim.HasField("dim_value"):
                dim.dim_value = 1
    del fixed.graph.value_info[:]  # infer from scratch at batch 1
    for output in fixed.graph.output:
        for dim in output.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
    return onnx.shape_inference.infer_shapes(fixed, data_prop=True)


def _shape_table(model: onnx.ModelProto) -> dict[str, tuple[list[int] | None, int]]:
    table: dict[str, tuple[list[int] | None, int]] = {}
    graph = model.graph
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        known = tt.HasField("shape") and all(d > 0 for d in dims)
        table[vi.name] = (dims if known else None, tt.elem_type)
    for init in graph.initializer:
        table[init.name] = (list(init.dims), init.data_type)
    return table


def _node_flops(node: onnx.NodeProto, table: dict) -> int | None:
    def shape(name: str) -> list[int] | None:
        return table.get(name, (None, 0))[0]

    out = shape(node.output[0])
    if out is None:
        return None
    if node.op_type == "Conv":
        w = shape(node.input[1])
        if w is None:
            return None
        # out[N, M, ...] ; w[M, C/group, k...]: each output element is C/group * prod(k) MACs
        return 2 * int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if node.op_type == "MatMul":
        a = shape(node.input[0])
        if a is None:
            return None
        return 2 * int(np.prod(out, dtype=np.int64)) * int(a[-1])
    if node.op_type == "Gemm":
        a = shape(node.input[0])
        if a is None:
            return None
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return 2 * int(np.prod(out, dtype=np.int64)) * int(k)
    return None


def gemm_stats(model: onnx.ModelProto) -> GemmStats:
    """FLOPs of every Conv/MatMul/Gemm of the top-level graph at batch 1, with its precision."""
    inferred = _fixed_batch(model)
    table = _shape_table(inferred)
    nodes, unknown = [], []
    for node in inferred.graph.node:
        if node.op_type not in GEMM_OPS:
            continue
        flops = _node_flops(node, table)
        if flops is None:
            unknown.append(node.name or node.output[0])
            continue
        nodes.append(GemmNode(node.name, node.op_type, flops, table[node.output[0]][1]))
    return GemmStats(tuple(nodes), tuple(unknown))
