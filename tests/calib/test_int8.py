"""INT8 Q/DQ graphs (loda.calib.int8, loda-calib) from the FP32 export of loda_micro.

The model is random-init ``loda_micro`` (perturbed adapters): its image scores barely differ,
so rank agreement with FP32 is a weak signal here and the tests pass an explicit, lower
``min_spearman``. On trained checkpoints the default 0.99 holds (see the module docstring).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import write_photo
from micro import tiny_demo_set
from onnx import TensorProto, helper, numpy_helper

from loda.calib import int8 as int8_mod
from loda.calib.int8 import (
    ATTENTION_PROBS,
    IMAGE_STEM,
    MIN_VERIFY_IMAGES,
    RESIDUAL_INPUTS,
    CalibrationImage,
    CropReader,
    Int8Error,
    compare_int8,
    float_kept_nodes,
    quantize_onnx_int8,
    select_images,
)
from loda.export.onnx import (
    load_verification_images,
    ort_scores,
    ort_session,
    read_onnx_metadata,
    sha256_file,
)
from loda.preprocess import PreprocessConfig, preprocess_image

TEST_MIN_SPEARMAN = 0.5  # random-init model: see the module docstring


@pytest.fixture(scope="module")
def int8_trt(micro, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "micro.int8.onnx"
    report = quantize_onnx_int8(
        micro.onnx_path,
        out,
        images=micro.demo_dir,
        method="minmax",
        target="tensorrt",
        calib_images=6,
        n_verify=12,
        min_spearman=TEST_MIN_SPEARMAN,
    )
    return out, report


def loda_calib(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loda.calib.cli", *map(str, args)],
        capture_output=True,
        text=True,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


# --------------------------------------------------------------------------------------------
# Quantization + verification on held-out demo images
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_int8_tensorrt_graph_and_held_out_verification(int8_trt, micro):
    path, report = int8_trt
    assert report.passed, report.table()
    # Calibration and verification images are different images of the same demo set.
    assert len(report.calib_names) == report.calib_images == 6
    assert report.calib_crops == 6 * 15
    assert len(report.verify_names) == report.n_images == 12
    assert not set(report.calib_names) & set(report.verify_names)
    assert report.spearman >= TEST_MIN_SPEARMAN and np.isfinite(report.spearman)
    assert report.n_nonfinite == 0 and 0 < report.max_abs < 0.5
    # The demo set has MOS: SRCC is reported beside FP32's.
    assert report.n_mos == 12
    assert -1 <= report.srcc_int8 <= 1 and -1 <= report.srcc_fp32 <= 1
    assert "Spearman vs FP32" in report.summary() and "SRCC vs MOS" in report.summary()

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.type.tensor_type.elem_type == TensorProto.UINT8
    assert out.type.tensor_type.elem_type == TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param

    producers = _producers(model)
    by_type: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        by_type.setdefault(node.op_type, []).append(node)
    assert by_type["QuantizeLinear"] and by_type["DequantizeLinear"]
    # loda_micro's float image stem (patch embedding + the CNN's 3-conv stem) is ~1/3 of its
    # GEMM FLOPs (~1% of loda_b16's); everything else is INT8
    assert report.int8_share > 0.6 and report.n_int8_gemms > 0

    def from_dq(name: str) -> bool:
        node = producers.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    # Conv weights: per channel (axis 0), symmetric int8 with zero point 0 (TensorRT).
    kept = float_kept_nodes(model)
    stem = set(kept[IMAGE_STEM])
    for conv in by_type["Conv"]:
        if conv.name in stem:  # kept float: no Q/DQ on its image input or its weight
            assert not from_dq(conv.input[0]) and not from_dq(conv.input[1]), conv.name
            continue
        assert from_dq(conv.input[0]) and from_dq(conv.input[1]), conv.name
        dq = producers[conv.input[1]]
        weight = _initializer(model, producers[dq.input[0]].input[0])  # float, behind Q/DQ
        assert weight.dtype == np.float32
        assert _initializer(model, dq.input[1]).shape == (weight.shape[0],), conv.name
    for q in by_type["QuantizeLinear"]:
        zero_point = _initializer(model, q.input[2])
        assert zero_point.dtype == np.int8 and not zero_point.any(), q.name
    # LayerNorm and Softmax are not quantized; the attention-probability MatMuls stay float.
    for node in by_type["LayerNormalization"] + by_type["Softmax"]:
        assert not from_dq(node.input[0]), node.name
    assert len(kept[ATTENTION_PROBS]) == 12  # 6 ViT blocks + 6 cross-attentions
    assert len(kept[RESIDUAL_INPUTS]) == 6  # learner.down_proj.N.fc1
    assert len(stem) == 4  # patch_embed.proj + the deep stem's three convs (BN folded in)
    for name in kept[ATTENTION_PROBS] + kept[RESIDUAL_INPUTS]:
        node = next(n for n in model.graph.node if n.name == name)
        assert not any(from_dq(i) for i in node.input), name
    assert report.kept_float == {k: len(v) for k, v in kept.items()}

    meta = read_onnx_metadata(model)
    assert meta["loda.precision"] == "int8"
    assert "loda" in meta and "loda.source_sha256" in meta  # carried over from the FP32 file
    assert json.loads(meta["loda.io"])["precision"] == "int8"
    record = json.loads(meta["loda.int8"])
    assert record["method"] == "minmax" and record["target"] == "tensorrt"
    assert record["calibration"]["images"] == 6 and record["calibration"]["crops"] == 90
    assert record["source_onnx_sha256"] == sha256_file(micro.onnx_path)
    assert record["settings"]["activation_type"] == "QInt8"
    assert record["settings"]["extra_options"]["ActivationSymmetric"] is True
    assert record["verification"]["images"] == 12
    assert record["verification"]["spearman_vs_fp32"] == pytest.approx(report.spearman)

    # Dynamic batch survives; batch sizes 1 and 7 give the scores of batch 15.
    session = ort_session(path)
    crops = preprocess_image(micro.demo_dir / report.verify_names[0], PreprocessConfig())
    ref = ort_scores(session, crops)
    for batch in (1, 7):
        got = np.concatenate(
            [ort_scores(session, crops[i : i + batch]) for i in range(0, 15, batch)]
        )
        np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.slow
def test_cli_cpu_target_entropy(micro, tmp_path):
    out = tmp_path / "micro.cpu.onnx"
    r = loda_calib(
        "int8", micro.onnx_path, "--images", micro.demo_dir, "-o", out, "--target", "cpu",
        "--method", "entropy", "--calib-images", 3, "--verify-count", 6, "--min-spearman", 0,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = error_lines(r.stderr)
    assert lines[-2].startswith("loda-calib: INT8 Q/DQ ONNX for ONNX Runtime CPU")
    assert str(out) in lines[-2] and "MB" in lines[-2] and " s;" in lines[-2]
    assert lines[-1].startswith("next: ")
    assert r.stdout == ""  # logs and tables go to stderr
    model = onnx.load(str(out))
    record = json.loads(read_onnx_metadata(model)["loda.int8"])
    assert record["method"] == "entropy" and record["target"] == "cpu"
    assert record["settings"]["activation_type"] == "QUInt8"
    # u8 activations: the activation QuantizeLinear zero points are uint8.
    zero_points = [
        _initializer(model, q.input[2]) for q in model.graph.node if q.op_type == "QuantizeLinear"
    ]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)
    assert record["verification"]["images"] == 6
    # GELUs fused into ONNX Runtime's ops (no Erf left), MatMul outputs left float (no Q after a
    # MatMul: ORT runs MatMulIntegerToFloat), Conv outputs quantized (QLinearConv).
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    fused = record["settings"]["onnxruntime_gelu_fusion"]
    assert fused["BiasGelu"] > 0 and ("com.microsoft", "BiasGelu") in ops
    assert not any(op == "Erf" for _, op in ops)
    assert any(o.domain == "com.microsoft" for o in model.opset_import)
    producers = _producers(model)
    q_inputs = [
        producers.get(n.input[0]) for n in model.graph.node if n.op_type == "QuantizeLinear"
    ]
    assert not any(p is not None and p.op_type == "MatMul" for p in q_inputs)
    assert any(p is not None and p.op_type == "Conv" for p in q_inputs)
    # The INT8 share is counted on the whole graph, not only up to the first fused op.
    assert record["int8_gemm_flops_share"] > 0.6
    assert record["verification"]["max_abs_vs_fp32"] < 0.5
    # TensorRT refuses it with one line before building anything.
    from loda.export.trt import TrtError, _read_onnx_record

    with pytest.raises(TrtError, match="--target tensorrt"):
        _read_onnx_record(out)


@pytest.mark.slow
def test_percentile_method_runs(micro, tmp_path):
    out = tmp_path / "micro.pct.onnx"
    report = quantize_onnx_int8(
        micro.onnx_path,
        out,
        images=micro.demo_dir,
        method="percentile",
        calib_images=2,
        verify=False,
    )
    assert out.is_file() and not report.verified and report.calib_images == 2
    record = json.loads(read_onnx_metadata(onnx.load(str(out)))["loda.int8"])
    assert record["method"] == "percentile" and record["verification"] is None
    assert record["settings"]["extra_options"]["CalibPercentile"] == 99.999
    assert "not verified" in report.summary()


@pytest.mark.slow
def test_failed_verification_exits_1_with_table(micro, tmp_path, monkeypatch, capsys):
    """Rank agreement below --min-spearman: table on stderr, one error line, no file."""
    from loda.calib import cli

    real = int8_mod.compare_int8

    def reversed_scores(fp32, int8, images, mos=None):
        numbers = real(fp32, int8, images, mos)
        numbers["spearman"] = -1.0
        return numbers

    monkeypatch.setattr(int8_mod, "compare_int8", reversed_scores)
    out = tmp_path / "bad.int8.onnx"
    monkeypatch.setattr(
        sys,
        "argv",
        ["loda-calib", "int8", str(micro.onnx_path), "--images", str(micro.demo_dir),
         "-o", str(out), "--calib-images", "2", "--verify-count", "4"],
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "INT8 vs FP32, ONNX Runtime (CPU), held-out images" in err
    assert "FAIL: Spearman -1.00000 < 0.99" in err
    assert error_lines(err)[-1].startswith("loda-calib: error: INT8 model failed: Spearman")
    assert not out.exists()


@pytest.mark.slow
def test_compare_int8_detects_reversed_ranking(micro):
    """A graph whose scores are negated has Spearman -1 against the original."""
    model = onnx.load(str(micro.onnx_path))
    graph = model.graph
    inner = "score__raw"
    for node in graph.node:
        node.output[:] = [inner if o == "score" else o for o in node.output]
    graph.node.append(helper.make_node("Neg", [inner], ["score"], name="negate"))
    images = load_verification_images(micro.demo_dir, MIN_VERIFY_IMAGES, PreprocessConfig())
    numbers = compare_int8(micro.onnx_path, model.SerializeToString(), images, [1, 2, 3, 4])
    assert numbers["spearman"] == pytest.approx(-1.0)
    assert numbers["srcc_int8"] == pytest.approx(-numbers["srcc_fp32"])
    assert numbers["n_images"] == MIN_VERIFY_IMAGES and numbers["n_nonfinite"] == 0


# --------------------------------------------------------------------------------------------
# Refusals: never calibrate on nothing
# --------------------------------------------------------------------------------------------


def test_refuses_empty_image_folder(tmp_path):
    """Images are checked before the model is read: an empty folder is the error."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read: the images are checked first")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "x.int8.onnx"
    r = loda_calib("int8", model, "--images", empty, "-o", out)
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0] == (
        f"loda-calib: error: no images in {empty}: INT8 calibration needs real images "
        "(never random data)"
    )
    assert not out.exists()


@pytest.mark.slow  # five subprocesses, each importing onnx/torch
def test_refuses_without_images_and_bad_inputs(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read")
    r = loda_calib("int8", model)
    assert r.returncode == 1
    assert error_lines(r.stderr) == [
        "loda-calib: error: no calibration images: pass --images DIR|ARCHIVE or --data "
        "KIND:ROOT|CSV (INT8 calibration needs real images; it never uses random data)"
    ]
    r = loda_calib("int8", model, "--images", tmp_path / "missing")
    assert r.returncode == 1
    assert error_lines(r.stderr) == [f"loda-calib: error: no images at {tmp_path}/missing"]
    r = loda_calib("int8", tmp_path / "missing.onnx", "--images", tmp_path)
    assert r.returncode == 1
    assert error_lines(r.stderr) == [f"loda-calib: error: no ONNX file at {tmp_path}/missing.onnx"]
    r = loda_calib("int8", model, "--images", tmp_path, "--method", "kl")
    assert r.returncode == 2 and "--method" in r.stderr
    r = loda_calib("int8", model, "--images", tmp_path, "--data", "x.csv")
    assert r.returncode == 2 and "either --images or --data" in r.stderr


@pytest.mark.slow
def test_refuses_quantized_or_foreign_input(int8_trt, micro, tmp_path):
    path, _ = int8_trt
    images = micro.demo_dir
    with pytest.raises(Int8Error, match="is an int8 graph with Q/DQ nodes; quantize the FP32"):
        quantize_onnx_int8(path, tmp_path / "again.onnx", images=images)
    plain = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(plain, str(foreign))
    with pytest.raises(Int8Error, match="no LoDa metadata"):
        quantize_onnx_int8(foreign, tmp_path / "f.int8.onnx", images=images)


# --------------------------------------------------------------------------------------------
# Image selection and the calibration reader (no model)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(10):
        write_photo(d / f"p{i:02d}.png", width=240, height=230, seed=i)
    return d


def test_select_images_splits_disjointly(photo_dir):
    src, calib, vsrc, held = select_images(photo_dir, n_calib=4, n_verify=5)
    assert src == vsrc == str(photo_dir)
    assert len(calib) == 4 and len(held) == 5
    assert not {c.name for c in calib} & {h.name for h in held}
    assert all(c.mos is None for c in calib + held)


def test_select_images_small_source_keeps_held_out_images(photo_dir, caplog):
    with caplog.at_level(logging.INFO, logger="loda.calib.int8"):
        _, calib, _, held = select_images(photo_dir, n_calib=64, n_verify=50)
    assert len(calib) + len(held) == 10 and len(held) >= MIN_VERIFY_IMAGES
    assert not {c.name for c in calib} & {h.name for h in held}
    assert caplog.messages and "only 10 images" in caplog.messages[0]
    with pytest.raises(Int8Error, match="need at least 5"):
        select_images(photo_dir / "p00.png", n_calib=1, n_verify=4)
    # One image is fine without verification.
    _, calib, _, held = select_images(photo_dir / "p00.png", verify=False)
    assert [c.name for c in calib] == ["p00.png"] and held == []


def test_select_images_separate_verification_folder(photo_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for i in range(5):
        write_photo(other / f"o{i}.jpg", width=230, height=240, seed=100 + i)
    _, calib, vsrc, held = select_images(photo_dir, verify_images=other, n_calib=10, n_verify=5)
    assert len(calib) == 10 and vsrc == str(other)
    assert sorted(h.name for h in held) == [f"o{i}.jpg" for i in range(5)]
    # Verification files that calibration also uses are dropped; too few left is an error.
    with pytest.raises(Int8Error, match="verification needs at least 4"):
        select_images(photo_dir, verify_images=photo_dir, n_calib=10, n_verify=5)


def test_select_images_demo_set_brings_mos(tmp_path_factory):
    _, calib, _, held = select_images(tiny_demo_set(tmp_path_factory), n_calib=3, n_verify=4)
    assert all(isinstance(i.mos, float) for i in calib + held)


def test_crop_reader_feeds_runtime_crops(photo_dir):
    cfg = PreprocessConfig()
    images = [CalibrationImage(p.name, p) for p in sorted(photo_dir.glob("*.png"))[:3]]
    reader = CropReader(images, cfg)
    assert len(reader) == 3
    batches = list(reader)
    assert len(batches) == 3 and reader.n_crops == 45
    for image, batch in zip(images, batches, strict=True):
        crops = batch["crops"]
        assert crops.dtype == np.uint8 and crops.shape == (15, 224, 224, 3)
        np.testing.assert_array_equal(crops, preprocess_image(image.source, cfg))
    reader.set_range(1, 2)  # quantize_static's strided collection
    assert reader.get_next() is not None and reader.get_next() is None


def test_float_kept_nodes_on_a_hand_made_graph():
    """Softmax -> Reshape -> MatMul is kept float; so is a GEMM whose module path is an
    adapter's first projection, and the CNN stem's conv; an ordinary MatMul or conv is not."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 4, 4], np.int64), "shape")
    nodes = [
        helper.make_node("Softmax", ["x"], ["p"], name="softmax"),
        helper.make_node("Reshape", ["p", "shape"], ["p2"], name="reshape"),
        helper.make_node("MatMul", ["p2", "v"], ["a"], name="probs_at_v"),
        helper.make_node("MatMul", ["a", "w"], ["b"], name="down_fc1"),
        helper.make_node("MatMul", ["b", "w"], ["y"], name="plain"),
        helper.make_node("Conv", ["img", "k"], ["c1"], name="stem_conv"),
        helper.make_node("Conv", ["img", "k"], ["c2"], name="later_conv"),
    ]
    for node, where in [
        (nodes[3], ": LoDa/model.learner.down_proj.3.fc1: torch.nn.Linear"),
        (nodes[5], ": LoDa/model.feature_model.bn1: torch.nn.BatchNorm2d"),  # folded stem conv
        (nodes[6], ": LoDa/model.feature_model.layer1.0.bn1: torch.nn.BatchNorm2d"),
    ]:
        entry = node.metadata_props.add()
        entry.key, entry.value = "namespace", where
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 4, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])],
        [w, shape],
    )
    kept = float_kept_nodes(helper.make_model(graph))
    assert kept == {
        ATTENTION_PROBS: ["probs_at_v"],
        RESIDUAL_INPUTS: ["down_fc1"],
        IMAGE_STEM: ["stem_conv"],
    }


def _exported_gelu(x: str, out: str, tag: str) -> list[onnx.NodeProto]:
    """GELU as torch's exporter writes it: x * (0.5 * (1 + erf(x / sqrt 2)))."""
    return [
        helper.make_node("Div", [x, "sqrt2"], [f"{tag}_d"], name=f"{tag}_div"),
        helper.make_node("Erf", [f"{tag}_d"], [f"{tag}_e"], name=f"{tag}_erf"),
        helper.make_node("Add", [f"{tag}_e", "one"], [f"{tag}_a"], name=f"{tag}_add"),
        helper.make_node("Mul", ["half", f"{tag}_a"], [f"{tag}_h"], name=f"{tag}_half"),
        helper.make_node("Mul", [x, f"{tag}_h"], [out], name=f"{tag}_mul"),
    ]


def test_gelu_fusion_for_onnxruntime_keeps_the_numbers():
    """Linear -> GELU becomes BiasGelu, a lone GELU becomes Gelu (com.microsoft), the GEMM FLOPs
    after a fused op are still counted, and ONNX Runtime computes the same values."""
    from onnxruntime import InferenceSession

    from loda.calib.graph_stats import gemm_stats
    from loda.calib.int8 import fuse_gelu_for_onnxruntime, int8_gemm_share

    rng = np.random.default_rng(0)
    consts = [
        numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
        helper.make_node("Add", ["m1", "b1"], ["h1"], name="fc1_bias"),
        *_exported_gelu("h1", "g1", "act1"),
        helper.make_node("MatMul", ["g1", "w2"], ["m2"], name="fc2"),
        *_exported_gelu("m2", "y", "act2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 8])],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    before = InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    flops = gemm_stats(model)

    assert fuse_gelu_for_onnxruntime(model) == {"Gelu": 1, "BiasGelu": 1}
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    assert ops == [
        ("", "MatMul"),
        ("com.microsoft", "BiasGelu"),
        ("", "MatMul"),
        ("com.microsoft", "Gelu"),
    ]
    after = InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    # Shape inference stops at BiasGelu: fc2's FLOPs are unknown in the fused graph itself.
    assert gemm_stats(model).unknown == ("fc2",)
    with pytest.raises(Int8Error, match="cannot count the FLOPs"):
        int8_gemm_share(model)
    assert int8_gemm_share(model, flops) == (0.0, 0)  # nothing quantized, nothing unknown


# --------------------------------------------------------------------------------------------
# The CPU class INT8 was verified on, and the runtime's warning on another class
# --------------------------------------------------------------------------------------------

_XEON_FLAGS = {"sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8"}


@pytest.mark.parametrize(
    ("machine", "flags", "expected"),
    [
        ("x86_64", _XEON_FLAGS, "x86-amx"),
        ("x86_64", {"sse4_1", "avx2", "avx512bw", "avx512_vnni"}, "x86-vnni"),  # Zen 4
        ("x86_64", {"sse4_1", "avx2", "avx_vnni"}, "x86-vnni"),  # Alder Lake
        ("x86_64", {"sse4_1", "avx2", "avx512bw"}, "x86-avx512"),  # Skylake-SP
        ("x86_64", {"sse4_1", "avx2", "fma"}, "x86-avx2"),  # Zen 3
        ("AMD64", {"sse4_1"}, "x86-sse4"),
        ("x86_64", None, "x86-unknown"),
        ("aarch64", {"asimd", "asimddp"}, "arm64"),
    ],
)
def test_int8_class_of_cpu_flags(machine, flags, expected):
    from loda.cpu_isa import SATURATING_CLASSES, int8_class

    assert int8_class(machine, flags) == expected
    assert (expected in SATURATING_CLASSES) == (expected in ("x86-avx512", "x86-avx2"))


def test_read_cpuinfo_and_session_config(tmp_path):
    """Flags from a /proc/cpuinfo text; the exact-kernel option only where u8s8 saturates."""
    import onnxruntime as ort

    from loda.cpu_isa import X64_QUANT_PRECISION, CpuIsa, int8_session_config, read_cpuinfo

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7763\nflags\t\t: fpu sse4_1 avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7763\nflags\t\t: fpu sse4_1 avx2 fma\n"
    )
    assert read_cpuinfo(info) == ("AMD EPYC 7763", {"fpu", "sse4_1", "avx2", "fma"})
    assert read_cpuinfo(tmp_path / "missing") == ("", None)
    zen3 = CpuIsa("x86_64", "AMD EPYC 7763", ("sse4_1", "avx2"), "x86-avx2")
    zen4 = CpuIsa("x86_64", "AMD EPYC 9654", ("avx2", "avx512bw", "avx512_vnni"), "x86-vnni")
    options = ort.SessionOptions()
    assert int8_session_config(options, zen4) is False
    with pytest.raises(RuntimeError, match="does not have configuration"):
        options.get_session_config_entry(X64_QUANT_PRECISION)
    assert int8_session_config(options, zen3) is True
    assert options.get_session_config_entry(X64_QUANT_PRECISION) == "1"


def _with_verified_class(src: Path, dst: Path, int8_class: str | None) -> Path:
    """A copy of an INT8 graph whose record names another verification CPU class."""
    model = onnx.load(str(src))
    entry = next(p for p in model.metadata_props if p.key == "loda.int8")
    record = json.loads(entry.value)
    if int8_class is None:
        del record["verification"]["cpu"]
    else:
        record["verification"]["cpu"]["int8_class"] = int8_class
    entry.value = json.dumps(record)
    onnx.save(model, str(dst))
    return dst


@pytest.mark.slow
def test_record_names_the_verification_cpu_and_runtime_warns_elsewhere(int8_trt, tmp_path, caplog):
    from loda.cpu_isa import current_isa
    from loda.runtime.ort_backend import OnnxRuntimeBackend

    path, report = int8_trt
    here = current_isa()
    record = json.loads(read_onnx_metadata(onnx.load(str(path)))["loda.int8"])
    cpu = record["verification"]["cpu"]
    assert cpu["int8_class"] == here.int8_class and cpu["cpu"] == here.model
    assert cpu["onnxruntime_exact_u8u8"] == here.saturating
    assert f"({here.int8_class})" in report.table()

    def open_twice(graph: Path) -> list[logging.LogRecord]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="loda.runtime.ort_backend"):
            for _ in range(2):
                with OnnxRuntimeBackend.open(graph, device="cpu") as backend:
                    assert backend.info.precision == "int8"
        return caplog.records

    assert open_twice(path) == []  # verified on this class: silent
    other = "x86-avx2" if here.int8_class != "x86-avx2" else "x86-vnni"
    (warning,) = open_twice(_with_verified_class(path, tmp_path / "other.onnx", other))
    assert warning.levelno == logging.WARNING and "\n" not in warning.getMessage()
    assert f"({other}), running on" in warning.getMessage()
    assert f"({here.int8_class})" in warning.getMessage()
    (warning,) = open_twice(_with_verified_class(path, tmp_path / "norecord.onnx", None))
    assert "without a record of the CPU it was verified on" in warning.getMessage()
