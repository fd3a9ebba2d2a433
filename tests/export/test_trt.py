"""Engines (loda.export.trt, loda-trt): TensorRT for RTX everywhere, TensorRT where a GPU is.

TensorRT for RTX builds without a GPU: the FP32, FP16 and INT8 Q/DQ graphs of loda_micro are
parsed and built into real RTX plans on any machine (the ``rtx`` tests; they need only the
``rtx`` extra, which ``make test`` installs), the GEMM precision TensorRT sees is checked
against the ONNX graph's own count, and an unparseable graph is one line per node. Without
TensorRT, cuda-python or a GPU: the one-line errors, the batch profile parser, ``inspect`` of a
sidecar, and the lazy imports. Tests marked ``tensorrt`` really build FP32, FP16 and INT8
TensorRT engines of loda_micro and run them through the TensorRT API with cuda-python buffers;
they skip with the reason where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from loda.errors import LodaError
from loda.export.trt import (
    DEFAULT_PROFILE,
    BatchProfile,
    TrtError,
    TrtUnavailable,
    _parser_errors,
    _read_onnx_record,
    gpu_properties,
    inspect_engine,
    parse_batch_profile,
    parse_compute_capabilities,
    sidecar_path,
)

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(
    not HAVE_RTX, reason="TensorRT-RTX is not installed (pip install 'loda[rtx]'; make test does)"
)


def loda_trt(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loda.export.trt_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def tiny_onnx(path: Path) -> Path:
    """A valid ONNX file TensorRT is never asked to parse (the checks before it fail first)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("crops", TensorProto.UINT8, ["batch", 224, 224, 3])
    y = helper.make_tensor_value_info("score", TensorProto.UINT8, ["batch", 224, 224, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["crops"], ["score"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))
    return path


# --------------------------------------------------------------------------------------------
# Batch profile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15:60:240", BatchProfile(15, 60, 240)),
        ("1:1:1", BatchProfile(1, 1, 1)),
        (" 1 : 15 : 60 ", BatchProfile(1, 15, 60)),
    ],
)
def test_parse_batch_profile(text, expected):
    profile = parse_batch_profile(text)
    assert profile == expected
    assert parse_batch_profile(str(profile)) == profile
    assert profile.shapes(224)[1] == (expected.opt, 224, 224, 3)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("60:15:240", "need MIN <= OPT <= MAX"),
        ("15:240:60", "need MIN <= OPT <= MAX"),
        ("a:b:c", "MIN 'a' is not an integer"),
        ("15:60", "is not MIN:OPT:MAX"),
        ("15:60:240:480", "is not MIN:OPT:MAX"),
        ("0:15:60", "MIN must be >= 1"),
        ("15:60:2.5", "MAX '2.5' is not an integer"),
        ("", "is not MIN:OPT:MAX"),
    ],
)
def test_parse_batch_profile_rejects(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_batch_profile(text)


def test_default_profile():
    assert str(DEFAULT_PROFILE) == "15:60:240"


@pytest.mark.parametrize("batch", ["60:15:240", "a:b:c", "15:60"])
def test_cli_malformed_batch_is_a_usage_error(tmp_path, batch):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not used")
    r = loda_trt("build", onnx_file, "--batch", batch)
    assert r.returncode == 2
    assert "Invalid value for '--batch'" in r.stderr and batch in r.stderr
    assert not (tmp_path / "model.engine").exists()


def test_cli_other_usage_errors(tmp_path):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not used")
    assert loda_trt("build", onnx_file, "--opt-level", 6).returncode == 2
    assert loda_trt("build", onnx_file, "--workspace", 0).returncode == 2
    assert loda_trt("build").returncode == 2
    assert loda_trt("build", onnx_file, "--flavor", "trt").returncode == 2
    for bad in ("9.x", "", "8.6,,sm_8"):
        r = loda_trt("build", onnx_file, "--compute-capability", bad)
        assert r.returncode == 2 and "Invalid value for '--compute-capability'" in r.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.6,8.9,12.0", ("8.6", "8.9", "12.0")),
        ("sm_120, 8.6 ,86", ("12.0", "8.6")),
        ("75", ("7.5",)),
    ],
)
def test_parse_compute_capabilities(text, expected):
    assert parse_compute_capabilities(text) == expected


def test_flavor_options_that_do_not_apply_are_one_line(tmp_path):
    """Checked before the graph is parsed."""
    onnx_file = tiny_onnx(tmp_path / "model.onnx")
    r = loda_trt("build", onnx_file, "--timing-cache", tmp_path / "t.cache")  # rtx: no cache
    assert r.returncode == 1
    assert error_lines(r.stderr) == [
        "loda-trt: error: TensorRT-RTX builds take no timing cache (it would make the build "
        "query a GPU); drop --timing-cache"
    ]
    r = loda_trt("build", onnx_file, "--flavor", "tensorrt", "--compute-capability", "8.9")
    assert r.returncode == 1 and len(error_lines(r.stderr)) == 1
    assert "--compute-capability is for --flavor rtx" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# --------------------------------------------------------------------------------------------
# Without TensorRT / GPU
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_cli_build_without_tensorrt_is_one_line(tmp_path):
    onnx_file = tiny_onnx(tmp_path / "model.onnx")  # TensorRT is checked before it is read
    r = loda_trt("build", onnx_file, "-o", tmp_path / "model.engine", "--flavor", "tensorrt")
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("loda-trt: error: TensorRT is not installed: ")
    assert "pip install 'loda[gpu]'" in lines[0] and "NVIDIA GPU" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "model.engine").exists()


def test_cli_missing_files_are_one_line(tmp_path):
    r = loda_trt("inspect", tmp_path / "missing.engine")
    assert r.returncode == 1
    assert error_lines(r.stderr) == [
        f"loda-trt: error: no engine file at {tmp_path}/missing.engine"
    ]
    r = loda_trt("build", tmp_path / "missing.onnx")
    assert r.returncode == 1
    # loda.onnx_files.check_onnx_file (issue 16) answers first
    assert error_lines(r.stderr) == [f"loda-trt: error: no ONNX model at {tmp_path}/missing.onnx"]


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_cli_inspect_without_tensorrt_prints_the_sidecar(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan bytes")
    sidecar = {"tensorrt_version": "11.4.0.106", "precision": "fp16", "plan_sha256": "x"}
    sidecar_path(engine).write_text(json.dumps(sidecar))
    r = loda_trt("inspect", engine)
    assert r.returncode == 1, r.stderr  # the I/O tensors could not be listed
    result = json.loads(r.stdout)
    assert result["sidecar"] == sidecar and result["io"] is None
    assert result["plan_bytes"] == len(b"plan bytes")
    last = error_lines(r.stderr)[-1]
    assert last.startswith("loda-trt: error: the I/O listing needs TensorRT and a GPU: ")
    assert "describes another plan" in r.stderr  # the sidecar's sha256 is not this plan's


def test_inspect_without_sidecar(tmp_path, monkeypatch, caplog):
    import loda.export.trt as trt_mod

    def unavailable(flavor="tensorrt"):
        raise TrtUnavailable("TensorRT is not installed")

    monkeypatch.setattr(trt_mod, "import_tensorrt", unavailable)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with caplog.at_level(logging.WARNING, logger="loda.export.trt"):
        result = inspect_engine(engine)
    assert result["sidecar"] is None and result["io"] is None
    assert "provenance is unknown" in caplog.messages[0]
    sidecar_path(engine).write_text("[1, 2")
    with pytest.raises(TrtError, match="not valid JSON"):
        inspect_engine(engine)


def test_modules_import_and_help_without_tensorrt():
    code = (
        "import sys, loda.export.trt, loda.export.trt_cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorrt', 'tensorrt_rtx', 'cuda', 'torch', 'onnx')]; "
        "print(bad)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    r = loda_trt("build", "--help")
    assert r.returncode == 0 and "--batch MIN:OPT:MAX" in r.stdout
    assert "15:60:240" in r.stdout and "[default: rtx]" in " ".join(r.stdout.split())


def test_gpu_properties_handles_cuda_python_tuples(monkeypatch):
    """cuda-python returns (err, value) tuples; a fake cudart checks the unpacking."""
    import loda.trt_common as trt_mod  # where gpu_properties looks up cuda-python

    success = SimpleNamespace(name="cudaSuccess")
    no_device = SimpleNamespace(name="cudaErrorNoDevice")
    props = SimpleNamespace(name=b"NVIDIA H200\0\0\0", major=9, minor=0, totalGlobalMem=141 * 2**30)

    def fake(count_result):
        return SimpleNamespace(
            cudaError_t=SimpleNamespace(cudaSuccess=success),
            cudaGetDeviceCount=lambda: count_result,
            cudaGetDeviceProperties=lambda device: (success, props),
            cudaDriverGetVersion=lambda: (success, 13000),
            cudaRuntimeGetVersion=lambda: (success, 12090),
        )

    monkeypatch.setattr(trt_mod, "import_cudart", lambda: fake((success, 1)))
    gpu = gpu_properties()
    assert gpu["name"] == "NVIDIA H200" and gpu["compute_capability"] == "9.0"
    assert gpu["cuda_driver_version"] == "13.0" and gpu["cuda_runtime_version"] == "12.9"
    with pytest.raises(TrtError, match="CUDA device 3 does not exist"):
        gpu_properties(3)
    monkeypatch.setattr(trt_mod, "import_cudart", lambda: fake((no_device, 0)))
    with pytest.raises(TrtUnavailable, match="cudaGetDeviceCount failed: cudaErrorNoDevice"):
        gpu_properties()


def test_parser_errors_are_one_line_per_node():
    def error(name, op, desc, node=3):
        return SimpleNamespace(
            node_name=lambda: name,
            node_operator=lambda: op,
            desc=lambda: desc,
            node=lambda: node,
            code=lambda: SimpleNamespace(name="UNSUPPORTED_NODE"),
        )

    errors = [error("node_permute", "Transpose", "uint8 is not supported"), error("", "", "x", -1)]
    parser = SimpleNamespace(num_errors=2, get_error=lambda i: errors[i])
    assert _parser_errors(parser) == [
        "node_permute (Transpose): uint8 is not supported [UNSUPPORTED_NODE]",
        "graph (?): x [UNSUPPORTED_NODE]",
    ]


def test_onnx_record_names_damaged_metadata(tmp_path):
    """Checked before any TensorRT work: a damaged LoDa record is one line naming the key."""
    import onnx
    from onnx import TensorProto, helper

    def write(props: dict[str, str]) -> Path:
        x = helper.make_tensor_value_info("crops", TensorProto.UINT8, ["batch", 224, 224, 3])
        y = helper.make_tensor_value_info("score", TensorProto.UINT8, ["batch", 224, 224, 3])
        graph = helper.make_graph(
            [helper.make_node("Identity", ["crops"], ["score"])], "g", [x], [y]
        )
        model = helper.make_model(graph)
        onnx.helper.set_model_props(model, props)
        path = tmp_path / "tiny.onnx"
        onnx.save(model, str(path))
        return path

    meta, crop = _read_onnx_record(write({"loda": "{}", "loda.io": '{"input": "crops"}'}))
    assert crop == 224 and meta["loda"] == "{}"
    for key, value in [("loda.int8", '{"target": "tensorrt"'), ("loda.io", "[1]"), ("loda", "x")]:
        with pytest.raises(LodaError, match=f"'{key}' is not a JSON object"):
            _read_onnx_record(write({"loda": "{}", key: value}))


# --------------------------------------------------------------------------------------------
# TensorRT for RTX: real plans of every graph we write, built on this machine (no GPU needed)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rtx_graphs(tmp_path_factory) -> dict[str, Path]:
    """The FP32 export of loda_micro (shared with the other test modules), its FP16 graph (what
    ``loda-export --precision fp16`` writes) and its INT8 Q/DQ graph for TensorRT."""
    if not HAVE_RTX:
        pytest.skip("TensorRT-RTX is not installed (pip install 'loda[rtx]'; make test does)")
    import onnx
    from micro import micro_export

    from loda.calib.fp16 import convert_onnx_fp16
    from loda.calib.int8 import quantize_onnx_int8

    micro = micro_export(tmp_path_factory)
    d = tmp_path_factory.mktemp("rtx")
    fp16_model, _ = convert_onnx_fp16(onnx.load(str(micro.onnx_path)))
    onnx.save(fp16_model, str(d / "micro.fp16.onnx"))
    quantize_onnx_int8(
        micro.onnx_path,
        d / "micro.int8.onnx",
        images=micro.demo_dir,
        target="tensorrt",
        calib_images=4,
        verify=False,
    )
    return {
        "fp32": micro.onnx_path,
        "fp16": d / "micro.fp16.onnx",
        "int8": d / "micro.int8.onnx",
        "checkpoint": micro.checkpoint,
    }


def _onnx_gemms(path: Path) -> tuple[int, int, int]:
    """ONNX side, independent of TensorRT: GEMM nodes, their FLOPs at batch 1, and how many take
    every operand straight from a DequantizeLinear (Q/DQ-fed)."""
    import onnx

    from loda.calib.graph_stats import GEMM_OPS, gemm_stats

    model = onnx.load(str(path))
    stats = gemm_stats(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    qdq = sum(
        1
        for node in model.graph.node
        if node.op_type in GEMM_OPS
        and all(
            name in producer and producer[name].op_type == "DequantizeLinear"
            for name in node.input[:2]
        )
    )
    return len(stats.nodes), stats.total_flops, qdq


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_rtx_plan_of_every_graph(rtx_graphs, precision, tmp_path):
    import tensorrt_rtx

    from loda.export.onnx import sha256_file
    from loda.export.trt import build_engine

    onnx_path = rtx_graphs[precision]
    engine = tmp_path / f"micro.{precision}.engine"
    report = build_engine(onnx_path, engine, profile=BatchProfile(1, 15, 60))
    side = json.loads(sidecar_path(engine).read_text())
    assert side == report.sidecar
    assert side["flavor"] == "rtx" and side["tensorrt_version"] == tensorrt_rtx.__version__
    assert side["compute_capabilities"] == "default" and side["gpu"] is None
    assert side["timing_cache"] is None
    assert side["precision"] == precision and side["tf32"] is (precision != "fp32")
    assert side["profile"]["batch"] == {"min": 1, "opt": 15, "max": 60}
    assert side["onnx"]["sha256"] == sha256_file(onnx_path)
    assert side["plan_sha256"] == sha256_file(engine) and side["plan_bytes"] > 1_000_000
    assert side["loda"]["model"]["name"] == "loda_micro"
    assert side["network"]["layers"] == report.network.layers > 1000

    # GEMM precision as TensorRT sees it, against the ONNX graph's own count.
    stats = report.network
    n_gemm, onnx_flops, onnx_qdq = _onnx_gemms(onnx_path)
    assert len(stats.gemms) == n_gemm and not stats.unknown
    assert stats.flops() == onnx_flops  # same FLOPs, counted by TensorRT's shapes
    if precision == "fp32":
        assert stats.share("FLOAT") == 1.0
    elif precision == "fp16":
        assert stats.share("HALF") >= 0.95  # the goal, now from TensorRT's side
    else:
        int8 = [g for g in stats.gemms if g.dtype == "INT8"]
        assert len(int8) == onnx_qdq > 0
        assert stats.share("INT8") >= 0.5
        assert {g.dtype for g in stats.gemms} <= {"INT8", "FLOAT", "HALF"}


@needs_rtx
@pytest.mark.slow
def test_cli_rtx_build_prints_network_and_targets(rtx_graphs, tmp_path):
    engine = tmp_path / "cli.fp16.engine"
    r = loda_trt(
        "build", rtx_graphs["fp16"], "-o", engine, "--batch", "1:15:30",
        "--compute-capability", "8.6,12.0",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = error_lines(r.stderr)
    network = next(line for line in lines if line.startswith("network: "))
    gemm = next(line for line in lines if line.startswith("GEMM precision (TensorRT network): "))
    side = json.loads(sidecar_path(engine).read_text())
    assert network.startswith(f"network: {side['network']['layers']} layers")
    assert "115 GEMM layers" in gemm and "HALF 100.0%" in gemm
    building = next(line for line in lines if line.startswith("building "))
    assert building.endswith(
        "engine for compute capabilities 8.6,12.0 (no GPU needed): batch 1:15:30, "
        "opt level 3, TF32 on"
    )
    assert side["compute_capabilities"] == ["8.6", "12.0"]
    done = lines[-2]
    assert done.startswith("loda-trt: TensorRT-RTX ") and str(engine) in done
    assert "compute capabilities 8.6,12.0" in done and "in HALF" in done
    assert f"{engine.stat().st_size / 1e6:.1f} MB" in done and "build " in done
    assert lines[-1] == f"next: loda-trt inspect {engine}"

    # inspect: the sidecar as JSON; no GPU here, so the I/O listing is one line and exit 1
    r = loda_trt("inspect", engine)
    result = json.loads(r.stdout)
    assert result["sidecar"] == side and result["plan_sha256"] == side["plan_sha256"]
    summary = [line for line in error_lines(r.stderr) if line.startswith(f"{engine}: ")]
    assert summary and "targets 8.6,12.0" in summary[0] and "batch 1:15:30" in summary[0]
    if r.returncode != 0:  # no GPU / driver: one line says why, after the JSON
        assert error_lines(r.stderr)[-1].startswith("loda-trt: error: ")
        assert "Traceback" not in r.stderr
        assert result["io"] is None


def _bad_graph(path: Path) -> Path:
    """A LoDa-labelled graph with two nodes no TensorRT parser knows."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("crops", TensorProto.UINT8, ["batch", 224, 224, 3])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])
    nodes = [
        helper.make_node("Cast", ["crops"], ["f"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("NoSuchOpA", ["f"], ["a"], name="mystery_a", domain="example.custom"),
        helper.make_node("NoSuchOpB", ["f"], ["b"], name="mystery_b", domain="example.custom"),
        helper.make_node("Add", ["a", "b"], ["c"], name="add"),
        helper.make_node("ReduceMean", ["c"], ["score"], name="mean", keepdims=0, axes=[1, 2, 3]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "bad", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)],
    )
    helper.set_model_props(model, {"loda": "{}", "loda.precision": "fp32"})
    onnx.save(model, str(path))
    return path


@needs_rtx
def test_unparseable_nodes_are_one_line_each_and_nothing_is_written(tmp_path):
    onnx_file = _bad_graph(tmp_path / "bad.onnx")
    r = loda_trt("build", onnx_file, "-o", tmp_path / "bad.engine")
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    parser = [line for line in lines if line.startswith("parser: ")]
    assert [line.split(":", 2)[1].strip() for line in parser] == [
        "mystery_a (NoSuchOpA)",
        "mystery_b (NoSuchOpB)",
    ]
    assert all(line.split(": ", 2)[2].strip() for line in parser)  # a reason follows
    assert lines[-1].startswith("loda-trt: error: TensorRT-RTX ")
    assert "cannot parse" in lines[-1] and "2 node error(s)" in lines[-1]
    assert len(lines) == 1 + len(parser) + 1  # "parsing ...", the nodes, the error
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def _has_nvidia_driver() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()


@needs_rtx
@pytest.mark.slow
def test_rtx_engine_that_cannot_run_here_is_one_line(rtx_graphs, tmp_path, photo):
    """loda-score / the tensorrt-rtx backend on a real RTX plan: runs on an RTX GPU it targets,
    otherwise one line naming the reason (here, without a driver: the header check cannot run)."""
    from loda.export.trt import build_engine
    from loda.runtime import BackendError, BackendUnavailable, open_backend

    engine = tmp_path / "micro.engine"
    build_engine(rtx_graphs["fp32"], engine, profile=BatchProfile(1, 15, 30))
    r = subprocess.run(
        [sys.executable, "-m", "loda.runtime.cli", str(photo), "-m", str(engine),
         "--backend", "tensorrt-rtx", "-o", str(tmp_path / "scores.csv")],
        capture_output=True, text=True,
    )  # fmt: skip
    if not _has_nvidia_driver():
        assert r.returncode != 0
        lines = error_lines(r.stderr)
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("loda-score: error: TensorRT-RTX cannot check the engine here")
        with pytest.raises(BackendUnavailable, match="cannot check the engine here"):
            open_backend(engine)  # by suffix: the sidecar names the flavor
        # the parity table lists it as built, not run
        from loda.metadata import read_safetensors_metadata
        from loda.parity import _open_artifact

        meta, _ = read_safetensors_metadata(rtx_graphs["checkpoint"])
        run, opened = _open_artifact(engine, meta, "auto")
        assert opened is None and run.status == "SKIP"
        assert (run.backend, run.precision) == ("tensorrt-rtx", "fp32")
        assert run.reason.startswith("built, not run: TensorRT-RTX cannot check the engine")
    elif r.returncode != 0:
        assert len(error_lines(r.stderr)) == 1 and "Traceback" not in r.stderr

    # A damaged header is INVALID (malformed) with or without a GPU: one line, not a crash.
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"\0" * 64 + engine.read_bytes()[64:1024])
    sidecar_path(bad).write_text(sidecar_path(engine).read_text())
    with pytest.raises(BackendError, match="malformed header"):
        open_backend(bad, "tensorrt-rtx")


@pytest.mark.gpu
@pytest.mark.slow
def test_rtx_runtime_cache_persists_and_cuda_graphs_run(rtx_graphs, tmp_path):
    """On an RTX GPU: the JIT runtime cache is written at close and loaded by the next open;
    CUDA-graph capture gives the same scores. Skips with the backend's reason elsewhere."""
    from loda.export.trt import build_engine
    from loda.runtime import BackendError, open_backend
    from loda.runtime.trt_backend import runtime_cache_path

    engine = tmp_path / "micro.fp16.engine"
    build_engine(rtx_graphs["fp16"], engine, profile=BatchProfile(1, 15, 30))
    cache_dir = tmp_path / "cache"
    crops = np.random.default_rng(0).integers(0, 256, (20, 224, 224, 3), dtype=np.uint8)
    try:
        first = open_backend(engine, "tensorrt-rtx", cache_dir=cache_dir)
    except BackendError as exc:
        pytest.skip(f"tensorrt-rtx backend: {exc}")
    with first:
        assert first.name == "tensorrt-rtx"
        assert first.info.details["runtime_cache_loaded_bytes"] == 0
        want = first.infer(crops)
    cache = runtime_cache_path(engine, cache_dir, engine.read_bytes())
    assert cache.is_file() and cache.stat().st_size > 0
    with open_backend(engine, "tensorrt-rtx", cache_dir=cache_dir, cuda_graph=True) as again:
        assert again.info.details["runtime_cache_loaded_bytes"] == cache.stat().st_size
        assert again.info.details["cuda_graph"] is True
        np.testing.assert_allclose(again.infer(crops), want, atol=1e-3, rtol=0)


@needs_rtx
def test_rtx_unknown_target_is_one_line(tmp_path):
    onnx_file = tiny_onnx(tmp_path / "model.onnx")  # not parsed: the target is checked first
    r = loda_trt("build", onnx_file, "--compute-capability", "8.6,9.0")
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "compute capability 9.0 is not a target of TensorRT-RTX" in lines[0]
    assert "--flavor tensorrt" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# --------------------------------------------------------------------------------------------
# With TensorRT and a GPU: build, inspect, run, compare with ONNX Runtime
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_stack():
    trt = pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (pip install 'loda[gpu]')"
    )
    cudart = pytest.importorskip(
        "cuda.bindings.runtime", reason="cuda-python is not installed (pip install 'loda[gpu]')"
    )
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        pytest.skip(f"no NVIDIA GPU usable ({getattr(err, 'name', err)})")
    return trt, cudart


@pytest.fixture(scope="module")
def micro(tmp_path_factory, gpu_stack):
    from micro import micro_export

    return micro_export(tmp_path_factory)


def _stream_handle(stream) -> int:
    try:
        from cuda.bindings.utils import get_cuda_native_handle

        return int(get_cuda_native_handle(stream))
    except ImportError:  # cuda-bindings 12.x
        return int(stream)


def trt_scores(engine_path: Path, crops: np.ndarray, batch: int) -> np.ndarray:
    """Scores of uint8 crops through the engine, ``batch`` crops per execution."""
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    def check(result):
        err, *values = result if isinstance(result, tuple) else (result,)
        assert err == cudart.cudaError_t.cudaSuccess, err
        return values[0] if len(values) == 1 else values

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    assert engine is not None
    context = engine.create_execution_context()
    assert engine.get_tensor_dtype("crops") == trt.DataType.UINT8
    out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype("score")))
    stream = check(cudart.cudaStreamCreate())
    d_in = check(cudart.cudaMalloc(batch * crops[0].nbytes))
    d_out = check(cudart.cudaMalloc(batch * out_dtype.itemsize))
    outputs = []
    try:
        for start in range(0, len(crops), batch):
            x = np.ascontiguousarray(crops[start : start + batch])
            assert context.set_input_shape("crops", x.shape)
            y = np.empty(tuple(context.get_tensor_shape("score")), dtype=out_dtype)
            assert y.shape == (len(x),)
            kind = cudart.cudaMemcpyKind
            check(
                cudart.cudaMemcpyAsync(
                    d_in, x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice, stream
                )
            )
            assert context.set_tensor_address("crops", int(d_in))
            assert context.set_tensor_address("score", int(d_out))
            assert context.execute_async_v3(_stream_handle(stream))
            check(
                cudart.cudaMemcpyAsync(
                    y.ctypes.data, d_out, y.nbytes, kind.cudaMemcpyDeviceToHost, stream
                )
            )
            check(cudart.cudaStreamSynchronize(stream))
            outputs.append(y.astype(np.float32))
    finally:
        check(cudart.cudaFree(d_in))
        check(cudart.cudaFree(d_out))
        check(cudart.cudaStreamDestroy(stream))
    return np.concatenate(outputs)


def _demo_crops(micro, n_images: int) -> np.ndarray:
    from loda.export.onnx import load_verification_images
    from loda.preprocess import PreprocessConfig

    images = load_verification_images(micro.demo_dir, n_images, PreprocessConfig())
    return np.concatenate(images.crops)


def _ort(onnx_path, crops: np.ndarray) -> np.ndarray:
    from loda.export.onnx import ort_scores, ort_session

    return ort_scores(ort_session(onnx_path), crops)


@pytest.mark.tensorrt
@pytest.mark.slow
def test_fp32_engine_matches_onnx_runtime(micro, tmp_path):
    from loda.export.onnx import sha256_file
    from loda.export.trt import build_engine

    engine = tmp_path / "micro.engine"
    cache = tmp_path / "timing.cache"
    report = build_engine(
        micro.onnx_path,
        engine,
        flavor="tensorrt",
        profile=BatchProfile(1, 15, 60),
        timing_cache=cache,
    )
    side = json.loads(sidecar_path(engine).read_text())
    assert side == report.sidecar
    assert side["precision"] == "fp32" and side["tf32"] is False
    assert side["profile"]["batch"] == {"min": 1, "opt": 15, "max": 60}
    assert side["onnx"]["sha256"] == sha256_file(micro.onnx_path)
    assert side["plan_sha256"] == sha256_file(engine)  # the plan, untouched
    assert side["gpu"]["compute_capability"] and side["loda"]["model"]["name"] == "loda_micro"
    assert cache.is_file() and cache.stat().st_size > 0

    crops = _demo_crops(micro, 4)  # 60 crops
    want = _ort(micro.onnx_path, crops)
    for batch in (15, 7, 1):
        got = trt_scores(engine, crops, batch)
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)

    # The timing cache is read back on a rebuild.
    again = build_engine(
        micro.onnx_path, tmp_path / "again.engine", flavor="tensorrt",
        profile=BatchProfile(1, 15, 60), timing_cache=cache,
    )  # fmt: skip
    assert again.sidecar["timing_cache"]["loaded_bytes"] > 0

    result = inspect_engine(engine)
    io = {t["name"]: t for t in result["io"]}
    assert io["crops"]["mode"] == "input" and io["score"]["mode"] == "output"
    assert io["crops"]["shape"] == [-1, 224, 224, 3]
    assert io["crops"]["profile"] == {
        "min": [1, 224, 224, 3],
        "opt": [15, 224, 224, 3],
        "max": [60, 224, 224, 3],
    }
    assert result["sidecar"]["plan_sha256"] == result["plan_sha256"]


@pytest.mark.tensorrt
@pytest.mark.slow
def test_fp16_engine_tracks_onnx_runtime(micro, tmp_path):
    import onnx

    from loda.calib.fp16 import convert_onnx_fp16
    from loda.export.trt import build_engine
    from loda.metrics import srcc

    fp16_path = tmp_path / "micro.fp16.onnx"
    model, _ = convert_onnx_fp16(onnx.load(str(micro.onnx_path)))
    onnx.save(model, str(fp16_path))
    engine = tmp_path / "micro.fp16.engine"
    report = build_engine(fp16_path, engine, flavor="tensorrt", profile=BatchProfile(1, 15, 60))
    assert report.sidecar["precision"] == "fp16" and report.sidecar["tf32"] is True

    crops = _demo_crops(micro, 4)
    want = _ort(micro.onnx_path, crops)  # FP32 reference
    got = trt_scores(engine, crops, 15)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=0)
    assert srcc(got, want) >= 0.99
    np.testing.assert_allclose(trt_scores(engine, crops, 7), got, atol=1e-3, rtol=0)


@pytest.mark.tensorrt
@pytest.mark.slow
def test_int8_qdq_engine_builds_and_tracks_onnx_runtime(micro, tmp_path):
    """TensorRT accepts loda-calib's Q/DQ graph (strongly typed, no INT8 flag)."""
    from loda.calib.int8 import quantize_onnx_int8
    from loda.export.trt import build_engine
    from loda.metrics import srcc

    int8_path = tmp_path / "micro.int8.onnx"
    quantize_onnx_int8(
        micro.onnx_path, int8_path, images=micro.demo_dir, calib_images=4, verify=False
    )
    engine = tmp_path / "micro.int8.engine"
    report = build_engine(int8_path, engine, flavor="tensorrt", profile=BatchProfile(1, 15, 60))
    assert report.sidecar["precision"] == "int8"
    crops = _demo_crops(micro, 4)
    got = trt_scores(engine, crops, 15)
    want = _ort(int8_path, crops)  # the same Q/DQ graph in ONNX Runtime
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=5e-2, rtol=0)
    assert srcc(got, want) >= 0.9


@pytest.mark.tensorrt
def test_cli_build_and_inspect(micro, tmp_path):
    engine = tmp_path / "cli.engine"
    r = loda_trt(
        "build", micro.onnx_path, "-o", engine, "--batch", "1:15:30", "--opt-level", 0,
        "--workspace", 1, "--flavor", "tensorrt",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = error_lines(r.stderr)
    assert lines[-2].startswith("loda-trt: TensorRT 1") and str(engine) in lines[-2]
    assert lines[-1] == f"next: loda-trt inspect {engine}"
    assert engine.is_file() and sidecar_path(engine).is_file()
    r = loda_trt("inspect", engine)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [t["name"] for t in result["io"]] == ["crops", "score"]
    assert result["sidecar"]["builder_optimization_level"] == 0
    assert result["sidecar"]["workspace_bytes"] == 2**30
