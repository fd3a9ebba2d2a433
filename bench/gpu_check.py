#!/usr/bin/env python3
"""One GPU check of LoDa, written as ONE JSON report: precision parity, crops/s, decode speed.

Made for a GPU machine that holds only torch (CUDA), timm, onnx, onnxruntime (CPU), numpy and
Pillow, has no network, and where this project is NOT pip-installed: the script runs from a copy
of the source tree (repository root as the working directory) and imports ``loda`` from it
(``export/`` is mapped to ``loda.export`` by hand, as pyproject's package-dir does). It never
imports scipy, click, tqdm, safetensors, scikit-image or scikit-learn; the parity statistics
(Spearman with average ranks) are computed with numpy here.

Sections, each timed, each allowed to fail on its own (its error goes into the report and the
next section runs), the report rewritten after each one, and a global time budget (``--budget``,
default 440 s) that skips what no longer fits:

- ``env``: Python, torch/CUDA/cuDNN versions, GPU name, compute capability, memory, CPU count,
  the TF32 / cuDNN flags as torch starts, which optional packages exist.
- ``images``: the demo images (``--images DIR``, else ``out/gpu_bundle`` made by
  ``bench/gpu_bundle.sh``, else ``out/demoset``, else the demo set built by
  ``loda.demo_data`` when it can be, else procedurally generated images; the report says which).
- ``parity``: per-image scores (mean of the 15 grid crops) of every precision variant against
  strict FP32 (TF32 off): max/mean |d score|, Spearman vs FP32, SRCC vs MOS and its change
  (dSRCC). Models: ``--config`` with random-init backbones (seeded; adapters' scale factors
  enlarged so the learner matters, as in ``tests/conftest.perturb``) and, when the bundle holds
  one, the trained demo checkpoint.
- ``throughput``: crops/s per variant and batch (default 15/60/240), input already on the device,
  after warm-up; blocks of iterations timed with ``perf_counter`` after a synchronize and with
  CUDA events; median block.
- ``decode``: images/s of decode + resize + 15 crops (``loda.preprocess``), 1 core vs a process
  pool over all cores vs a thread pool.
- ``cuda_graphs``: the fastest variants replayed from a captured CUDA graph (static input).
- ``torch_compile``: ``torch.compile`` in a child process (killed when its budget ends).
- ``tensorrt``: only when ``import tensorrt`` works: ONNX export, engine build with
  ``loda.export.trt`` (or a minimal builder when that cannot be imported here), parity and
  crops/s, in a child process.
- ``recommendation``: the fastest settings whose parity is acceptable (dSRCC <= --max-dsrcc and
  Spearman vs FP32 >= --min-spearman on every model, no inf/NaN), per batch size.

``--device cpu --smoke`` runs every section on ``loda_micro`` with tiny counts (the CUDA-only
ones are recorded as ``skipped: no CUDA``), so the code paths are tested without a GPU.

Usage (repository root): ``bash bench/gpu_check.sh [--out out/gpu_check.json]``, or
``python3 bench/gpu_check.py --out out/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import importlib.util
import itertools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# Never touch the network (timm with pretrained=False does not, but be explicit).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

T0 = time.perf_counter()
FORMAT = "loda-gpu-check/1"
BUNDLE_FORMAT = "loda-gpu-bundle/1"
DEFAULT_BUNDLE = REPO / "out" / "gpu_bundle"
DEFAULT_DEMOSET = REPO / "out" / "demoset"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Packages the GPU machine is not promised to have; env lists which of them exist.
OPTIONAL_MODULES = (
    "scipy",
    "click",
    "tqdm",
    "safetensors",
    "sklearn",
    "skimage",
    "onnxscript",
    "onnxconverter_common",
    "modelopt",
    "tensorrt",
    "triton",
    "cuda",
    "polygraphy",
)
SUBPACKAGES = {"export": "loda.export", "calib": "loda.calib", "runtime": "loda.runtime"}


def log(message: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Imports from a plain source tree
# --------------------------------------------------------------------------------------------


def map_subpackage(folder: str) -> Any:
    """Import ``loda.<folder>`` from ``REPO/<folder>`` (pyproject maps export/ -> loda.export);
    a no-op when it is already imported."""
    import importlib

    import loda

    name = SUBPACKAGES[folder]
    if name in sys.modules:
        return sys.modules[name]
    init = REPO / folder / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(REPO / folder)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot map {REPO / folder} to {name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    setattr(loda, name.rsplit(".", 1)[1], module)
    importlib.invalidate_caches()
    return module


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# Statistics (numpy only)
# --------------------------------------------------------------------------------------------


def average_ranks(values: Any) -> np.ndarray:
    """Ranks 1..n, ties get their average rank (as scipy.stats.rankdata's default)."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: Any, b: Any) -> float | None:
    """Spearman's rho with average ranks; None when undefined (n < 3 or a constant input)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or len(a) < 3 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def image_means(crop_scores: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Per-image mean of per-crop scores; image i owns crops bounds[i]:bounds[i + 1]."""
    return np.array([crop_scores[a:b].mean() for a, b in itertools.pairwise(bounds)])


def clean_json(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to None, paths to str."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, np.generic):
        return clean_json(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean_json(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


# --------------------------------------------------------------------------------------------
# Report and budget
# --------------------------------------------------------------------------------------------


class Skip(Exception):
    """A section (or part) that cannot run here; the message is the reason."""


class Report:
    def __init__(self, path: Path, budget_s: float, args: argparse.Namespace) -> None:
        self.path = path
        self.budget_s = budget_s
        self.data: dict[str, Any] = {
            "format": FORMAT,
            "started": now_utc(),
            "finished": None,
            "complete": False,
            "command": [sys.executable, *sys.argv],
            "cwd": os.getcwd(),
            "smoke": bool(args.smoke),
            "budget_s": budget_s,
            "elapsed_s": 0.0,
            "settings": {},
            "sections": {},
            "errors": [],
        }

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - T0)

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - T0, 2)
        write_json(self.path, self.data)

    def section(
        self, name: str, fn: Callable[[], dict[str, Any]], *, needs_s: float = 0.0
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {"status": "running (if this stays, the run was killed here)"}
        self.data["sections"][name] = entry
        if needs_s and self.left() < needs_s:
            entry.update(
                status=f"skipped: time budget ({self.left():.0f} s left, needs ~{needs_s:.0f} s)",
                seconds=0.0,
            )
            self.write()
            return entry
        self.write()
        log(f"section {name} ({self.left():.0f} s of budget left)")
        start = time.perf_counter()
        try:
            result = fn() or {}
            entry.clear()
            entry["status"] = result.pop("status", "ok")
            entry.update(result)
        except Skip as exc:
            entry.clear()
            entry["status"] = f"skipped: {exc}"
        except Exception as exc:
            entry.clear()
            entry["status"] = "error"
            entry["error"] = first_line(exc)
            entry["traceback"] = traceback.format_exc()[-3000:]
            self.data["errors"].append(f"{name}: {first_line(exc)}")
            log(f"section {name} failed: {first_line(exc)}")
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.write()
        return entry


# --------------------------------------------------------------------------------------------
# Precision variants
# --------------------------------------------------------------------------------------------


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
            note="timed from pinned uint8 NHWC crops on the host: copy, normalise, forward",
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
    the device (or pinned uint8 NHWC crops on the host for end-to-end variants) and returns
    float32 per-crop scores."""

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
        from loda.preprocess import DEFAULT_CONFIG

        mean = torch.tensor(DEFAULT_CONFIG.mean, dtype=torch.float32, device=device)
        std = torch.tensor(DEFAULT_CONFIG.std, dtype=torch.float32, device=device)
        self.mean, self.std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)

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
        if self.variant.end_to_end:  # pinned uint8 NHWC on the host
            x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            x = ((x / 255.0 - self.mean) / self.std).contiguous()
            x = self.prepare(x)
        with self.autocast():
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
    from loda.config import get_config
    from loda.model import LoDa

    torch.manual_seed(seed)
    model = LoDa(get_config(config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sf = model.learner.scale_factor
        sf.copy_(torch.randn(sf.shape, generator=g) * 0.5)
    return model.eval().to(device)


def load_bundled_model(torch: Any, bundle: Path, record: dict[str, Any], device: Any) -> Any:
    from loda.config import LoDaConfig
    from loda.model import LoDa

    state = torch.load(bundle / record["file"], map_location="cpu", weights_only=True)
    model = LoDa(LoDaConfig.from_dict(record["config"]))
    model.load_state_dict(state, strict=True)
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


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass
class ImageSet:
    source: str  # "bundle" | "demoset" | "demoset-built" | "folder" | "generated"
    detail: str
    paths: list[Path]
    mos: list[float | None]
    refs: list[str | None]
    root: Path | None = None  # the bundle directory when source == "bundle"


def spread_indices(total: int, n: int) -> list[int]:
    if n >= total:
        return list(range(total))
    return sorted({round(float(i)) for i in np.linspace(0, total - 1, n)})


def images_from_csv(csv_path: Path, n: int) -> tuple[list[Path], list[float | None], list]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise ValueError(f"{csv_path} has no 'path' column")
    rows = [rows[i] for i in spread_indices(len(rows), n)]
    paths = [csv_path.parent / row["path"] for row in rows]
    mos = [float(row["mos"]) if row.get("mos") not in (None, "") else None for row in rows]
    refs = [row.get("ref") or None for row in rows]
    return paths, mos, refs


def images_from_bundle(bundle: Path, n: int) -> ImageSet:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{bundle}/manifest.json is not a {BUNDLE_FORMAT} manifest")
    entries = manifest["images"]
    entries = [entries[i] for i in spread_indices(len(entries), n)]
    paths = [bundle / e["file"] for e in entries]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"bundle files missing: {', '.join(missing[:3])}")
    return ImageSet(
        "bundle",
        f"{bundle} ({manifest.get('selection', '')}; from {manifest.get('source', '?')})",
        paths,
        [e.get("mos") for e in entries],
        [e.get("ref") for e in entries],
        root=bundle,
    )


def generate_images(out_dir: Path, n: int, seed: int = 0) -> ImageSet:
    """Procedural stand-ins (:mod:`loda.generated`). Never used silently: the report says
    'generated'."""
    from loda.generated import DESCRIPTION
    from loda.generated import generate_images as generate

    paths = generate(out_dir, n, seed)
    return ImageSet("generated", f"{n} {DESCRIPTION} in {out_dir}", paths, [None] * n, [None] * n)


def find_images(args: argparse.Namespace, report: Report, tmp: Path) -> tuple[ImageSet, list]:
    """The image set, and notes on what was tried before it."""
    notes: list[str] = []
    n = args.n_images
    if args.images:
        folder = Path(args.images)
        if (folder / "manifest.json").is_file():
            return images_from_bundle(folder, n), notes
        if (folder / "demo.csv").is_file():
            paths, mos, refs = images_from_csv(folder / "demo.csv", n)
            return ImageSet("demoset", str(folder), paths, mos, refs), notes
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                files = [files[i] for i in spread_indices(len(files), n)]
                return ImageSet(
                    "folder", str(folder), files, [None] * len(files), [None] * len(files)
                ), notes
        raise ValueError(f"--images {folder}: no manifest.json, demo.csv or image files")
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        try:
            return images_from_bundle(DEFAULT_BUNDLE, n), notes
        except Exception as exc:
            notes.append(f"bundle {DEFAULT_BUNDLE} unusable: {first_line(exc)}")
    else:
        notes.append(f"no bundle at {DEFAULT_BUNDLE} (make it with bench/gpu_bundle.sh)")
    if (DEFAULT_DEMOSET / "demo.csv").is_file():
        try:
            paths, mos, refs = images_from_csv(DEFAULT_DEMOSET / "demo.csv", n)
            if all(p.is_file() for p in paths):
                return ImageSet("demoset", str(DEFAULT_DEMOSET), paths, mos, refs), notes
            notes.append(f"demo set {DEFAULT_DEMOSET} has missing files")
        except Exception as exc:
            notes.append(f"demo set {DEFAULT_DEMOSET} unusable: {first_line(exc)}")
    else:
        notes.append(f"no demo set at {DEFAULT_DEMOSET}")
    if args.smoke:
        notes.append("smoke mode does not build the demo set (30-40 s)")
    elif report.left() < 300:
        notes.append("not enough budget left to build the demo set")
    else:
        missing = [m for m in ("scipy", "skimage", "sklearn") if not module_available(m)]
        if missing:
            notes.append(
                f"loda.demo_data cannot build the demo set here ({', '.join(missing)} missing)"
            )
        else:
            try:
                from loda.demo_data import make_demo_set

                log("building the demo set (30-40 s)")
                csv_path = make_demo_set(tmp / "demoset", seed=0)
                paths, mos, refs = images_from_csv(Path(csv_path), n)
                return ImageSet("demoset-built", str(csv_path), paths, mos, refs), notes
            except Exception as exc:
                notes.append(f"building the demo set failed: {first_line(exc)}")
    return generate_images(tmp / "generated", n), notes


# --------------------------------------------------------------------------------------------
# Decode worker (top level: pickled into spawned processes)
# --------------------------------------------------------------------------------------------


def decode_one(path: str) -> int:
    from loda.preprocess import preprocess_image

    return int(preprocess_image(path).shape[0])


def _noop(_: Any) -> int:
    return os.getpid()


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


class Check:
    def __init__(self, args: argparse.Namespace, report: Report, tmp: Path) -> None:
        self.args = args
        self.report = report
        self.tmp = tmp
        self.torch: Any = None
        self.device: Any = None
        self.images: ImageSet | None = None
        self.crops: np.ndarray | None = None  # uint8 [n_images * 15, 224, 224, 3]
        self.crops_per_image: list[int] = []
        self.models: dict[str, Any] = {}  # label -> model on the device
        self.bundle_checkpoint: dict[str, Any] | None = None
        self.bundle_dir: Path | None = None
        self.acceptable: dict[str, bool] = {}  # precision_key -> acceptable on every model
        self.throughput: dict[str, dict[int, dict[str, Any]]] = {}
        self.extra_entries: list[dict[str, Any]] = []  # cuda graphs, compile, tensorrt
        self.timing = (
            dict(warmup=0, block_s=0.0, max_iters=1, min_blocks=1, min_time_s=0.0, max_time_s=1.0)
            if args.smoke
            else dict(
                warmup=3, block_s=0.25, max_iters=200, min_blocks=3, min_time_s=0.9, max_time_s=3.0
            )
        )

    @property
    def cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def need_cuda(self) -> None:
        if not self.cuda:
            raise Skip("no CUDA")

    # -- env -------------------------------------------------------------------------------
    def env(self) -> dict[str, Any]:
        import torch

        import loda

        self.torch = torch
        want = self.args.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
        self.device = torch.device(want)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count()
        out: dict[str, Any] = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cpu_affinity": cores,
            "device": str(self.device),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available()
            else None,
            "torch_threads": torch.get_num_threads(),
            "versions": {
                p: package_version(p)
                for p in (
                    "timm",
                    "onnx",
                    "onnxruntime",
                    "onnxruntime-gpu",
                    "numpy",
                    "pillow",
                    "onnxscript",
                    "tensorrt",
                    "triton",
                    "pytorch-triton",
                )
            },
            "optional_modules": {m: module_available(m) for m in OPTIONAL_MODULES},
            "loda_imported_from": str(Path(loda.__file__).parent),
            "loda_from_this_tree": Path(loda.__file__).resolve().parent == REPO / "loda",
        }
        import timm
        from timm.layers import use_fused_attn

        out["timm_fused_attn"] = bool(use_fused_attn())
        out["timm"] = timm.__version__
        flags: dict[str, Any] = {"cudnn.benchmark": torch.backends.cudnn.benchmark}
        if torch.cuda.is_available():
            for label, getter in (
                ("cuda.matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
                ("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
                (
                    "cuda.matmul.allow_fp16_reduced_precision_reduction",
                    lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
                ),
                ("float32_matmul_precision", torch.get_float32_matmul_precision),
                ("flash_sdp", torch.backends.cuda.flash_sdp_enabled),
                ("mem_efficient_sdp", torch.backends.cuda.mem_efficient_sdp_enabled),
                ("cudnn_sdp", lambda: torch.backends.cuda.cudnn_sdp_enabled()),
            ):
                try:
                    flags[label] = getter()
                except Exception as exc:
                    flags[label] = f"unreadable: {first_line(exc)}"
            props = torch.cuda.get_device_properties(self.device)
            out["gpu"] = {
                "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "total_memory_gib": r(props.total_memory / 2**30, 2),
                "multiprocessors": props.multi_processor_count,
                "device_count": torch.cuda.device_count(),
            }
            try:
                smi = subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-gpu=name,driver_version,clocks.max.sm,power.limit,"
                        "memory.total,temperature.gpu,utilization.gpu",
                        "--format=csv",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=15,
                    check=False,
                )
                out["nvidia_smi"] = (smi.stdout or smi.stderr).strip()[:1000]
            except Exception as exc:
                out["nvidia_smi"] = f"unavailable: {first_line(exc)}"
        out["initial_flags"] = flags
        return out

    # -- images ----------------------------------------------------------------------------
    def load_images(self) -> dict[str, Any]:
        from loda.preprocess import PreprocessConfig, preprocess_image

        images, notes = find_images(self.args, self.report, self.tmp)
        self.images = images
        if images.source == "bundle":
            self.bundle_dir = images.root
            manifest = json.loads((self.bundle_dir / "manifest.json").read_text(encoding="utf-8"))
            self.bundle_checkpoint = manifest.get("checkpoint")
        pre = PreprocessConfig(num_crops=self.args.crops_per_image)
        crops = [preprocess_image(p, pre) for p in images.paths]
        self.crops_per_image = [len(c) for c in crops]
        self.crops = np.ascontiguousarray(np.concatenate(crops))
        known_mos = [m for m in images.mos if m is not None]
        return {
            "source": images.source,
            "detail": images.detail,
            "fallback_notes": notes,
            "generated": images.source == "generated",
            "n_images": len(images.paths),
            "n_crops": len(self.crops),
            "crops_per_image": self.args.crops_per_image,
            "with_mos": len(known_mos),
            "mos_range": [min(known_mos), max(known_mos)] if known_mos else None,
            "refs": sorted({x for x in images.refs if x}),
            "bytes": sum(p.stat().st_size for p in images.paths),
            "bundle_checkpoint": None
            if not self.bundle_checkpoint
            else {k: v for k, v in self.bundle_checkpoint.items() if k != "config"},
        }

    def device_crops(self) -> Any:
        from loda.preprocess import normalize

        torch = self.torch
        if self.crops is None:
            raise Skip("no images (the images section failed)")
        return torch.from_numpy(normalize(self.crops)).to(self.device)

    def main_model(self) -> Any:
        label = f"{self.args.config} (random init)"
        if label not in self.models:
            self.models[label] = build_model(
                self.torch, self.args.config, self.device, self.args.seed
            )
        return self.models[label]

    # -- parity ----------------------------------------------------------------------------
    def parity(self) -> dict[str, Any]:
        torch = self.torch
        x_all = self.device_crops()
        models: list[tuple[str, Any]] = [(f"{self.args.config} (random init)", self.main_model())]
        notes = []
        if self.bundle_checkpoint:
            try:
                trained = load_bundled_model(
                    torch, self.bundle_dir, self.bundle_checkpoint, self.device
                )
                models.append(
                    (f"{self.bundle_checkpoint['config']['name']} (trained, bundled)", trained)
                )
            except Exception as exc:
                notes.append(f"bundled checkpoint not loaded: {first_line(exc)}")
        mos = None
        if self.images and all(m is not None for m in self.images.mos):
            mos = np.asarray(self.images.mos, dtype=np.float64)
        bounds = np.cumsum([0, *self.crops_per_image])
        per_model: dict[str, Any] = {}
        accept: dict[str, bool] = {}
        for label, model in models:
            results: dict[str, Any] = {}
            ref_img = None
            ref_crops = None
            srcc_ref = None
            for key in PARITY_KEYS:
                variant = VARIANTS[key]
                if variant.cuda_only and not self.cuda:
                    results[key] = {"status": "skipped: no CUDA"}
                    continue
                if self.report.left() < 10:
                    results[key] = {"status": "skipped: time budget"}
                    continue
                try:
                    runner = Runner(torch, model, variant, self.device)
                    crop_scores = runner.scores(x_all, self.args.parity_batch)
                    del runner
                except Exception as exc:
                    results[key] = {"status": "error", "error": first_line(exc)}
                    continue
                img = image_means(crop_scores, bounds)
                entry: dict[str, Any] = {
                    "status": "ok",
                    "nonfinite_crops": int((~np.isfinite(crop_scores)).sum()),
                    "image_score_mean": r(float(np.mean(img))),
                    "image_score_std": r(float(np.std(img))),
                }
                srcc = spearman(img, mos) if mos is not None else None
                entry["srcc_vs_mos"] = r(srcc)
                if key == "fp32":
                    ref_img, ref_crops, srcc_ref = img, crop_scores, srcc
                elif ref_img is not None:
                    d_img = np.abs(img - ref_img)
                    d_crop = np.abs(crop_scores - ref_crops)
                    entry.update(
                        max_abs_d_image=r(float(d_img.max()), 8),
                        mean_abs_d_image=r(float(d_img.mean()), 8),
                        max_abs_d_crop=r(float(d_crop.max()), 8),
                        mean_abs_d_crop=r(float(d_crop.mean()), 8),
                        max_d_over_image_std=r(float(d_img.max() / max(np.std(ref_img), 1e-12)), 6),
                        spearman_vs_fp32=r(spearman(img, ref_img)),
                        dsrcc=r(None if srcc is None or srcc_ref is None else srcc - srcc_ref, 6),
                    )
                    entry["acceptable"], entry["why"] = self.judge(entry)
                    accept[key] = accept.get(key, True) and entry["acceptable"]
                results[key] = entry
            per_model[label] = {"variants": results}
        accept["fp32"] = True
        self.acceptable = accept
        if self.cuda:
            torch.cuda.empty_cache()
        return {
            "n_images": len(self.crops_per_image),
            "n_crops": int(bounds[-1]),
            "image_score": f"mean of the image's {self.args.crops_per_image} grid crops",
            "reference": "fp32 with TF32 off (matmul and cuDNN)",
            "thresholds": {
                "max_abs_dsrcc": self.args.max_dsrcc,
                "min_spearman_vs_fp32": self.args.min_spearman,
            },
            "models": per_model,
            "acceptable": accept,
            "notes": notes
            + (
                ["no MOS for these images: dSRCC not computed, only Spearman vs fp32"]
                if mos is None
                else []
            ),
        }

    def judge(self, e: dict[str, Any]) -> tuple[bool, str]:
        if e["nonfinite_crops"]:
            return False, f"{e['nonfinite_crops']} non-finite crop scores"
        rho = e.get("spearman_vs_fp32")
        if rho is not None and rho < self.args.min_spearman:
            return False, f"Spearman vs fp32 {rho:.5f} < {self.args.min_spearman}"
        d = e.get("dsrcc")
        if d is not None and abs(d) > self.args.max_dsrcc:
            return False, f"|dSRCC| {abs(d):.5f} > {self.args.max_dsrcc}"
        return True, "within thresholds"

    # -- throughput ------------------------------------------------------------------------
    def run_throughput(self) -> dict[str, Any]:
        torch = self.torch
        x_all = self.device_crops()
        model = self.main_model()
        batches = self.args.batches
        table: dict[str, Any] = {}
        for name, variant in VARIANTS.items():
            rows: dict[str, Any] = {}
            table[name] = {"note": variant.note, "batches": rows}
            if variant.cuda_only and not self.cuda:
                table[name]["status"] = "skipped: no CUDA"
                continue
            try:
                runner = Runner(torch, model, variant, self.device)
            except Exception as exc:
                table[name]["status"] = f"error: {first_line(exc)}"
                continue
            for b in batches:
                if self.report.left() < (6 if self.cuda else 2):
                    rows[str(b)] = {"status": "skipped: time budget"}
                    continue
                try:
                    rows[str(b)] = self.measure(runner, x_all, b)
                    self.throughput.setdefault(name, {})[b] = rows[str(b)]
                except Exception as exc:
                    rows[str(b)] = {"status": "error", "error": first_line(exc)}
                    if self.cuda:
                        torch.cuda.empty_cache()
            table[name]["status"] = "ok"
            del runner
            if self.cuda:
                torch.cuda.empty_cache()
        base = self.throughput.get("fp32", {})
        for rows in self.throughput.values():
            for b, row in rows.items():
                if b in base and base[b].get("items_per_s"):
                    row["speedup_vs_fp32"] = r(row["items_per_s"] / base[b]["items_per_s"], 3)
        self.report.write()
        return {
            "model": f"{self.args.config} (random init)",
            "unit": "crops/s (items_per_s); input already on the device as float32 NCHW unless end_to_end",
            "timing": self.timing,
            "variants": table,
        }

    def measure(self, runner: Runner, x_all: Any, batch: int) -> dict[str, Any]:
        torch = self.torch
        if runner.variant.end_to_end:
            host = torch.from_numpy(self.crops)
            host = tile_batch(host, batch)
            x = host.pin_memory() if self.cuda else host
        else:
            x = runner.prepare(tile_batch(x_all, batch))
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        with torch.inference_mode(), runner.flags():
            row = time_blocks(
                torch, self.device, lambda: runner.forward(x), n_items=batch, cfg=self.timing
            )
        row["status"] = "ok"
        if self.cuda:
            row["peak_mem_mib"] = r(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return row

    # -- decode ----------------------------------------------------------------------------
    def decode(self) -> dict[str, Any]:
        import multiprocessing as mp
        from concurrent.futures import ThreadPoolExecutor

        from loda.preprocess import normalize, preprocess_image

        if not self.images or not self.images.paths:
            raise Skip("no images")
        paths = [str(p) for p in self.images.paths]
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        smoke = self.args.smoke
        out: dict[str, Any] = {
            "pipeline": "loda.preprocess.preprocess_image: decode + resize (short side 384, "
            "bicubic) + 15 grid crops (uint8)",
            "cores": cores,
            "image_bytes_mean": int(np.mean([os.path.getsize(p) for p in paths])),
        }
        decode_one(paths[0])  # warm the imports
        serial_list = paths * (1 if smoke else 2)
        t = time.perf_counter()
        n_crops = sum(decode_one(p) for p in serial_list)
        dt = time.perf_counter() - t
        out["one_core"] = {
            "images": len(serial_list),
            "images_per_s": r(len(serial_list) / dt, 2),
            "crops_per_s": r(n_crops / dt, 1),
        }
        crops = preprocess_image(paths[0])
        t = time.perf_counter()
        reps = 3 if smoke else 50
        for _ in range(reps):
            normalize(crops)
        out["normalize_15_crops_ms_one_core"] = r((time.perf_counter() - t) / reps * 1000, 3)
        target = 2 * cores if smoke else max(8 * cores, 4 * len(paths))
        par_list = (paths * -(-target // len(paths)))[:target]
        chunk = max(1, len(par_list) // (4 * cores))
        try:
            ctx = mp.get_context("spawn")
            t = time.perf_counter()
            with ctx.Pool(cores) as pool:
                pool.map(_noop, range(cores))
                start_s = time.perf_counter() - t
                pool.map(decode_one, paths[: min(len(paths), cores)], chunksize=1)  # imports
                t = time.perf_counter()
                n_crops = sum(pool.map(decode_one, par_list, chunksize=chunk))
                dt = time.perf_counter() - t
            out["process_pool"] = {
                "processes": cores,
                "start": "spawn",
                "pool_start_s": r(start_s, 3),
                "images": len(par_list),
                "images_per_s": r(len(par_list) / dt, 2),
                "crops_per_s": r(n_crops / dt, 1),
                "speedup_vs_one_core": r(len(par_list) / dt / out["one_core"]["images_per_s"], 2),
            }
        except Exception as exc:
            out["process_pool"] = {"status": "error", "error": first_line(exc)}
        try:
            with ThreadPoolExecutor(cores) as ex:
                list(ex.map(decode_one, paths[: min(len(paths), cores)]))
                t = time.perf_counter()
                n_crops = sum(ex.map(decode_one, par_list))
                dt = time.perf_counter() - t
            out["thread_pool"] = {
                "threads": cores,
                "images": len(par_list),
                "images_per_s": r(len(par_list) / dt, 2),
                "crops_per_s": r(n_crops / dt, 1),
                "speedup_vs_one_core": r(len(par_list) / dt / out["one_core"]["images_per_s"], 2),
            }
        except Exception as exc:
            out["thread_pool"] = {"status": "error", "error": first_line(exc)}
        return out

    # -- CUDA graphs -----------------------------------------------------------------------
    def graph_candidates(self) -> list[str]:
        """fp32_tf32 plus the two fastest acceptable non-fp32 eager variants (largest batch)."""
        big = max(self.args.batches)
        ranked = sorted(
            (
                (rows[big]["items_per_s"], name)
                for name, rows in self.throughput.items()
                if big in rows
                and rows[big].get("items_per_s")
                and VARIANTS[name].mode != "fp32"
                and not VARIANTS[name].end_to_end
                and self.acceptable.get(VARIANTS[name].precision_key, False)
            ),
            reverse=True,
        )
        names = [n for _, n in ranked[:2]] or ["fp16_autocast"]
        return ["fp32_tf32", *[n for n in names if n != "fp32_tf32"]]

    def cuda_graphs(self) -> dict[str, Any]:
        self.need_cuda()
        torch = self.torch
        x_all = self.device_crops()
        model = self.main_model()
        out: dict[str, Any] = {"variants": {}}
        for name in self.graph_candidates():
            variant = VARIANTS[name]
            rows: dict[str, Any] = {}
            out["variants"][name] = rows
            # The autocast cache must be off under capture: cached casts would be freed when
            # the autocast context closes, while the graph keeps pointing at them.
            runner = Runner(torch, model, variant, self.device, cache=False)
            for b in self.args.batches:
                if self.report.left() < 10:
                    rows[str(b)] = {"status": "skipped: time budget"}
                    continue
                graph = static_x = static_out = None
                try:
                    real = tile_batch(x_all, b)
                    static_x = runner.prepare(real).clone()
                    with torch.inference_mode(), runner.flags():
                        eager = runner.forward(static_x).clone()
                        stream = torch.cuda.Stream()
                        stream.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(stream):
                            for _ in range(3):
                                runner.forward(static_x)
                        torch.cuda.current_stream().wait_stream(stream)
                        graph = torch.cuda.CUDAGraph()
                        t = time.perf_counter()
                        with torch.cuda.graph(graph):
                            static_out = runner.forward(static_x)
                        capture_s = time.perf_counter() - t
                        graph.replay()
                        torch.cuda.synchronize()
                        max_d = float((static_out - eager).abs().max())
                        torch.cuda.reset_peak_memory_stats(self.device)
                        row = time_blocks(
                            torch, self.device, graph.replay, n_items=b, cfg=self.timing
                        )
                    row.update(
                        status="ok",
                        capture_s=r(capture_s, 3),
                        max_abs_d_vs_eager=r(max_d, 8),
                        peak_mem_mib=r(torch.cuda.max_memory_allocated(self.device) / 2**20, 1),
                    )
                    eager_row = self.throughput.get(name, {}).get(b)
                    if eager_row and eager_row.get("items_per_s"):
                        row["speedup_vs_eager"] = r(
                            row["items_per_s"] / eager_row["items_per_s"], 3
                        )
                    fp32_row = self.throughput.get("fp32", {}).get(b)
                    if fp32_row and fp32_row.get("items_per_s"):
                        row["speedup_vs_fp32"] = r(row["items_per_s"] / fp32_row["items_per_s"], 3)
                    rows[str(b)] = row
                    self.extra_entries.append(
                        {"kind": "cuda_graph", "variant": name, "batch": b, **row}
                    )
                except Exception as exc:
                    rows[str(b)] = {"status": "error", "error": first_line(exc)}
                finally:
                    del graph, static_x, static_out
                    with contextlib.suppress(Exception):  # a failed capture may poison these
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                self.report.write()
            del runner
        return out

    # -- child processes (torch.compile, TensorRT) -----------------------------------------
    def save_worker_crops(self) -> Path:
        path = self.tmp / "crops.npy"
        if not path.exists():
            np.save(path, self.crops)
        return path

    def run_worker(self, kind: str, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        spec_path = self.tmp / f"{kind}.spec.json"
        out_path = self.tmp / f"{kind}.out.json"
        err_path = self.tmp / f"{kind}.stderr.txt"
        write_json(spec_path, spec)
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            kind,
            "--worker-spec",
            str(spec_path),
            "--worker-out",
            str(out_path),
        ]
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(
                cmd, stdout=err, stderr=subprocess.STDOUT, start_new_session=True
            )
            killed = False
            try:
                rc = proc.wait(timeout=max(1.0, timeout_s))
            except subprocess.TimeoutExpired:
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait()
        result: dict[str, Any] = {}
        if out_path.is_file():
            try:
                result = json.loads(out_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                result = {"status": "error", "error": f"worker wrote bad JSON: {exc}"}
        tail = err_path.read_bytes()[-2500:].decode("utf-8", "replace") if err_path.exists() else ""
        result["worker"] = {
            "returncode": rc,
            "killed_at_timeout_s": r(timeout_s, 1) if killed else None,
            "log_tail": tail,
        }
        if killed:
            result["status"] = f"partial: killed after {timeout_s:.0f} s (time budget)"
        elif rc != 0 and result.get("status", "ok") in ("ok", "running"):
            result["status"] = f"error: worker exited with {rc}"
        return result

    def torch_compile(self) -> dict[str, Any]:
        left = self.report.left()
        trt_reserve = self.args.trt_reserve if (self.cuda and module_available("tensorrt")) else 0
        timeout_s = min(self.args.compile_max_s, left - trt_reserve - 10)
        if not self.cuda:
            if not (self.args.smoke and self.args.smoke_workers):
                raise Skip("no CUDA")
            spec = self.worker_spec(
                variant="fp16_autocast", backend="eager", mode=None, batches=self.args.batches[:1]
            )
            plumbing = self.run_worker("compile", spec, max(30.0, min(90.0, left - 5)))
            return {
                "status": "skipped: no CUDA (plumbing checked with backend='eager' on the CPU)",
                "plumbing_check": plumbing,
            }
        if timeout_s < 60:
            raise Skip(f"time budget ({left:.0f} s left, TensorRT reserve {trt_reserve} s)")
        if not (module_available("triton") or self.args.compile_backend != "inductor"):
            raise Skip("triton is not installed (inductor needs it on CUDA)")
        candidates = [n for n in self.graph_candidates() if n != "fp32_tf32"]
        variant = candidates[0] if candidates else "fp16_autocast"
        spec = self.worker_spec(
            variant=variant,
            backend=self.args.compile_backend,
            mode=self.args.compile_mode,
            batches=sorted(self.args.batches, reverse=True),
        )
        result = self.run_worker("compile", spec, timeout_s)
        for b, row in (result.get("batches") or {}).items():
            if isinstance(row, dict) and row.get("items_per_s"):
                fp32_row = self.throughput.get("fp32", {}).get(int(b))
                if fp32_row and fp32_row.get("items_per_s"):
                    row["speedup_vs_fp32"] = r(row["items_per_s"] / fp32_row["items_per_s"], 3)
                self.extra_entries.append(
                    {"kind": "torch_compile", "variant": variant, "batch": int(b), **row}
                )
        return result

    def worker_spec(self, **extra: Any) -> dict[str, Any]:
        return {
            "config": self.args.config,
            "seed": self.args.seed,
            "device": str(self.device),
            "crops": str(self.save_worker_crops()),
            "crops_per_image": self.crops_per_image,
            "timing": self.timing,
            "parity_batch": self.args.parity_batch,
            "smoke": self.args.smoke,
            **extra,
        }

    def tensorrt(self) -> dict[str, Any]:
        self.need_cuda()
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:
            raise Skip(f"tensorrt not importable ({first_line(exc)})") from None
        left = self.report.left()
        if left < 90:
            raise Skip(f"time budget ({left:.0f} s left)")
        spec = self.worker_spec(batches=self.args.batches, opt_level=self.args.trt_opt_level)
        result = self.run_worker("tensorrt", spec, left - 8)
        for entry in (result.get("engines") or {}).values():
            for b, row in (entry.get("batches") or {}).items():
                if isinstance(row, dict) and row.get("items_per_s"):
                    fp32_row = self.throughput.get("fp32", {}).get(int(b))
                    if fp32_row and fp32_row.get("items_per_s"):
                        row["speedup_vs_torch_fp32"] = r(
                            row["items_per_s"] / fp32_row["items_per_s"], 3
                        )
        return result

    # -- recommendation --------------------------------------------------------------------
    def recommendation(self) -> dict[str, Any]:
        if not self.throughput:
            raise Skip("no throughput measurements")
        entries = []
        for name, rows in self.throughput.items():
            for b, row in rows.items():
                entries.append({"kind": "eager", "variant": name, "batch": b, **row})
        entries += self.extra_entries
        per_batch: dict[str, Any] = {}
        for b in self.args.batches:
            base = self.throughput.get("fp32", {}).get(b, {}).get("items_per_s")
            ok = [
                e
                for e in entries
                if e["batch"] == b
                and e.get("items_per_s")
                and not VARIANTS[e["variant"]].end_to_end
                and self.acceptable.get(VARIANTS[e["variant"]].precision_key, False)
            ]
            if not ok:
                per_batch[str(b)] = None
                continue
            best = max(ok, key=lambda e: e["items_per_s"])
            best_eager = max(
                (e for e in ok if e["kind"] == "eager"),
                key=lambda e: e["items_per_s"],
                default=None,
            )
            per_batch[str(b)] = {
                "fastest": f"{best['variant']} ({best['kind']})",
                "crops_per_s": best["items_per_s"],
                "speedup_vs_fp32": r(best["items_per_s"] / base, 3) if base else None,
                "fastest_eager": best_eager and best_eager["variant"],
                "fastest_eager_crops_per_s": best_eager and best_eager["items_per_s"],
            }
        big = str(max(self.args.batches))
        pick = per_batch.get(big)
        rule = (
            "among precision variants whose parity is acceptable on every model (no inf/NaN, "
            f"Spearman vs fp32 >= {self.args.min_spearman}, |dSRCC| <= {self.args.max_dsrcc} where "
            "MOS exist), the highest crops/s at each batch; the torch backend defaults follow "
            f"batch {big}; CUDA graphs / torch.compile count only when >= 10% faster than eager"
        )
        defaults: dict[str, Any] = {"justified": False}
        if pick and pick["fastest_eager"]:
            v = VARIANTS[pick["fastest_eager"]]
            eager_best = pick["fastest_eager_crops_per_s"]
            graph_gain = self._gain("cuda_graph", v.name, int(big), eager_best)
            compile_gain = self._gain("torch_compile", v.name, int(big), eager_best)
            base = self.throughput.get("fp32", {}).get(int(big), {}).get("items_per_s")
            speedup = r(eager_best / base, 3) if base else 0.0
            defaults = {
                "variant": v.name,
                "precision": v.dtype,
                "mode": v.mode,
                "tf32": v.tf32,
                "channels_last": v.channels_last,
                "cudnn_benchmark": v.cudnn_benchmark,
                "cuda_graphs": bool(graph_gain and graph_gain >= 1.1),
                "cuda_graphs_gain": graph_gain,
                "torch_compile": bool(compile_gain and compile_gain >= 1.1),
                "torch_compile_gain": compile_gain,
                "speedup_vs_fp32": speedup,
                "speedup_vs_fp32_with_graphs_or_compile": pick["speedup_vs_fp32"],
                "justified": speedup >= 1.2,
            }
        # What loda.runtime's torch backend offers today: fp32 or fp16/bf16 autocast.
        supported = {}
        for b in self.args.batches:
            rows = [
                (row["items_per_s"], name)
                for name in RUNTIME_VARIANTS
                if self.acceptable.get(name, False)
                and (row := self.throughput.get(name, {}).get(b))
                and row.get("items_per_s")
            ]
            if rows:
                ips, name = max(rows)
                base = self.throughput.get("fp32", {}).get(b, {}).get("items_per_s")
                supported[str(b)] = {
                    "variant": name,
                    "crops_per_s": ips,
                    "speedup_vs_fp32": r(ips / base, 3) if base else None,
                }
        return {
            "rule": rule,
            "per_batch": per_batch,
            "torch_backend_defaults": defaults,
            "best_runtime_supported_now": supported,
            "acceptable_precisions": self.acceptable,
        }

    def _gain(self, kind: str, variant: str, batch: int, eager: float) -> float | None:
        rows = [
            e
            for e in self.extra_entries
            if e["kind"] == kind
            and e["variant"] == variant
            and e["batch"] == batch
            and e.get("items_per_s")
        ]
        return r(max(e["items_per_s"] for e in rows) / eager, 3) if rows and eager else None


# --------------------------------------------------------------------------------------------
# Workers (child processes)
# --------------------------------------------------------------------------------------------


def _worker_setup(spec: dict[str, Any]) -> tuple[Any, Any, Any, np.ndarray]:
    import torch

    from loda.preprocess import normalize

    device = torch.device(spec["device"])
    crops = np.load(spec["crops"])
    x_all = torch.from_numpy(normalize(crops)).to(device)
    return torch, device, x_all, crops


def worker_compile(spec: dict[str, Any], out_path: Path) -> None:
    result: dict[str, Any] = {
        "status": "running",
        "variant": spec["variant"],
        "backend": spec["backend"],
        "mode": spec["mode"],
        "batches": {},
    }
    write_json(out_path, result)
    torch, device, x_all, _ = _worker_setup(spec)
    result["torch"] = torch.__version__
    model = build_model(torch, spec["config"], device, spec["seed"])
    runner = Runner(torch, model, VARIANTS[spec["variant"]], device, cache=False)

    def fwd(x: Any) -> Any:
        return runner.forward(x)

    kwargs: dict[str, Any] = {"backend": spec["backend"], "dynamic": False}
    if spec["mode"]:
        kwargs["mode"] = spec["mode"]
    compiled = torch.compile(fwd, **kwargs)
    for b in spec["batches"]:
        x = runner.prepare(tile_batch(x_all, b))
        row: dict[str, Any] = {}
        result["batches"][str(b)] = row
        try:
            with torch.no_grad(), runner.flags():
                t = time.perf_counter()
                out = compiled(x)
                sync(torch, device)
                row["first_call_s"] = r(time.perf_counter() - t, 2)
                eager = fwd(x)
                row["max_abs_d_vs_eager"] = r(float((out - eager).abs().max()), 8)
                row.update(
                    time_blocks(
                        torch, device, lambda x=x: compiled(x), n_items=b, cfg=spec["timing"]
                    )
                )
                eager_row = time_blocks(
                    torch, device, lambda x=x: fwd(x), n_items=b, cfg=spec["timing"]
                )
                row["eager_items_per_s_same_process"] = eager_row["items_per_s"]
                row["speedup_vs_eager"] = r(row["items_per_s"] / eager_row["items_per_s"], 3)
            row["status"] = "ok"
        except Exception as exc:
            row.update(
                status="error", error=first_line(exc), traceback=traceback.format_exc()[-1500:]
            )
        write_json(out_path, result)
    result["status"] = (
        "ok" if all(v.get("status") == "ok" for v in result["batches"].values()) else "partial"
    )
    write_json(out_path, result)


def _trt_gpu_properties(torch: Any) -> Callable[[int], dict[str, Any]]:
    def props(device: int = 0) -> dict[str, Any]:
        p = torch.cuda.get_device_properties(device)
        return {
            "index": device,
            "name": p.name,
            "compute_capability": f"{p.major}.{p.minor}",
            "total_memory_bytes": int(p.total_memory),
            "cuda_driver_version": None,
            "cuda_runtime_version": torch.version.cuda,
            "source": "torch (bench fallback)",
        }

    return props


def _minimal_trt_build(
    trt: Any,
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    batches: tuple[int, int, int],
    opt_level: int,
) -> dict[str, Any]:
    """The same recipe as loda.export.trt.build_engine, for when it cannot be imported here."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors[:3]}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("crops", *[(b, 224, 224, 3) for b in batches])
    config.add_optimization_profile(profile)
    config.builder_optimization_level = opt_level
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    t = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT engine build failed")
    engine_path.write_bytes(bytes(plan))
    return {"builder": "bench minimal builder", "build_seconds": r(time.perf_counter() - t, 2)}


class TrtEngineRunner:
    def __init__(self, trt: Any, torch: Any, plan: bytes) -> None:
        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT cannot deserialize the engine it just built")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        out_dtype = self.engine.get_tensor_dtype("score")
        self.out_dtype = torch.float16 if out_dtype == trt.DataType.HALF else torch.float32

    def run(self, x_u8: Any, out: Any | None = None) -> Any:
        torch = self.torch
        b = int(x_u8.shape[0])
        if out is None:
            out = torch.empty(b, dtype=self.out_dtype, device=x_u8.device)
        self.context.set_input_shape("crops", tuple(x_u8.shape))
        self.context.set_tensor_address("crops", int(x_u8.data_ptr()))
        self.context.set_tensor_address("score", int(out.data_ptr()))
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("execute_async_v3 failed")
        torch.cuda.current_stream().wait_stream(self.stream)
        return out


def worker_tensorrt(spec: dict[str, Any], out_path: Path) -> None:
    import tensorrt as trt

    result: dict[str, Any] = {"status": "running", "tensorrt": trt.__version__, "engines": {}}
    write_json(out_path, result)
    torch, device, _, crops = _worker_setup(spec)
    map_subpackage("export")
    import onnx

    from loda.export.onnx import ExportWrapper, set_metadata
    from loda.preprocess import PreprocessConfig

    pre = PreprocessConfig()
    model = build_model(torch, spec["config"], torch.device("cpu"), spec["seed"])
    wrapper = ExportWrapper(model, pre).eval()
    work = Path(tempfile.mkdtemp(prefix="loda_trt_"))
    t = time.perf_counter()
    if module_available("onnxscript"):
        from loda.export.onnx import _export_proto

        proto = _export_proto(wrapper, pre.crop_size, 18)
        result["exporter"] = "torch.onnx.export(dynamo=True) via loda.export.onnx"
    else:
        import io

        buf = io.BytesIO()
        example = torch.randint(0, 256, (2, pre.crop_size, pre.crop_size, 3), dtype=torch.uint8)
        torch.onnx.export(
            wrapper,
            (example,),
            buf,
            dynamo=False,
            opset_version=18,
            input_names=["crops"],
            output_names=["score"],
            dynamic_axes={"crops": {0: "batch"}, "score": {0: "batch"}},
        )
        proto = onnx.load_from_string(buf.getvalue())
        result["exporter"] = "torch.onnx.export(dynamo=False) (onnxscript is not installed)"
    record = {
        "model": model.config.to_dict(),
        "preprocess": pre.to_dict(),
        "provenance": {"source": "gpu_check random init"},
    }
    set_metadata(proto, {"loda": json.dumps(record), "loda.precision": "fp32"})
    onnx_path = work / "model.onnx"
    onnx_path.write_bytes(proto.SerializeToString())
    result["export_s"] = r(time.perf_counter() - t, 2)
    write_json(out_path, result)

    graphs = {"fp32": onnx_path}
    try:
        map_subpackage("calib")
        from loda.calib.fp16 import convert_onnx_fp16

        if not (module_available("onnxconverter_common") or module_available("modelopt")):
            raise ImportError("neither onnxconverter-common nor nvidia-modelopt is installed")
        t = time.perf_counter()
        fp16_model, _ = convert_onnx_fp16(proto, images=None)
        fp16_path = work / "model.fp16.onnx"
        fp16_path.write_bytes(fp16_model.SerializeToString())
        graphs["fp16"] = fp16_path
        result["fp16_convert_s"] = r(time.perf_counter() - t, 2)
    except Exception as exc:
        result["engines"]["fp16"] = {"status": f"skipped: no FP16 graph ({first_line(exc)})"}

    # torch reference on the GPU: the exported wrapper, strict fp32
    wrapper_gpu = wrapper.to(device)
    crops_gpu = torch.from_numpy(crops).to(device)
    bounds = np.cumsum([0, *spec["crops_per_image"]])
    with torch.inference_mode(), backend_flags(torch, tf32=False, cudnn_benchmark=False):
        ref = torch.cat(
            [wrapper_gpu(crops_gpu[s : s + 60]).float() for s in range(0, len(crops_gpu), 60)]
        )
    ref = ref.double().cpu().numpy()
    ref_img = image_means(ref, bounds)
    del wrapper_gpu
    torch.cuda.empty_cache()

    batches = sorted(spec["batches"])
    profile = (batches[0], batches[len(batches) // 2], batches[-1])
    for prec, path in graphs.items():
        entry: dict[str, Any] = {"status": "running"}
        result["engines"][prec] = entry
        engine_path = work / f"model.{prec}.engine"
        try:
            t = time.perf_counter()
            try:
                map_subpackage("export")
                import loda.export.trt as lt

                try:
                    from cuda.bindings import runtime  # noqa: F401
                except ImportError:  # cuda-python is absent: GPU facts from torch instead
                    lt.gpu_properties = _trt_gpu_properties(torch)
                    entry["gpu_properties"] = "from torch (cuda-python is not installed)"
                from loda.export.trt import BatchProfile, build_engine

                rep = build_engine(
                    path,
                    engine_path,
                    profile=BatchProfile(*profile),
                    opt_level=spec["opt_level"],
                    log=None,
                )
                entry.update(
                    builder="loda.export.trt.build_engine", build_seconds=r(rep.build_seconds, 2)
                )
            except ImportError as exc:
                entry["loda_builder_unavailable"] = first_line(exc)
                entry.update(
                    _minimal_trt_build(trt, path, engine_path, prec, profile, spec["opt_level"])
                )
            entry["total_build_s"] = r(time.perf_counter() - t, 2)
            entry["plan_mb"] = r(engine_path.stat().st_size / 1e6, 1)
            runner = TrtEngineRunner(trt, torch, engine_path.read_bytes())
            scores = []
            step = max(profile[0], min(60, profile[2]))
            for s in range(0, len(crops_gpu), step):
                chunk = crops_gpu[s : s + step]
                if len(chunk) < profile[0]:
                    chunk = torch.cat([chunk, crops_gpu[: profile[0] - len(chunk)]])[: profile[0]]
                    scores.append(runner.run(chunk.contiguous())[: len(crops_gpu) - s].float())
                else:
                    scores.append(runner.run(chunk.contiguous()).float())
            torch.cuda.synchronize()
            sc = torch.cat(scores).double().cpu().numpy()
            img = image_means(sc, bounds)
            entry["parity_vs_torch_fp32"] = {
                "max_abs_d_crop": r(float(np.abs(sc - ref).max()), 8),
                "max_abs_d_image": r(float(np.abs(img - ref_img).max()), 8),
                "spearman_vs_fp32": r(spearman(img, ref_img)),
                "nonfinite": int((~np.isfinite(sc)).sum()),
            }
            entry["batches"] = {}
            for b in batches:
                x = tile_batch(crops_gpu, b)
                out = torch.empty(b, dtype=runner.out_dtype, device=device)
                row = time_blocks(
                    torch,
                    device,
                    lambda x=x, out=out, run=runner.run: run(x, out),
                    n_items=b,
                    cfg=spec["timing"],
                )
                row["status"] = "ok"
                entry["batches"][str(b)] = row
                write_json(out_path, result)
            entry["status"] = "ok"
            runner = None
        except Exception as exc:
            entry.update(
                status="error", error=first_line(exc), traceback=traceback.format_exc()[-1500:]
            )
        write_json(out_path, result)
    result["status"] = (
        "ok"
        if all(
            e.get("status") in ("ok",) or str(e.get("status")).startswith("skipped")
            for e in result["engines"].values()
        )
        else "partial"
    )
    write_json(out_path, result)


# --------------------------------------------------------------------------------------------
# Summary and main
# --------------------------------------------------------------------------------------------


def summary(report: Report) -> str:
    d = report.data
    s = d["sections"]
    lines = []
    env = s.get("env", {})
    gpu = env.get("gpu") or {}
    lines.append(
        f"LoDa GPU check: {gpu.get('name', env.get('device', '?'))} "
        f"(sm {gpu.get('compute_capability', '-')}), torch {env.get('torch', '?')}, "
        f"{env.get('cpu_affinity', '?')} cores; {d['elapsed_s']:.0f} s of {d['budget_s']:.0f} s"
    )
    lines.append("section          status")
    for name, entry in s.items():
        lines.append(
            f"  {name:<15}{str(entry.get('status'))[:70]}  ({entry.get('seconds', 0):.1f} s)"
        )
    img = s.get("images", {})
    if img.get("source"):
        lines.append(
            f"images: {img['n_images']} from {img['source']}"
            + (" (GENERATED, not demo photos)" if img.get("generated") else "")
        )
    par = s.get("parity", {})
    for label, m in (par.get("models") or {}).items():
        lines.append(f"parity {label}: variant  max|d|img  Spearman  dSRCC  ok")
        for key, e in m["variants"].items():
            if "max_abs_d_image" in e:
                lines.append(
                    f"  {key:<15}{e['max_abs_d_image']!s:<11}{e['spearman_vs_fp32']!s:<10}{e['dsrcc']!s:<8}{e['acceptable']}"
                )
            elif e.get("status") != "ok":
                lines.append(f"  {key:<15}{e.get('status')}")
    thr = (s.get("throughput") or {}).get("variants") or {}
    if thr:
        lines.append(
            "crops/s (eager)   "
            + "  ".join(f"b{b:>5}" for b in report.data["settings"].get("batches", []))
        )
        for name, t in thr.items():
            vals = [
                t["batches"].get(str(b), {}).get("items_per_s")
                for b in report.data["settings"].get("batches", [])
            ]
            lines.append(
                f"  {name:<22}" + "  ".join(f"{v if v is not None else '-':>7}" for v in vals)
            )
    dec = s.get("decode", {})
    if dec.get("one_core"):
        pp = dec.get("process_pool", {})
        lines.append(
            f"decode: 1 core {dec['one_core']['images_per_s']} img/s; {pp.get('processes', '?')} processes "
            f"{pp.get('images_per_s', '-')} img/s ({pp.get('crops_per_s', '-')} crops/s)"
        )
    rec = (s.get("recommendation") or {}).get("torch_backend_defaults")
    if rec:
        lines.append(f"recommendation: {json.dumps(rec)}")
    if d["errors"]:
        lines.append("errors: " + "; ".join(d["errors"]))
    lines.append(f"report: {report.path}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=str(REPO / "out" / "gpu_check.json"), help="JSON report path")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda, cuda:N or cpu")
    p.add_argument(
        "--smoke", action="store_true", help="loda_micro, tiny counts: test the code paths"
    )
    p.add_argument(
        "--images", default=None, help="bundle dir (manifest.json), demo set dir or image folder"
    )
    p.add_argument(
        "--config", default=None, help="model config (default loda_b16; smoke: loda_micro)"
    )
    p.add_argument(
        "--n-images", type=int, default=None, help="images for parity/decode (default 40; smoke 4)"
    )
    p.add_argument("--batches", default=None, help="comma list (default 15,60,240; smoke 1,2)")
    p.add_argument(
        "--crops-per-image",
        type=int,
        default=None,
        help="grid crops per image for parity and throughput (default 15; smoke 3)",
    )
    p.add_argument(
        "--smoke-workers",
        action="store_true",
        help="with --smoke on the CPU: also run the torch.compile child process (backend eager)",
    )
    p.add_argument(
        "--parity-batch", type=int, default=None, help="batch for the parity runs (default 60)"
    )
    p.add_argument(
        "--budget", type=float, default=440.0, help="seconds for the whole check (default 440)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-dsrcc", type=float, default=0.002)
    p.add_argument("--min-spearman", type=float, default=0.998)
    p.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode (default; max-autotune-no-cudagraphs is much slower)",
    )
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--compile-max-s", type=float, default=200.0)
    p.add_argument(
        "--trt-reserve",
        type=float,
        default=150.0,
        help="seconds kept for TensorRT when it is importable",
    )
    p.add_argument("--trt-opt-level", type=int, default=3)
    p.add_argument("--skip", default="", help="comma list of sections to skip")
    p.add_argument("--worker", choices=("compile", "tensorrt"), help=argparse.SUPPRESS)
    p.add_argument("--worker-spec", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.config = args.config or ("loda_micro" if args.smoke else "loda_b16")
    args.n_images = args.n_images or (4 if args.smoke else 40)
    args.crops_per_image = args.crops_per_image or (3 if args.smoke else 15)
    args.parity_batch = args.parity_batch or (6 if args.smoke else 60)
    batches = args.batches or ("1,2" if args.smoke else "15,60,240")
    args.batches = [int(b) for b in str(batches).split(",") if b.strip()]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker_spec).read_text(encoding="utf-8"))
        out = Path(args.worker_out)
        try:
            {"compile": worker_compile, "tensorrt": worker_tensorrt}[args.worker](spec, out)
        except Exception as exc:
            data = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
            data.update(
                status="error", error=first_line(exc), traceback=traceback.format_exc()[-2500:]
            )
            write_json(out, data)
            return 1
        return 0

    out = Path(args.out)
    report = Report(out, args.budget, args)
    report.data["settings"] = {
        "config": args.config,
        "n_images": args.n_images,
        "crops_per_image": args.crops_per_image,
        "batches": args.batches,
        "parity_batch": args.parity_batch,
        "seed": args.seed,
        "max_dsrcc": args.max_dsrcc,
        "min_spearman": args.min_spearman,
        "compile_mode": args.compile_mode,
        "compile_backend": args.compile_backend,
        "device_requested": args.device,
    }
    report.write()
    log(f"report: {out}")
    with tempfile.TemporaryDirectory(prefix="loda_gpu_check_") as tmp_name:
        check = Check(args, report, Path(tmp_name))
        plan: list[tuple[str, Callable[[], dict[str, Any]], float]] = [
            ("env", check.env, 0),
            ("images", check.load_images, 0),
            ("parity", check.parity, 15),
            ("throughput", check.run_throughput, 10),
            ("decode", check.decode, 8),
            ("cuda_graphs", check.cuda_graphs, 15),
            ("torch_compile", check.torch_compile, 0),
            ("tensorrt", check.tensorrt, 0),
            ("recommendation", check.recommendation, 0),
        ]
        for name, fn, needs in plan:
            if name in args.skip:
                report.data["sections"][name] = {"status": "skipped: --skip", "seconds": 0.0}
                continue
            if name != "env" and check.torch is None and name not in ("images", "decode"):
                report.data["sections"][name] = {
                    "status": "skipped: env failed (no torch)",
                    "seconds": 0.0,
                }
                continue
            report.section(name, fn, needs_s=needs)
    report.data["finished"] = now_utc()
    report.data["complete"] = True
    report.write()
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
