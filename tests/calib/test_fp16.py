"""Strongly typed FP16 graphs (loda.calib.fp16) from the FP32 export of loda_micro."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from loda.calib.fp16 import (
    FP32_OP_TYPES,
    MIN_FP16_SHARE,
    MIN_SPEARMAN,
    MIN_VERIFY_IMAGES,
    Fp16Error,
    convert_onnx_fp16,
)
from loda.calib.graph_stats import gemm_stats
from loda.export.onnx import load_verification_images, ort_scores, ort_session, read_onnx_metadata
from loda.preprocess import PreprocessConfig


@pytest.fixture(scope="session")
def fp16(micro):
    images = load_verification_images(micro.demo_dir, MIN_VERIFY_IMAGES, PreprocessConfig())
    model, report = convert_onnx_fp16(onnx.load(str(micro.onnx_path)), images=images)
    return model, report, images


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


@pytest.mark.slow
def test_fp16_share_types_and_io(fp16):
    model, report, _ = fp16
    assert report.passed, report.table()
    assert report.fp16_share >= MIN_FP16_SHARE
    assert gemm_stats(model).fp16_share == pytest.approx(report.fp16_share)
    onnx.checker.check_model(model, full_check=True)

    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.type.tensor_type.elem_type == TensorProto.UINT8
    assert out.type.tensor_type.elem_type == TensorProto.FLOAT
    assert (
        inp.type.tensor_type.shape.dim[0].dim_param == out.type.tensor_type.shape.dim[0].dim_param
    )

    types = _types(model)
    by_type: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        by_type.setdefault(node.op_type, []).append(node)
    # Numerically sensitive ops read and write FP32, weights and parameters included.
    for op in ("LayerNormalization", "Softmax", "ReduceL2"):
        assert by_type[op], op
        for node in by_type[op]:
            assert types[node.input[0]] == TensorProto.FLOAT, node.name
            assert types[node.output[0]] == TensorProto.FLOAT, node.name
    for node in by_type["LayerNormalization"]:
        assert types[node.input[1]] == TensorProto.FLOAT  # scale is not FP16-rounded
    # The input normalisation (/255, -mean, /std) runs in FP32 on FP32 constants.
    first_div = next(n for n in by_type["Div"] if types[n.input[0]] == TensorProto.FLOAT)
    assert all(types[i] == TensorProto.FLOAT for i in first_div.input)
    # The GEMMs: FP16 weights and activations (the 1-output head is the only FP32 MatMul).
    for node in by_type["Conv"]:
        assert types[node.input[0]] == types[node.input[1]] == TensorProto.FLOAT16, node.name
    fp32_matmuls = [n for n in by_type["MatMul"] if types[n.output[0]] == TensorProto.FLOAT]
    assert len(fp32_matmuls) == 1
    # No FP32 -> FP16 -> FP32 round trip anywhere.
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in by_type["Cast"]:
        up = producers.get(node.input[0])
        if up is not None and up.op_type == "Cast":
            pair = (up.attribute[0].i, node.attribute[0].i)
            assert pair != (TensorProto.FLOAT16, TensorProto.FLOAT), (up.name, node.name)

    meta = read_onnx_metadata(model)
    assert meta["loda.precision"] == "fp16"
    record = json.loads(meta["loda.fp16"])
    assert record["fp16_gemm_flops_share"] == pytest.approx(report.fp16_share, abs=1e-6)
    assert record["fp32_op_types"] == list(FP32_OP_TYPES)
    assert "loda" in meta and "loda.source_sha256" in meta  # carried over from the FP32 file
    assert json.loads(meta["loda.io"])["precision"] == "fp16"


@pytest.mark.slow
def test_fp16_scores_track_fp32_on_demo_images(fp16, micro):
    model, report, images = fp16
    assert MIN_VERIFY_IMAGES == 50  # the minimum, >= 50 images x 15 crops
    assert report.n_images == 50 and report.n_crops == 50 * 15
    assert report.n_nonfinite == 0
    assert report.spearman >= MIN_SPEARMAN
    assert 0 < report.max_abs < 5e-3 and report.mean_abs <= report.max_abs

    # Dynamic batch survives the conversion; scores stay close to FP32.
    s16, s32 = ort_session(model.SerializeToString()), ort_session(micro.onnx_path)
    crops = images.crops[0]
    ref = ort_scores(s32, crops)
    for batch in (1, 7):
        got = np.concatenate([ort_scores(s16, crops[i : i + batch]) for i in range(0, 15, batch)])
        assert got.dtype == np.float32 and np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref, atol=5e-3)


@pytest.mark.slow
def test_fp16_check_can_fail(micro, fp16):
    _, _, images = fp16
    with pytest.raises(Fp16Error, match="Spearman") as info:
        convert_onnx_fp16(onnx.load(str(micro.onnx_path)), images=images, min_spearman=1.01)
    report = info.value.report
    assert report is not None and not report.passed
    assert "FAIL" in report.table() and "Spearman (images)" in report.table()


@pytest.mark.slow
def test_fp16_check_needs_50_images(micro, fp16):
    _, _, images = fp16
    few = dataclasses.replace(images, names=images.names[:49], crops=images.crops[:49])
    with pytest.raises(Fp16Error, match="at least 50 images, got 49"):
        convert_onnx_fp16(onnx.load(str(micro.onnx_path)), images=few)


@pytest.mark.slow
def test_fp16_overflow_fails_the_check(micro, fp16):
    """A weight the FP32 graph handles but FP16 overflows on: inf/NaN scores fail the check."""
    _, _, images = fp16
    model = onnx.load(str(micro.onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    # The widest MatMul weight (an MLP's first layer) scaled so its outputs pass FP16's 65504.
    node = max(
        (n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits),
        key=lambda n: np.prod(inits[n.input[1]].dims),
    )
    w = numpy_helper.to_array(inits[node.input[1]])
    scaled = (w * (4e4 / np.abs(w).max())).astype(np.float32)  # max 4e4: FP16 holds it
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(scaled, node.input[1]))
    fp32 = ort_scores(ort_session(model.SerializeToString()), images.crops[0])
    assert np.all(np.isfinite(fp32))  # the FP32 graph itself is fine
    with pytest.raises(Fp16Error, match="inf/NaN") as info:
        convert_onnx_fp16(model, images=images)
    assert info.value.report.n_nonfinite > 0 and not info.value.report.passed


def test_share_counts_only_gemm_flops_and_conversion_traps():
    """A hand-made graph with an FP32 op sharing a weight with a MatMul, a pre-existing
    Cast(to=FLOAT) in the FP16 part and a blocked op right before the output."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((224 * 3, 8)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.full(8, 0.485, np.float32), "scale")
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")  # of [b, 224, 8]
    nodes = [
        helper.make_node("Cast", ["crops"], ["f"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Div", ["f", "scale255"], ["x"], name="div255"),
        helper.make_node("Reshape", ["x", "shape"], ["x2"], name="flat"),  # [b, 224, 672]
        helper.make_node("MatMul", ["x2", "w"], ["h"], name="mm"),  # [b, 224, 8]
        helper.make_node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT, name="pre_cast"),
        helper.make_node("Mul", ["h32", "scale"], ["h2"], name="mul"),
        helper.make_node("LayerNormalization", ["h2", "scale"], ["n"], axis=-1, name="ln"),
        helper.make_node("ReduceMean", ["n", "axes"], ["score"], keepdims=0, name="mean"),
    ]
    inits = [
        w,
        scale,
        axes,
        numpy_helper.from_array(np.array(255, np.float32), "scale255"),
        numpy_helper.from_array(np.array([0, 224, 224 * 3], np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("crops", TensorProto.UINT8, ["batch", 224, 224, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)

    converted, report = convert_onnx_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    assert report.fp16_share == 1.0 and report.gemm_flops == 2 * 224 * 672 * 8
    types = _types(converted)
    assert types["score"] == TensorProto.FLOAT and types["crops"] == TensorProto.UINT8
    ln = next(n for n in converted.graph.node if n.op_type == "LayerNormalization")
    assert types[ln.input[1]] == TensorProto.FLOAT  # its own FP32 copy of the shared scale
    mul = next(n for n in converted.graph.node if n.op_type == "Mul")
    assert types[mul.input[1]] == TensorProto.FLOAT16

    crops = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    want = ort_scores(ort_session(model.SerializeToString()), crops)
    got = ort_scores(ort_session(converted.SerializeToString()), crops)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-2)

    with pytest.raises(Fp16Error, match="already holds FP16"):
        convert_onnx_fp16(converted)
