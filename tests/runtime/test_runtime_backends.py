"""The backend contract (loda.runtime.backend): ONE conformance test every backend passes.

Each backend opens the same model (a loda_micro checkpoint, its FP32 ONNX export, and a
TensorRT engine built from that export where TensorRT and a GPU exist) and must: carry the
checkpoint's metadata, score real demo crops like the PyTorch reference (loda.inference, which
is independent of loda.runtime) to fp32 tolerance, give the same scores whatever the chunking,
handle an empty batch, refuse bad input with BackendError, and refuse use after close.
"""

from __future__ import annotations

import numpy as np
import pytest

from loda.runtime import Backend, BackendError, BackendUnavailable, backend_class, open_backend

FP32_ATOL = 1e-4


@pytest.fixture(scope="module")
def crops(micro):
    from loda.data.images import load_verification_images
    from loda.preprocess import PreprocessConfig

    images = load_verification_images(micro.demo_dir, 3, PreprocessConfig())
    return np.concatenate(images.crops)  # 45 real crops


@pytest.fixture(scope="module")
def reference(micro, crops):
    from loda.checkpoint import load_checkpoint
    from loda.inference import score_crops

    model, meta = load_checkpoint(micro.checkpoint)
    return score_crops(model, crops, meta.preprocess, batch_size=16)


def _tensorrt_engine(micro, tmp_path_factory):
    try:
        from loda.export.trt import (
            TrtUnavailable,
            build_engine,
            gpu_properties,
            import_tensorrt,
            parse_batch_profile,
        )

        import_tensorrt("tensorrt")
        gpu_properties()
    except TrtUnavailable as exc:
        pytest.skip(f"tensorrt backend: {exc}")
    engine = tmp_path_factory.mktemp("engine") / "micro.engine"
    build_engine(
        micro.onnx_path,
        engine,
        flavor="tensorrt",
        profile=parse_batch_profile("1:15:64"),
    )
    return engine


def _rtx_backend(micro, tmp_path_factory):
    """An FP32 TensorRT-RTX plan (built here, no GPU needed) opened where an RTX GPU it
    targets exists; skipped with the backend's one-line reason elsewhere."""
    pytest.importorskip(
        "tensorrt_rtx", reason="tensorrt-rtx backend: TensorRT-RTX is not installed"
    )
    from loda.export.trt import build_engine, parse_batch_profile

    d = tmp_path_factory.mktemp("rtx_engine")
    engine = d / "micro.engine"
    build_engine(micro.onnx_path, engine, profile=parse_batch_profile("1:15:64"))
    try:
        return open_backend(engine, "tensorrt-rtx", cache_dir=d / "cache")
    except BackendError as exc:  # BackendUnavailable (no GPU / driver) or INVALID here
        pytest.skip(f"tensorrt-rtx backend: {exc}")


@pytest.fixture(
    params=[
        "onnxruntime",
        "torch",
        pytest.param("tensorrt", marks=pytest.mark.tensorrt),
        pytest.param("tensorrt-rtx", marks=[pytest.mark.gpu, pytest.mark.slow]),
    ]
)
def backend(request, micro, tmp_path_factory):
    name = request.param
    if name == "tensorrt-rtx":
        opened = _rtx_backend(micro, tmp_path_factory)
    else:
        path = {
            "onnxruntime": lambda: micro.onnx_path,
            "torch": lambda: micro.checkpoint,
            "tensorrt": lambda: _tensorrt_engine(micro, tmp_path_factory),
        }[name]()
        opened = open_backend(path, device="cpu" if name != "tensorrt" else "auto")
    yield opened
    opened.close()


def test_backend_conformance(backend, micro, crops, reference):
    from loda.checkpoint import load_checkpoint

    assert isinstance(backend, Backend)
    # metadata: exactly the checkpoint's record
    _, meta = load_checkpoint(micro.checkpoint)
    assert backend.info.meta == meta
    assert backend.info.precision in ("fp32", "fp16", "int8")
    # scores: float32 [n], equal to the PyTorch reference on real crops
    scores = backend.infer(crops)
    assert scores.dtype == np.float32 and scores.shape == (len(crops),)
    assert np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, reference, atol=FP32_ATOL, rtol=0)
    assert np.ptp(scores) > 1e-3  # the crops really differ: the comparison means something
    # chunking does not change scores (batch 1, 7 and the rest)
    parts = np.concatenate(
        [backend.infer(crops[:1]), backend.infer(crops[1:8]), backend.infer(crops[8:])]
    )
    np.testing.assert_allclose(parts, scores, atol=FP32_ATOL, rtol=0)
    # a non-contiguous view is accepted
    np.testing.assert_allclose(backend.infer(crops[::2]), scores[::2], atol=FP32_ATOL, rtol=0)
    # empty batch
    empty = backend.infer(np.zeros((0, *crops.shape[1:]), np.uint8))
    assert empty.shape == (0,) and empty.dtype == np.float32
    # bad input: one-line BackendError
    with pytest.raises(BackendError, match="uint8"):
        backend.infer(crops.astype(np.float32))
    with pytest.raises(BackendError, match="shape"):
        backend.infer(crops[:, :100])
    with pytest.raises(BackendError, match="shape"):
        backend.infer(crops[0])
    # closed
    backend.close()
    assert backend.closed
    with pytest.raises(BackendError, match="closed"):
        backend.infer(crops[:1])
    backend.close()  # idempotent


def test_contract_is_abc_enforced():
    class Incomplete(Backend):
        name = "incomplete"
        suffixes = (".x",)

        @classmethod
        def open(cls, path, **options):
            raise NotImplementedError

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(None)  # type: ignore[arg-type]


def test_backend_choice_by_suffix_and_errors(tmp_path, micro):
    from loda.runtime import backend_for_path

    assert backend_for_path("m.onnx") == "onnxruntime"
    assert backend_for_path("m.ENGINE") == "tensorrt"
    assert backend_for_path("m.safetensors") == "torch"
    with pytest.raises(BackendError, match="cannot tell the backend"):
        backend_for_path("m.pt")
    with pytest.raises(BackendError, match="unknown backend"):
        backend_class("tflite")
    with pytest.raises(BackendError, match="no ONNX model"):
        open_backend(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    with pytest.raises(BackendError, match="damaged or not an ONNX model"):
        open_backend(junk)


def test_onnx_without_loda_metadata_is_refused(tmp_path, micro):
    import onnx

    model = onnx.load(micro.onnx_path)
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, bare)
    with pytest.raises(BackendError, match="not a LoDa artifact"):
        open_backend(bare)


def test_onnxruntime_cuda_request_without_cuda_is_one_line(micro):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        open_backend(micro.onnx_path, device="cuda")


def test_tensorrt_without_tensorrt_is_one_line(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        open_backend(engine)
