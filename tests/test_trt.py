"""TensorRT engines (loda.export.trt, loda-trt).

Without TensorRT, cuda-python or a GPU (this CPU machine): the one-line errors, the batch
profile parser, ``inspect`` of a sidecar, and the lazy imports. Tests marked ``tensorrt``
really build FP32, FP16 and INT8 engines of loda_micro and run them through the TensorRT API
with cuda-python buffers; they skip with the reason where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import importlib.util
import json
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
    sidecar_path,
)

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def loda_trt(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loda.export.trt_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


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


# --------------------------------------------------------------------------------------------
# Without TensorRT / GPU
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_cli_build_without_tensorrt_is_one_line(tmp_path):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"any bytes: TensorRT is checked before the graph is read")
    r = loda_trt("build", onnx_file, "-o", tmp_path / "model.engine")
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
    assert error_lines(r.stderr) == [f"loda-trt: error: no ONNX file at {tmp_path}/missing.onnx"]


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


def test_inspect_without_sidecar(tmp_path, monkeypatch):
    import loda.export.trt as trt_mod

    def unavailable():
        raise TrtUnavailable("TensorRT is not installed")

    monkeypatch.setattr(trt_mod, "import_tensorrt", unavailable)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    messages = []
    result = inspect_engine(engine, log=messages.append)
    assert result["sidecar"] is None and result["io"] is None
    assert "provenance is unknown" in messages[0]
    sidecar_path(engine).write_text("[1, 2")
    with pytest.raises(TrtError, match="not valid JSON"):
        inspect_engine(engine, log=None)


def test_modules_import_and_help_without_tensorrt():
    code = (
        "import sys, loda.export.trt, loda.export.trt_cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'torch')]; "
        "print(bad)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    r = loda_trt("build", "--help")
    assert r.returncode == 0 and "--batch MIN:OPT:MAX" in r.stdout
    assert "15:60:240" in r.stdout


def test_gpu_properties_handles_cuda_python_tuples(monkeypatch):
    """cuda-python returns (err, value) tuples; a fake cudart checks the unpacking."""
    import loda.export.trt as trt_mod

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
    from test_export_onnx import micro_export

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
        micro.onnx_path, engine, profile=BatchProfile(1, 15, 60), timing_cache=cache, log=None
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
        micro.onnx_path, tmp_path / "again.engine", profile=BatchProfile(1, 15, 60),
        timing_cache=cache, log=None,
    )  # fmt: skip
    assert again.sidecar["timing_cache"]["loaded_bytes"] > 0

    result = inspect_engine(engine, log=None)
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
    report = build_engine(fp16_path, engine, profile=BatchProfile(1, 15, 60), log=None)
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
        micro.onnx_path, int8_path, images=micro.demo_dir, calib_images=4, verify=False, log=None
    )
    engine = tmp_path / "micro.int8.engine"
    report = build_engine(int8_path, engine, profile=BatchProfile(1, 15, 60), log=None)
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
        "--workspace", 1,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = error_lines(r.stderr)
    assert lines[-2].startswith("loda-trt: TensorRT ") and str(engine) in lines[-2]
    assert lines[-1] == f"next: loda-trt inspect {engine}"
    assert engine.is_file() and sidecar_path(engine).is_file()
    r = loda_trt("inspect", engine)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [t["name"] for t in result["io"]] == ["crops", "score"]
    assert result["sidecar"]["builder_optimization_level"] == 0
    assert result["sidecar"]["workspace_bytes"] == 2**30
