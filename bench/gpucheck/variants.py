"""How the eager torch model runs (precision variants) and how a forward pass is timed."""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import r


@dataclass(frozen=True)
class Variant:
    """How the model runs: dtype, autocast or cast weights, TF32, channels-last, cuDNN autotune,
    and whether the timed region includes the uint8 host->device copy and normalisation."""

    name: str
    dtype: str  # fp32 | fp16 | bf16
    mode: str  # "fp32": plain float32 | "autocast" | "cast": model and input cast to dtype
    tf32: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = True
    end_to_end: bool = False
    cuda_only: bool = False
    note: str = ""

    @property
    def precision_key(self) -> str:
        """Variants that compute the same numbers share a key (parity is judged per key)."""
        if self.mode == "fp32":
            return "fp32_tf32" if self.tf32 else "fp32"
        return f"{self.dtype}_{self.mode}"


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "fp32", "fp32", note="strict FP32 (TF32 off): the reference"),
        Variant("fp32_tf32", "fp32", "fp32", tf32=True, cuda_only=True, note="TF32 matmul+conv"),
        Variant("fp16_autocast", "fp16", "autocast"),
        Variant("bf16_autocast", "bf16", "autocast"),
        Variant("fp16_cast", "fp16", "cast", note="model.half(), half input"),
        Variant("bf16_cast", "bf16", "cast", note="model.bfloat16(), bf16 input"),
        Variant("fp16_autocast_cl", "fp16", "autocast", channels_last=True),
        Variant("fp16_cast_cl", "fp16", "cast", channels_last=True),
        Variant("fp16_autocast_nobench", "fp16", "autocast", cudnn_benchmark=False),
        Variant(
            "fp16_autocast_e2e",
            "fp16",
            "autocast",
            end_to_end=True,
            note="timed from pinned uint8 NHWC crops on the host: copy, normalise "
            "(loda.export.onnx.ExportWrapper), forward",
        ),
    )
}
# The settings loda.runtime's torch backend has today (precision fp32 | fp16 | bf16 autocast).
RUNTIME_VARIANTS = ("fp32", "fp32_tf32", "fp16_autocast", "bf16_autocast")
PARITY_KEYS = ("fp32", "fp32_tf32", "fp16_autocast", "bf16_autocast", "fp16_cast", "bf16_cast")


def torch_dtype(torch: Any, name: str) -> Any:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


@contextlib.contextmanager
def backend_flags(torch: Any, *, tf32: bool, cudnn_benchmark: bool) -> Iterator[None]:
    """Set TF32 (legacy flags only: mixing them with the new fp32_precision API raises in
    torch >= 2.9) and cudnn.benchmark, then restore them."""
    import warnings

    cuda = torch.cuda.is_available()
    old_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    old_tf32 = None
    if cuda:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
            torch.backends.cudnn.allow_tf32 = bool(tf32)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old_bench
        if old_tf32 is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32


class Runner:
    """A model prepared for one variant: ``forward(x)`` takes float32 normalised NCHW crops on
    the device (or pinned uint8 NHWC crops on the host for end-to-end variants, normalised on
    the device by the package's :class:`~loda.export.onnx.ExportWrapper`) and returns float32
    per-crop scores."""

    def __init__(self, torch: Any, base: Any, variant: Variant, device: Any, *, cache=True):
        self.torch = torch
        self.variant = variant
        self.device = device
        model = base
        if variant.mode == "cast" or variant.channels_last:
            model = copy.deepcopy(base)
        if variant.mode == "cast":
            model = model.to(torch_dtype(torch, variant.dtype))
        if variant.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        self.autocast_cache = cache
        self.wrapper = None
        if variant.end_to_end:
            from loda.export.onnx import ExportWrapper
            from loda.preprocess import PreprocessConfig

            self.wrapper = ExportWrapper(self.model, PreprocessConfig()).to(device).eval()

    def flags(self) -> contextlib.AbstractContextManager:
        return backend_flags(
            self.torch, tf32=self.variant.tf32, cudnn_benchmark=self.variant.cudnn_benchmark
        )

    def prepare(self, x: Any) -> Any:
        """float32 NCHW on the device -> this variant's input tensor."""
        torch = self.torch
        if self.variant.mode == "cast":
            x = x.to(torch_dtype(torch, self.variant.dtype))
        if self.variant.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.variant.mode != "autocast":
            return contextlib.nullcontext()
        return self.torch.autocast(
            device_type=self.device.type,
            dtype=torch_dtype(self.torch, self.variant.dtype),
            cache_enabled=self.autocast_cache,
        )

    def forward(self, x: Any) -> Any:
        with self.autocast():
            if self.wrapper is not None:  # pinned uint8 NHWC on the host
                return self.wrapper(x.to(self.device, non_blocking=True)).float()
            return self.model.score(x).float()

    def scores(self, x_all: Any, batch: int) -> np.ndarray:
        out = []
        with self.torch.inference_mode(), self.flags():
            for start in range(0, x_all.shape[0], batch):
                out.append(self.forward(self.prepare(x_all[start : start + batch])))
        return self.torch.cat(out).double().cpu().numpy()


def build_model(torch: Any, config: str, device: Any, seed: int = 0) -> Any:
    """Random-init LoDa (no weights read, no network), seeded; learner scale factors ~ N(0, 0.5)
    so the adapters change the scores (random init gives ~0.02, as tests/conftest.perturb)."""
    from loda.model import create_model

    torch.manual_seed(seed)
    model = create_model(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sf = model.learner.scale_factor
        sf.copy_(torch.randn(sf.shape, generator=g) * 0.5)
    return model.eval().to(device)


def sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_blocks(
    torch: Any, device: Any, fn: Callable[[], Any], *, n_items: int, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Warm up, size a block of iterations to ~cfg['block_s'], time blocks until
    cfg['min_blocks'] and cfg['min_time_s'] are met (or cfg['max_time_s'] passes); report the
    median block as items/s (wall clock after a synchronize, and CUDA-event time on CUDA)."""
    for _ in range(cfg["warmup"]):
        fn()
    sync(torch, device)
    t = time.perf_counter()
    fn()
    sync(torch, device)
    one = max(time.perf_counter() - t, 1e-6)
    iters = max(1, min(cfg["max_iters"], math.ceil(cfg["block_s"] / one)))
    cuda = device.type == "cuda"
    walls, events = [], []
    start_all = time.perf_counter()
    while len(walls) < cfg["min_blocks"] or (
        sum(walls) < cfg["min_time_s"] and time.perf_counter() - start_all < cfg["max_time_s"]
    ):
        if cuda:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        if cuda:
            e1.record()
        sync(torch, device)
        walls.append(time.perf_counter() - t)
        if cuda:
            events.append(e0.elapsed_time(e1) / 1000.0)
        if time.perf_counter() - start_all > cfg["max_time_s"]:
            break
    wall = statistics.median(walls)
    out = {
        "items_per_s": r(n_items * iters / wall, 2),
        "ms_per_batch": r(wall / iters * 1000, 4),
        "iters_per_block": iters,
        "blocks": len(walls),
        "block_spread": r((max(walls) - min(walls)) / wall, 4),
    }
    if events:
        ev = statistics.median(events)
        out["gpu_ms_per_batch"] = r(ev / iters * 1000, 4)
        out["items_per_s_gpu_events"] = r(n_items * iters / ev, 2)
    return out


def tile_batch(x_all: Any, batch: int) -> Any:
    reps = -(-batch // x_all.shape[0])
    x = x_all if reps == 1 else x_all.repeat(reps, *([1] * (x_all.dim() - 1)))
    return x[:batch].contiguous()
