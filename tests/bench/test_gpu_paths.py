"""The CUDA paths other than TensorRT, run where a CUDA GPU exists (marked ``gpu``).

The torch backend on CUDA (fp32, and fp16/bf16 autocast), ONNX Runtime's CUDA provider with
I/O binding (only with onnxruntime-gpu installed), and AMP training on CUDA. Each compares with
the CPU path on real demo crops; none can run on a machine without a GPU, where they skip
with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loda.metrics import srcc
from loda.runtime import open_backend

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to torch", allow_module_level=True)


@pytest.fixture(scope="module")
def crops(micro):
    from loda.data.images import load_verification_images
    from loda.preprocess import PreprocessConfig

    images = load_verification_images(micro.demo_dir, 8, PreprocessConfig())
    return np.concatenate(images.crops)  # 120 real crops


@pytest.fixture(scope="module")
def cpu_scores(micro, crops):
    with open_backend(micro.checkpoint, device="cpu") as backend:
        return backend.infer(crops)


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-4), ("fp16", 2e-2), ("bf16", 1e-1)])
def test_torch_backend_on_cuda_tracks_cpu(micro, crops, cpu_scores, precision, atol):
    with open_backend(micro.checkpoint, device="cuda", precision=precision) as backend:
        assert backend.info.device.startswith("cuda")
        scores = backend.infer(crops)
    assert scores.dtype == np.float32 and np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, cpu_scores, atol=atol, rtol=0)
    assert srcc(scores, cpu_scores) > 0.99


def test_onnxruntime_cuda_provider_with_io_binding(micro, crops, cpu_scores):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has no CUDAExecutionProvider (pip install 'loda[gpu]')")
    with open_backend(micro.onnx_path, device="cuda") as backend:
        assert backend.info.device.startswith("cuda")
        scores = backend.infer(crops)
        parts = np.concatenate([backend.infer(crops[:7]), backend.infer(crops[7:])])
    np.testing.assert_allclose(scores, cpu_scores, atol=1e-3, rtol=0)
    np.testing.assert_allclose(parts, scores, atol=1e-5, rtol=0)


def test_amp_training_on_cuda_learns(tmp_path):
    from loda.data.datasets import read_dataset
    from loda.data.demo import make_demo_set
    from loda.model import create_model
    from loda.train.trainer import TrainConfig, train

    csv = make_demo_set(tmp_path / "data", seed=0, references=["astronaut", "coffee", "chelsea"])
    samples = read_dataset("csv", csv).samples
    torch.manual_seed(0)
    cfg = TrainConfig(
        epochs=3, batch_size=32, lr=1e-3, crops_per_image=2, train_backbones="all", seed=1,
        device="cuda", amp=True,
    )  # fmt: skip
    result = train(create_model("loda_micro"), samples, tmp_path / "run", cfg, progress=False)
    assert next(result.model.parameters()).device.type == "cuda"
    assert np.all(np.isfinite(result.losses)) and result.losses[-1] < result.losses[0]
