"""The TensorRT backend's host-side plumbing (runtime/trt_backend.py) on machines without a GPU.

TensorRT and cuda-python are replaced by small stand-ins (``tensorrt`` and
``cuda.bindings.runtime`` in ``sys.modules``): "device" memory is host memory, the "engine"
scores a crop as its mean pixel value / 255. What runs for real is the backend itself: sidecar
reading, the flavor and GPU checks, the tensor and profile checks, buffer allocation, padding
a chunk to the profile minimum, chunking at the profile maximum, and freeing everything at
close. The real engine path is tests/export/test_trt.py (skipped without TensorRT and a GPU).
"""

from __future__ import annotations

import ctypes
import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from loda.config import get_config
from loda.metadata import CheckpointMeta
from loda.preprocess import PreprocessConfig

VERSION = "10.13.0"
PROFILE = (4, 8, 16)  # min, opt, max crops per call


class _Memory:
    """cudaMalloc / cudaMallocHost as ctypes buffers; remembers what is not freed yet."""

    def __init__(self) -> None:
        self.live: dict[int, ctypes.Array] = {}

    def alloc(self, n: int) -> int:
        buf = (ctypes.c_uint8 * n)()
        self.live[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def free(self, address: int) -> None:
        del self.live[int(address)]


def _fake_cudart(memory: _Memory, calls: list) -> types.ModuleType:
    ok = types.SimpleNamespace(cudaSuccess=0)
    props = types.SimpleNamespace(name=b"Fake GPU\0", major=9, minor=0, totalGlobalMem=1 << 30)
    m = types.ModuleType("cuda.bindings.runtime")
    m.cudaError_t = ok
    m.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    m.cudaGetDeviceCount = lambda: (0, 1)
    m.cudaGetDeviceProperties = lambda _d: (0, props)
    m.cudaDriverGetVersion = lambda: (0, 12080)
    m.cudaRuntimeGetVersion = lambda: (0, 12080)
    m.cudaSetDevice = lambda _d: (0,)
    m.cudaStreamCreate = lambda: (0, 7)
    m.cudaStreamDestroy = lambda s: calls.append(("destroy", s)) or (0,)
    m.cudaStreamSynchronize = lambda _s: (0,)
    m.cudaMallocHost = lambda n: (0, memory.alloc(n))
    m.cudaMalloc = lambda n: (0, memory.alloc(n))
    m.cudaFree = lambda a: memory.free(a) or (0,)
    m.cudaFreeHost = lambda a: memory.free(a) or (0,)

    def memcpy(dst, src, n, _kind, _stream):
        ctypes.memmove(int(dst), int(src), n)
        return (0,)

    m.cudaMemcpyAsync = memcpy
    return m


class _Context:
    def __init__(self, calls: list) -> None:
        self.shape: tuple | None = None
        self.addresses: dict[str, int] = {}
        self.calls = calls

    def set_input_shape(self, _name, shape):
        self.shape = tuple(shape)
        return PROFILE[0] <= shape[0] <= PROFILE[2]

    def set_tensor_address(self, name, address):
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, _stream):
        n, c = self.shape[0], self.shape[1]
        size = n * c * c * 3
        crops = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(self.addresses["crops"]))
        out = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["score"]))
        out[:] = crops.reshape(n, -1).mean(axis=1) / 255.0
        self.calls.append(("execute", n))
        return True


def _fake_tensorrt(calls: list) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: dtype

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2)

        def __init__(self) -> None:
            pass

    class Engine:
        num_io_tensors = 2
        get_tensor_name = staticmethod(lambda i: ("crops", "score")[i])
        get_tensor_mode = staticmethod(lambda n: "in" if n == "crops" else "out")
        get_tensor_dtype = staticmethod(lambda n: np.uint8 if n == "crops" else np.float32)

        def get_tensor_profile_shape(self, _name, _profile):
            return [(p,) for p in PROFILE]

        def create_execution_context(self):
            return _Context(calls)

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan):
            return Engine() if plan == b"plan" else None

    trt.ILogger, trt.Runtime = ILogger, Runtime
    return trt


@pytest.fixture
def fake_gpu(monkeypatch):
    memory, calls = _Memory(), []
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = _fake_cudart(memory, calls)
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", bindings.runtime)
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # int(stream) is the handle
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(calls))
    return memory, calls


def _engine(tmp_path: Path, plan: bytes = b"plan", **sidecar) -> Path:
    path = tmp_path / "model.engine"
    path.write_bytes(plan)
    meta = CheckpointMeta(model=get_config("loda_micro"), preprocess=PreprocessConfig())
    record = {
        "flavor": "tensorrt",
        "tensorrt_version": VERSION,
        "gpu": {"name": "Fake GPU", "compute_capability": "9.0"},
        "precision": "fp16",
        "loda": meta.to_dict(),
        **sidecar,
    }
    (tmp_path / "model.engine.json").write_text(json.dumps(record), encoding="utf-8")
    return path


def test_open_infer_close_pad_and_chunk(fake_gpu, tmp_path):
    from loda.runtime.trt_backend import TensorRTBackend

    memory, calls = fake_gpu
    backend = TensorRTBackend.open(_engine(tmp_path))
    info = backend.info
    assert (info.device, info.precision) == ("cuda:0", "fp16")
    assert info.details["profile"] == list(PROFILE)
    assert info.details["gpu"] == "Fake GPU" and info.details["compute_capability"] == "9.0"
    assert backend.max_batch == PROFILE[2]
    c = info.meta.preprocess.crop_size
    crops = np.random.default_rng(0).integers(0, 256, (19, c, c, 3), dtype=np.uint8)
    want = crops.reshape(19, -1).mean(axis=1) / 255.0
    np.testing.assert_allclose(backend.infer(crops[:2]), want[:2], rtol=1e-6)  # padded to 4
    np.testing.assert_allclose(backend.infer(crops), want, rtol=1e-6)  # chunks of 16 and 3
    assert [n for kind, n in calls if kind == "execute"] == [4, 16, 4]
    assert len(memory.live) == 4  # pinned in / out, device in / out
    backend.close()
    assert memory.live == {} and ("destroy", 7) in calls


@pytest.mark.parametrize(
    ("plan", "sidecar", "message"),
    [
        (b"plan", {"tensorrt_version": "10.12.0"}, "built with TensorRT 10.12.0, this is 10.13.0"),
        (
            b"plan",
            {"gpu": {"name": "Other", "compute_capability": "8.0"}},
            r"built on Other \(sm 8.0\)",
        ),
        (b"plan", {"loda": None}, "carries no LoDa metadata record"),
        (b"plan", {"flavor": "other"}, "unknown engine flavor 'other'"),
        (b"damaged", {}, "TensorRT cannot load"),
    ],
)
def test_refusals_are_one_line(fake_gpu, tmp_path, plan, sidecar, message):
    from loda.runtime.backend import BackendError
    from loda.runtime.trt_backend import TensorRTBackend

    memory, _calls = fake_gpu
    with pytest.raises(BackendError, match=message) as err:
        TensorRTBackend.open(_engine(tmp_path, plan, **sidecar))
    assert "\n" not in str(err.value)
    assert memory.live == {}  # refused before any buffer was allocated


def test_no_sidecar_says_so(fake_gpu, tmp_path):
    from loda.runtime.backend import BackendError
    from loda.runtime.trt_backend import TensorRTBackend

    path = _engine(tmp_path)
    path.with_name("model.engine.json").unlink()
    with pytest.raises(BackendError, match=r"has no sidecar model\.engine\.json"):
        TensorRTBackend.open(path)


def test_rtx_cache_that_cannot_be_saved_is_a_logged_warning(tmp_path, caplog, monkeypatch):
    """The runtime-cache warning at close goes to the module's logger (the CLIs show it)."""
    monkeypatch.setattr(logging.getLogger("loda"), "propagate", True)  # to caplog's handler
    from loda.runtime.trt_backend import TensorRTRtxBackend

    class Cache:
        def serialize(self):
            return b"kernels"

    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    backend = object.__new__(TensorRTRtxBackend)
    with caplog.at_level(logging.WARNING, logger="loda.runtime.trt_backend"):
        backend._on_close({"runtime_cache": Cache(), "runtime_cache_path": blocker / "x.rtcache"})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("loda: warning: TensorRT-RTX runtime cache not saved to ")
