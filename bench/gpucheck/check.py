"""The measuring sections on the eager model: env, images, parity, throughput, decode."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from loda.compare import Bound, Tolerance, compare_scores, judge

from .common import Report, Skip, first_line, module_available, package_version, r, speedup
from .images import REPO, ImageSet, decode_one, find_images, pid_of_worker
from .variants import PARITY_KEYS, VARIANTS, Runner, build_model, tile_batch, time_blocks

# Packages the GPU machine is not promised to have; env lists which of them exist.
OPTIONAL_MODULES = (
    "scipy", "click", "tqdm", "safetensors", "sklearn", "skimage", "onnxscript", "onnxslim",
    "onnxconverter_common", "modelopt", "tensorrt", "triton", "cuda", "polygraphy",
)  # fmt: skip
VERSIONS = (
    "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow", "onnxscript",
    "tensorrt", "triton", "pytorch-triton", "loda",
)  # fmt: skip
INSTALL_RECORD_ENV = "GPU_CHECK_INSTALL_RECORD"  # set by bench/gpu_check.sh after the install


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loda_origin() -> dict[str, Any]:
    """Where ``loda`` was imported from, and the install record of bench/gpu_check.sh."""
    import loda

    where = Path(loda.__file__).resolve().parent
    record = os.environ.get(INSTALL_RECORD_ENV)
    install = None
    if record and Path(record).is_file():
        install = json.loads(Path(record).read_text(encoding="utf-8"))
    return {
        "loda_version": loda.__version__,
        "loda_imported_from": str(where),
        "loda_from_this_tree": where == REPO / "loda",
        "loda_install": install,
    }


def cuda_facts(torch: Any, device: Any) -> dict[str, Any]:
    """GPU properties, nvidia-smi and the flags torch starts with (TF32, SDP kernels)."""
    flags: dict[str, Any] = {}
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
    props = torch.cuda.get_device_properties(device)
    out: dict[str, Any] = {
        "flags": flags,
        "gpu": {
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "total_memory_gib": r(props.total_memory / 2**30, 2),
            "multiprocessors": props.multi_processor_count,
            "device_count": torch.cuda.device_count(),
        },
    }
    query = (
        "name,driver_version,clocks.max.sm,power.limit,memory.total,temperature.gpu,utilization.gpu"
    )
    try:
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv"],
            capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
        out["nvidia_smi"] = (smi.stdout or smi.stderr).strip()[:1000]
    except Exception as exc:
        out["nvidia_smi"] = f"unavailable: {first_line(exc)}"
    return out


class Check:
    """State shared by the sections: the device, the crops, the models, what was measured."""

    def __init__(self, args: argparse.Namespace, report: Report, tmp: Path) -> None:
        self.args = args
        self.report = report
        self.tmp = tmp
        self.torch: Any = None
        self.device: Any = None
        self.images: ImageSet | None = None
        self.crops: np.ndarray | None = None  # uint8 [n_images * crops_per_image, 224, 224, 3]
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
        import timm
        import torch
        from timm.layers import use_fused_attn

        self.torch = torch
        want = self.args.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
        self.device = torch.device(want)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        cudnn = torch.backends.cudnn
        out: dict[str, Any] = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cpu_affinity": usable_cores(),
            "device": str(self.device),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "cudnn": cudnn.version() if cudnn.is_available() else None,
            "torch_threads": torch.get_num_threads(),
            "versions": {p: package_version(p) for p in VERSIONS},
            "optional_modules": {m: module_available(m) for m in OPTIONAL_MODULES},
            **loda_origin(),
            "timm_fused_attn": bool(use_fused_attn()),
            "timm": timm.__version__,
        }
        flags: dict[str, Any] = {"cudnn.benchmark": cudnn.benchmark}
        if torch.cuda.is_available():
            facts = cuda_facts(torch, self.device)
            flags.update(facts.pop("flags"))
            out.update(facts)
        out["initial_flags"] = flags
        return out

    # -- images ----------------------------------------------------------------------------
    def load_images(self) -> dict[str, Any]:
        from loda.preprocess import PreprocessConfig, preprocess_image

        images, notes = find_images(self.args, self.report.left(), self.tmp)
        self.images = images
        if images.source == "bundle":
            from .images import read_manifest

            self.bundle_dir = images.root
            self.bundle_checkpoint = read_manifest(self.bundle_dir).get("checkpoint")
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

        if self.crops is None:
            raise Skip("no images (the images section failed)")
        return self.torch.from_numpy(normalize(self.crops)).to(self.device)

    def main_model(self) -> Any:
        label = f"{self.args.config} (random init)"
        if label not in self.models:
            self.models[label] = build_model(
                self.torch, self.args.config, self.device, self.args.seed
            )
        return self.models[label]

    # -- parity ----------------------------------------------------------------------------
    def parity_models(self, notes: list[str]) -> list[tuple[str, Any]]:
        """The random-init model, and the bundle's trained checkpoint when there is one
        (read with :func:`loda.checkpoint.load_checkpoint`)."""
        models = [(f"{self.args.config} (random init)", self.main_model())]
        if self.bundle_checkpoint:
            try:
                from loda.checkpoint import load_checkpoint

                model, meta = load_checkpoint(self.bundle_dir / self.bundle_checkpoint["file"])
                label = f"{meta.model.name} (trained, bundled)"
                models.append((label, model.eval().to(self.device)))
            except Exception as exc:
                notes.append(f"bundled checkpoint not loaded: {first_line(exc)}")
        return models

    def parity_entry(self, crop_scores: np.ndarray, ref_crops, mos) -> dict[str, Any]:
        """One variant's figures; without reference crops (fp32 itself), its own only."""
        stats = compare_scores(
            crop_scores,
            crop_scores if ref_crops is None else ref_crops,
            crops_per_image=self.crops_per_image,
            mos=mos,
        )
        img = stats.candidate_images
        entry: dict[str, Any] = {
            "status": "ok",
            "nonfinite_crops": stats.nonfinite_candidate,
            "image_score_mean": r(float(np.mean(img))),
            "image_score_std": r(float(np.std(img))),
            "srcc_vs_mos": r(stats.srcc),
        }
        if ref_crops is not None:
            entry.update(
                max_abs_d_image=r(stats.max_abs_image, 8),
                mean_abs_d_image=r(stats.mean_abs_image, 8),
                max_abs_d_crop=r(stats.max_abs_crop, 8),
                mean_abs_d_crop=r(stats.mean_abs_crop, 8),
                max_d_over_image_std=r(
                    stats.max_abs_image / max(np.std(stats.reference_images), 1e-12), 6
                ),
                spearman_vs_fp32=r(stats.spearman_images),
                dsrcc=r(stats.dsrcc, 6),
            )
            entry["acceptable"], entry["why"] = self.judge(stats)
        return entry

    def parity(self) -> dict[str, Any]:
        x_all = self.device_crops()
        notes: list[str] = []
        models = self.parity_models(notes)
        mos = None
        if self.images and all(m is not None for m in self.images.mos):
            mos = np.asarray(self.images.mos, dtype=np.float64)
        per_model: dict[str, Any] = {}
        accept: dict[str, bool] = {}
        for label, model in models:
            results: dict[str, Any] = {}
            ref_crops = None
            for key in PARITY_KEYS:
                variant = VARIANTS[key]
                if variant.cuda_only and not self.cuda:
                    results[key] = {"status": "skipped: no CUDA"}
                    continue
                if self.report.left() < 10:
                    results[key] = {"status": "skipped: time budget"}
                    continue
                try:
                    runner = Runner(self.torch, model, variant, self.device)
                    crop_scores = runner.scores(x_all, self.args.parity_batch)
                    del runner
                except Exception as exc:
                    results[key] = {"status": "error", "error": first_line(exc)}
                    continue
                results[key] = self.parity_entry(crop_scores, ref_crops, mos)
                if key == "fp32":
                    ref_crops = crop_scores
                elif "acceptable" in results[key]:  # judged against the fp32 reference
                    accept[key] = accept.get(key, True) and results[key]["acceptable"]
            per_model[label] = {"variants": results}
        accept["fp32"] = True
        self.acceptable = accept
        if self.cuda:
            self.torch.cuda.empty_cache()
        return {
            "n_images": len(self.crops_per_image),
            "n_crops": int(sum(self.crops_per_image)),
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

    def judge(self, stats: Any) -> tuple[bool, str]:
        """No inf/NaN, Spearman vs fp32 and |dSRCC| within the thresholds, each where defined
        (no MOS: no dSRCC)."""
        min_rho = Bound(self.args.min_spearman, at_least=True)
        tolerance = Tolerance(
            "gpu-check",
            spearman=None if stats.spearman_images is None else min_rho,
            abs_dsrcc=None if stats.dsrcc is None else Bound(self.args.max_dsrcc),
        )
        verdict = judge(stats, tolerance)
        return verdict.passed, "; ".join(verdict.problems) or "within thresholds"

    # -- throughput ------------------------------------------------------------------------
    def run_throughput(self) -> dict[str, Any]:
        torch = self.torch
        x_all = self.device_crops()
        model = self.main_model()
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
            for b in self.args.batches:
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
                if (gain := speedup(row, base.get(b))) is not None:
                    row["speedup_vs_fp32"] = gain
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
            host = tile_batch(torch.from_numpy(self.crops), batch)
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
        from loda.preprocess import normalize, preprocess_image

        if not self.images or not self.images.paths:
            raise Skip("no images")
        paths = [str(p) for p in self.images.paths]
        cores = usable_cores()
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
        one = out["one_core"]["images_per_s"]
        out["process_pool"] = self._pool(paths, par_list, cores, one, processes=True)
        out["thread_pool"] = self._pool(paths, par_list, cores, one, processes=False)
        return out

    @staticmethod
    def _pool(paths, par_list, cores: int, one_core: float, *, processes: bool) -> dict[str, Any]:
        """images/s of a spawn process pool (or a thread pool) over all cores."""
        import multiprocessing as mp
        from concurrent.futures import ThreadPoolExecutor

        warm = paths[: min(len(paths), cores)]  # the workers' imports
        out: dict[str, Any] = {"processes": cores, "start": "spawn"} if processes else {}
        try:
            if processes:
                t = time.perf_counter()
                with mp.get_context("spawn").Pool(cores) as pool:
                    pool.map(pid_of_worker, range(cores))
                    out["pool_start_s"] = r(time.perf_counter() - t, 3)
                    pool.map(decode_one, warm, chunksize=1)
                    t = time.perf_counter()
                    chunk = max(1, len(par_list) // (4 * cores))
                    n_crops = sum(pool.map(decode_one, par_list, chunksize=chunk))
                    dt = time.perf_counter() - t
            else:
                out["threads"] = cores
                with ThreadPoolExecutor(cores) as ex:
                    list(ex.map(decode_one, warm))
                    t = time.perf_counter()
                    n_crops = sum(ex.map(decode_one, par_list))
                    dt = time.perf_counter() - t
        except Exception as exc:
            return {"status": "error", "error": first_line(exc)}
        out.update(
            images=len(par_list),
            images_per_s=r(len(par_list) / dt, 2),
            crops_per_s=r(n_crops / dt, 1),
            speedup_vs_one_core=r(len(par_list) / dt / one_core, 2),
        )
        return out
