"""ONNX export (loda.export.onnx, loda-export): interface, metadata, parity on real crops."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import perturb
from micro import tiny_demo_set
from onnx import TensorProto, helper
from PIL import Image

from loda.checkpoint import load_checkpoint, save_checkpoint
from loda.errors import CheckpointError
from loda.export.onnx import (
    PARITY_ATOL,
    ExportError,
    ExportWrapper,
    check_exported_graph,
    export_onnx,
    load_verification_images,
    ort_scores,
    ort_session,
    read_onnx_metadata,
    sha256_file,
    verify_onnx_against_checkpoint,
)
from loda.inference import crops_to_tensor
from loda.metadata import CheckpointMeta
from loda.model import create_model
from loda.preprocess import PreprocessConfig, preprocess_image


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    return tiny_demo_set(tmp_path_factory)


def loda_export(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loda.export.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Fast tests: no export
# --------------------------------------------------------------------------------------------


def test_wrapper_normalisation_is_bit_identical_to_preprocess(demo_dir):
    """uint8 crops through ExportWrapper == normalize() + model.score, bit for bit."""
    torch.manual_seed(0)
    model = perturb(create_model("loda_micro")).eval()
    cfg = PreprocessConfig(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))  # not the defaults
    crops = preprocess_image(next((demo_dir / "images").glob("*.png")), cfg)[:3]
    wrapper = ExportWrapper(model, cfg).eval()
    with torch.inference_mode():
        got = wrapper(torch.from_numpy(crops))
        want = model.score(crops_to_tensor(crops, cfg))
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert torch.equal(got, want)


def test_verification_images_from_folder_archive_and_demo_csv(demo_dir, tmp_path):
    cfg = PreprocessConfig()
    from_demo = load_verification_images(demo_dir, 5, cfg)
    assert len(from_demo.names) == 5 and all(n.startswith("images/") for n in from_demo.names)
    assert len({n.split("_")[0] for n in from_demo.names}) == 2  # spread over both references
    assert all(c.shape == (15, 224, 224, 3) and c.dtype == np.uint8 for c in from_demo.crops)

    pngs = sorted((demo_dir / "images").glob("*.png"))[:3]
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in pngs:
            zf.write(p, f"sub/{p.name}")
        zf.writestr("notes.txt", "not an image")
    from_zip = load_verification_images(archive, 10, cfg)
    assert from_zip.names == tuple(f"sub/{p.name}" for p in pngs)
    np.testing.assert_array_equal(from_zip.crops[0], preprocess_image(pngs[0], cfg))

    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no images in"):
        load_verification_images(tmp_path / "empty", 3, cfg)


def test_default_verification_images_are_a_built_in_demo_set(monkeypatch):
    import loda.data.images

    monkeypatch.setattr(loda.data.images, "DEMO_REFERENCES", 2)  # the default 8 take ~25 s here
    images = load_verification_images(None, 3, PreprocessConfig())
    assert images.source == "built-in demo set" and len(images.names) == 3
    assert all(n.startswith("images/") and n.endswith(".png") for n in images.names)
    assert images.n_crops == 45 and len({c.tobytes() for c in images.crops}) == 3


def test_verification_falls_back_to_generated_images_and_says_so(monkeypatch):
    import loda.data.demo

    monkeypatch.setattr(loda.data.demo, "list_references", lambda: [])  # no demo photos
    messages: list[str] = []
    images = load_verification_images(None, 3, PreprocessConfig(), log=messages.append)
    assert images.source.startswith("generated") and len(images.names) == 3
    assert any("generated images" in m for m in messages)
    assert images.n_crops == 45 and len({c.tobytes() for c in images.crops}) == 3


def _tiny_graph(batch_dim) -> onnx.ModelProto:
    dims = [batch_dim, 224, 224, 3]
    inp = helper.make_tensor_value_info("crops", TensorProto.UINT8, dims)
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch_dim])
    nodes = [
        helper.make_node("Cast", ["crops"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes"], ["score"], keepdims=0),
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    graph = helper.make_graph(nodes, "g", [inp], [out], initializer=[axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_graph_check_rejects_fixed_batch_and_decomposed_layernorm():
    counts = check_exported_graph(_tiny_graph("batch"), crop_size=224)
    assert counts == {"Cast": 1, "ReduceMean": 1}
    with pytest.raises(ExportError, match="batch dimension is not symbolic"):
        check_exported_graph(_tiny_graph(2), crop_size=224)
    with pytest.raises(ExportError, match="decomposed LayerNorm"):
        check_exported_graph(_tiny_graph("batch"), crop_size=224, expected_layernorms=13)


def test_export_refuses_old_opset_and_missing_checkpoint(tmp_path):
    with pytest.raises(ExportError, match="opset 16 is not supported"):
        export_onnx(tmp_path / "x.safetensors", tmp_path / "x.onnx", opset=16)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        export_onnx(tmp_path / "x.safetensors", tmp_path / "x.onnx")


def test_cli_errors_are_one_line(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.randn(3, 3)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "notes.safetensors").write_text("just text\n")
    cases = [
        (["onnx", "missing.safetensors"], "loda-export: error: no checkpoint at missing"),
        (["onnx", "other.safetensors"], "is not a LoDa checkpoint (no 'loda' metadata)"),
        (["onnx", "notes.safetensors", "-o", "n.onnx"], "is not a safetensors file"),
        (["verify", "other.safetensors", "m.onnx"], "is not a LoDa checkpoint"),
    ]
    for args, message in cases:
        out = loda_export(*args, cwd=tmp_path)
        assert out.returncode == 1, (args, out.stderr)
        lines = error_lines(out.stderr)
        assert len(lines) == 1 and message in lines[0], (args, out.stderr)
        assert out.stdout == ""
    usage = loda_export("onnx", "other.safetensors", "--opset", "13", cwd=tmp_path)
    assert usage.returncode == 2 and "--opset" in usage.stderr
    assert not list(tmp_path.glob("*.onnx"))


def test_cli_refuses_a_foreign_onnx_in_one_line(tmp_path):
    """An ONNX file with the right input and output but not made by loda-export."""
    torch.manual_seed(0)
    save_checkpoint(create_model("loda_micro").eval(), tmp_path / "micro.safetensors")
    onnx.save(_tiny_graph("batch"), str(tmp_path / "foreign.onnx"))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.new("RGB", (64, 48), (40 * i, 90, 200)).save(images / f"{i}.png")
    runs = {
        "loda-export": loda_export("verify", "micro.safetensors", "foreign.onnx", cwd=tmp_path),
        "loda-calib": subprocess.run(
            [sys.executable, "-m", "loda.calib.cli", "int8", "foreign.onnx", "--images", "images"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        ),
    }
    for prog, out in runs.items():
        assert out.returncode == 1, (prog, out.stderr)
        lines = error_lines(out.stderr)
        assert lines[-1].startswith(f"{prog}: error: foreign.onnx has no LoDa metadata"), lines
        assert "Traceback" not in out.stderr
    few = loda_export(
        "onnx", "micro.safetensors", "--precision", "fp16", "--verify-images", "49", cwd=tmp_path
    )
    assert few.returncode == 1 and error_lines(few.stderr) == [
        "loda-export: error: FP16 verification needs at least 50 images, got 49 (--verify-images)"
    ]
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["foreign.onnx"]


# --------------------------------------------------------------------------------------------
# loda_micro: export once, check everything
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_micro_fp32_export_interface_metadata_and_parity(micro):
    report = micro.report
    assert report.precision == "fp32" and report.opset == 18
    assert micro.onnx_path.is_file() and report.size_bytes == micro.onnx_path.stat().st_size
    parity = report.parity
    assert parity is not None and parity.passed
    assert parity.n_crops == 4 * 15 and parity.max_abs <= PARITY_ATOL
    assert set(parity.batch_max_abs) == {1, 7}

    model = onnx.load(str(micro.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "crops" and inp.type.tensor_type.elem_type == TensorProto.UINT8
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and [d.dim_value for d in in_dims[1:]] == [224, 224, 3]
    assert out.name == "score" and out.type.tensor_type.elem_type == TensorProto.FLOAT
    (out_dim,) = out.type.tensor_type.shape.dim
    assert out_dim.dim_param == in_dims[0].dim_param

    ops = [n.op_type for n in model.graph.node]
    # 6 blocks x 2 norms + the final norm, each ONE node; nothing decomposed.
    assert ops.count("LayerNormalization") == 13
    assert "ReduceMean" not in ops and "Pow" not in ops and "Sqrt" not in ops
    assert "Attention" not in ops and ops.count("Softmax") == 12  # 6 ViT + 6 cross-attention

    meta = read_onnx_metadata(model)
    _, ckpt_meta = load_checkpoint(micro.checkpoint)
    assert CheckpointMeta.from_json(meta["loda"]) == ckpt_meta
    assert meta["loda.source_sha256"] == sha256_file(micro.checkpoint)
    versions = json.loads(meta["loda.tool_versions"])
    assert {"torch", "onnx", "onnxscript", "onnxruntime", "timm", "loda"} <= set(versions)
    assert meta["loda.precision"] == "fp32"
    assert json.loads(meta["loda.io"])["input"]["dtype"] == "uint8"


@pytest.mark.slow
def test_micro_dynamic_batch_in_onnxruntime(micro):
    """Independently of the export's own check: batch 1, 7 and 15 all run and agree."""
    model, meta = load_checkpoint(micro.checkpoint)
    wrapper = ExportWrapper(model, meta.preprocess).eval()
    crops = preprocess_image(sorted((micro.demo_dir / "images").glob("*.png"))[5], meta.preprocess)
    with torch.inference_mode():
        want = wrapper(torch.from_numpy(crops)).numpy()
    session = ort_session(micro.onnx_path)
    for batch in (1, 7, 15):
        got = np.concatenate(
            [ort_scores(session, crops[i : i + batch]) for i in range(0, 15, batch)]
        )
        assert got.shape == (15,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=PARITY_ATOL)
    assert np.ptp(want) > 0  # crops differ, so the comparison means something


@pytest.mark.slow
def test_perturbed_onnx_fails_the_parity_check(micro, tmp_path):
    """The check can fail: scale one weight initializer and `loda-export verify` exits 1."""
    report = verify_onnx_against_checkpoint(
        micro.checkpoint, micro.onnx_path, images=micro.demo_dir, verify_images=2
    )
    assert report.passed

    model = onnx.load(str(micro.onnx_path))
    weight = next(t for t in model.graph.initializer if t.name.endswith("patch_embed.proj.weight"))
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0] *= 1.5  # one output channel of the ViT's patch embedding
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(model, str(bad))

    out = loda_export(
        "verify", micro.checkpoint, bad, "--images", micro.demo_dir, "--verify-images", "2"
    )
    assert out.returncode == 1, out.stderr
    for row in ("crops", "max |d|", "mean |d|", "p99 |d|", "worst image", "FAIL"):
        assert row in out.stderr
    last = error_lines(out.stderr)[-1]
    assert last.startswith("loda-export: error: ONNX Runtime scores differ from PyTorch")
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_cli_no_verify_fp16_fast_path(micro, tmp_path):
    out = loda_export(
        "onnx",
        micro.checkpoint,
        "-o",
        tmp_path / "m.fp16.onnx",
        "--precision",
        "fp16",
        "--no-verify",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    lines = error_lines(out.stderr)
    # the library's progress lines (its loggers), as the command configures them
    assert lines[0] == (
        f"exporting {micro.checkpoint} (loda_micro) with torch.onnx.export(dynamo=True)"
    )
    assert any(line.startswith("folded shape arithmetic with onnxslim ") for line in lines)
    success = next(line for line in lines if line.startswith("loda-export: "))
    assert "FP16 ONNX" in success and "MB" in success and " s;" in success
    assert "not verified" in success and "FP16 GEMM FLOPs" in success
    assert lines[-1].startswith(f"next: loda-trt build {tmp_path / 'm.fp16.onnx'}")
    meta = read_onnx_metadata(onnx.load(str(tmp_path / "m.fp16.onnx")))
    assert meta["loda.precision"] == "fp16"
    assert not (tmp_path / "m.fp16.onnx.tmp").exists()


# --------------------------------------------------------------------------------------------
# The paper's model
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_b16_export_parity(b16_model, demo_dir, tmp_path):
    """ViT-B/16 + ResNet50 (random init): the real-size graph exports and matches PyTorch."""
    ckpt = tmp_path / "b16.safetensors"
    save_checkpoint(b16_model, ckpt)
    report = export_onnx(ckpt, tmp_path / "b16.onnx", images=demo_dir, verify_images=1)
    assert report.parity is not None and report.parity.passed, report.parity.table()
    assert report.parity.n_crops == 15 and report.parity.max_abs <= PARITY_ATOL
    assert report.op_counts["LayerNormalization"] == 25  # 12 blocks x 2 + final norm
    assert 300e6 < report.size_bytes < 2**31
    print(f"b16: export {report.export_seconds:.0f} s, {report.parity.summary()}")
