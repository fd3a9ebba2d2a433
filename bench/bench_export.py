"""Crops per second of one LoDa configuration, PyTorch eager vs ONNX Runtime, side by side.

Measures, in ONE process, on the same real crops, with the same thread count for everybody:

- ``torch-fp32``: PyTorch eager FP32, the authors' way (model in eval mode, no autograd, crops
  normalised to a float32 NCHW batch and scored by :func:`loda.inference.score_crops`; the
  normalisation is inside the timed region, as it is inside the ONNX graphs);
- ``ort-fp32``: the FP32 ONNX export (:func:`loda.export.onnx.export_onnx`);
- ``ort-fp16``: the FP16 graph (:func:`loda.calib.fp16.convert_onnx_fp16`);
- ``ort-int8-tensorrt`` / ``ort-int8-cpu``: the INT8 Q/DQ graphs of both targets
  (:func:`loda.calib.int8.quantize_onnx_int8`), calibrated on real images.

All ONNX variants run in ONNX Runtime's CPU provider, opened as ``loda-score --device cpu``
opens them (:func:`loda.runtime.scorer.open_backend`). Timing: warm-up first, then ``--repeats``
rounds; each round runs every variant once over all benchmark crops (in batches of ``--batch``),
the order rotating from round to round, so machine noise hits all variants alike; the reported
figure is the median round. Beside the speed, each variant's per-crop scores are compared with
eager's (max |d|, Spearman), so a fast but wrong variant shows.

Yardstick: the measured sgemm peak (:mod:`sgemm`, numpy and torch), the model's FLOPs per crop
counted twice (GEMM FLOPs of the exported graph, :func:`loda.calib.graph_stats.gemm_stats`, and
torch's ``FlopCounterMode`` on the eager model) and, for ``loda_b16``, the nominal 45.7 GFLOP.

Artifacts (checkpoint, ONNX files, calibration images) live in ``--out`` and are reused when
what they were made from is unchanged (``artifacts.json`` records each file's sha256 and
inputs), so a rerun only measures (``export_setup``). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/*.py, run as a script

import _common
from _common import Artifacts, log
from export_setup import (
    count_flops,
    default_images,
    make_graphs,
    pick_images,
    weights,
    write_calibration_folder,
)
from sgemm import DEFAULT_SIZES, best_sgemm, measure_sgemm_peak, thread_limits

from loda.compare import Bound, ScoreStats, Tolerance, compare_scores, judge

SCHEMA = 1
DEFAULT_OUT = Path("out/bench/export")
DEFAULT_CROPS = 30
DEFAULT_BATCH = 15
DEFAULT_CALIB_IMAGES = 8  # enough for a speed benchmark; INT8 calibration is slow on a CPU
SETTLE_SECONDS = 0.3  # idle gap before each timed pass: spinning threads of the last one sleep
# LoDa-B/16 (ViT-B/16 + ResNet50 + adapters), the figure the goals were set against.
NOMINAL_GFLOP_PER_CROP = {"loda_b16": 45.7}

# The goals of issue 4, judged on the median round.
GOAL_ORT_FP32_X_EAGER = 1.4
GOAL_ORT_FP32_OF_SGEMM_LIMIT = 0.85
GOAL_INT8_CPU_X_EAGER = 2.5


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark; this table drives the options, the builds and the output."""

    name: str
    label: str
    runtime: str  # "torch" or "onnxruntime"
    precision: str
    int8_target: str | None = None
    # Parity with eager that the project's own checks require of this precision (None: none).
    max_abs_goal: float | None = None
    spearman_goal: float | None = None


VARIANTS: tuple[Variant, ...] = (
    Variant("torch-fp32", "PyTorch eager fp32", "torch", "fp32"),
    Variant("ort-fp32", "ORT fp32", "onnxruntime", "fp32", max_abs_goal=1e-4),
    Variant("ort-fp16", "ORT fp16 graph", "onnxruntime", "fp16", spearman_goal=0.999),
    Variant(
        "ort-int8-tensorrt", "ORT int8 (tensorrt)", "onnxruntime", "int8", "tensorrt", None, 0.99
    ),
    Variant("ort-int8-cpu", "ORT int8 (cpu)", "onnxruntime", "int8", "cpu", None, 0.99),
)
BY_NAME = {v.name: v for v in VARIANTS}


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def _peak_rss_gb() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)  # KiB on Linux


# --------------------------------------------------------------------------------------------
# Running and timing
# --------------------------------------------------------------------------------------------


def eager_runner(model: Any, cfg: Any) -> Callable:
    """PyTorch eager FP32 on one batch: :func:`loda.inference.score_crops` (normalisation
    inside, as it is inside the ONNX graphs)."""
    from loda.inference import score_crops

    return lambda batch: score_crops(model, batch, cfg, batch_size=len(batch))


def ort_runner(path: Path, threads: int) -> Callable:
    """ONNX Runtime's CPU provider with ``threads`` intra-op threads, opened by the runtime
    (:func:`loda.runtime.scorer.open_backend`, as ``loda-score --device cpu`` opens it)."""
    from loda.runtime.scorer import open_backend

    return open_backend(path, device="cpu", threads=threads).infer


def time_variants(
    runners: dict[str, Callable],
    batches: Sequence[np.ndarray],
    warmup: int,
    repeats: int,
    settle: float = SETTLE_SECONDS,
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Seconds per pass over ``batches`` for each variant (rounds in rotating order) and each
    variant's scores from its last pass; ``warmup`` batches of every variant first."""
    for w in range(warmup):
        for name, run in runners.items():
            log(f"warm-up {w + 1}/{warmup}: {name}")
            run(batches[0])

    def one_pass(run: Callable) -> Callable[[], np.ndarray]:
        return lambda: np.concatenate([run(b) for b in batches]).astype(np.float64)

    passes = {name: one_pass(run) for name, run in runners.items()}
    return _common.interleaved_rounds(passes, repeats, settle)


def parity(scores: np.ndarray, reference: np.ndarray, crops_per_image: int) -> ScoreStats:
    """A variant's crop scores against eager's (a trailing partial image is left out of the
    per-image Spearman)."""
    return compare_scores(scores, reference, crops_per_image=crops_per_image)


def parity_record(stats: ScoreStats) -> dict[str, Any]:
    return {
        "n_crops": stats.n_crops,
        "n_images": stats.n_images,
        "max_abs": stats.max_abs_crop,
        "mean_abs": stats.mean_abs_crop,
        "n_nonfinite": stats.nonfinite_candidate,
        "spearman_crops": stats.spearman_crops,
        "spearman_images": stats.spearman_images,
    }


def parity_verdict(variant: Variant, stats: ScoreStats) -> str:
    """The variant's parity goal on crops: max |d| (``WRONG``) or Spearman (``LOW``)."""
    if stats.nonfinite_candidate:
        return "WRONG (inf/NaN)"
    if variant.max_abs_goal is not None:
        bound = Bound(variant.max_abs_goal)
        verdict = judge(stats, Tolerance(variant.precision, max_abs_dscore_crop=bound))
        return "ok" if verdict.passed else f"WRONG (> {variant.max_abs_goal:g})"
    if variant.spearman_goal is not None:
        bound = Bound(variant.spearman_goal, at_least=True)
        verdict = judge(stats, Tolerance(variant.precision, spearman_crops=bound))
        if verdict.undefined:
            return "n/a"
        return "ok" if verdict.passed else f"LOW (rho < {variant.spearman_goal})"
    return "-"


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    width = spec.split(".")[0]
    return format("-", f">{width}") if value is None else format(value, spec)


def render(result: dict[str, Any]) -> str:
    m, f, s = result["machine"], result["flops"], result["sgemm"]
    gflop = f["graph_gemm_gflop_per_crop"]
    lines = [
        f"LoDa {result['config']} on {m['cpu_model']} ({m['usable_cpus']} usable CPUs, "
        f"{result['settings']['threads']} threads for every variant)",
        f"torch {m['versions'].get('torch', '?')}, onnxruntime {m['versions'].get('onnxruntime', '?')}, "
        f"numpy {m['versions'].get('numpy', '?')}; ISA {' '.join(m['isa']) or '-'}",
        f"{result['settings']['crops']} crops of {result['images']['bench_images']} images "
        f"(batch {result['settings']['batch']}), {result['settings']['warmup']} warm-up batch(es), "
        f"median of {result['settings']['repeats']} interleaved rounds; "
        f"load average {result['load_average']['before']} -> {result['load_average']['after']}",
        f"weights: {result['checkpoint']['source']}",
        "",
        f"FLOPs per crop: {gflop:.2f} GFLOP counted in the ONNX graph (Conv/MatMul/Gemm), "
        f"{f['torch_counter_gflop_per_crop']:.2f} by torch FlopCounterMode"
        + (f", {f['nominal_gflop_per_crop']} nominal" if f.get("nominal_gflop_per_crop") else ""),
        f"sgemm peak: {s['peak_gflops']:.1f} GFLOP/s ({s['peak_from']}; best of numpy and torch "
        f"at sizes {', '.join(map(str, s['sizes']))}) -> sgemm-bound limit "
        f"{result['sgemm_bound_limit_crops_per_s']:.2f} crops/s"
        + (
            f" ({result['sgemm_bound_limit_nominal_crops_per_s']:.2f} at the nominal FLOPs)"
            if result.get("sgemm_bound_limit_nominal_crops_per_s")
            else ""
        ),
        "",
    ]
    header = (
        f"{'variant':<22} {'crops/s':>8} {'spread':>7} {'x eager':>8} {'GFLOP/s':>8} "
        f"{'% peak':>7} {'size MB':>8} {'max |d|':>9} {'rho crops':>9} {'rho img':>8}  parity"
    )
    lines += [header, "-" * len(header)]
    for row in result["variants"]:
        p = row["parity"]
        lines.append(
            f"{row['label']:<22} {row['crops_per_s']:8.2f} {row['spread_pct']:6.1f}% "
            f"{row['x_eager']:8.2f} {row['gflops']:8.1f} {row['pct_of_sgemm_peak']:6.1f}% "
            f"{row['size_mb']:8.1f} "
            + (
                f"{'-':>9} {'-':>9} {'-':>8}  reference"
                if p is None
                else f"{_fmt(p['max_abs'], '9.2e')} {_fmt(p['spearman_crops'], '9.4f')} "
                f"{_fmt(p['spearman_images'], '8.4f')}  {row['parity_verdict']}"
            )
        )
    lines += ["", "goals", *_common.goal_lines(result["goals"])]
    lines += [
        "",
        f"INT8 calibration: {result['images']['calib_images']} images ({result['images']['source']})"
        " - a small set, enough for a speed benchmark; the benchmark images are held out.",
    ]
    return "\n".join(lines)


def judge_goals(
    rows: dict[str, dict[str, Any]], limit: float, nominal_limit: float | None
) -> list[dict[str, Any]]:
    """PASS/MISS of the issue's goals; the sgemm-bound one is judged at the counted FLOPs."""

    def ratio_goal(name: str, goal: str, threshold: float) -> dict[str, Any]:
        row = rows.get(name)
        if row is None:
            return _common.not_measured(goal)
        return _common.goal(goal, row["x_eager"], threshold, f"{row['x_eager']:.2f}x")

    goal = f"ORT fp32 >= {GOAL_ORT_FP32_OF_SGEMM_LIMIT:.0%} of the sgemm-bound limit"
    ort = rows.get("ort-fp32")
    if ort is None:
        sgemm_goal = _common.not_measured(goal)
    else:
        frac = ort["crops_per_s"] / limit
        measured = f"{100 * frac:.1f}% ({ort['crops_per_s']:.2f} of {limit:.2f} crops/s"
        at_nominal = ort["crops_per_s"] / nominal_limit if nominal_limit else None
        if at_nominal is not None:
            measured += f"; {100 * at_nominal:.1f}% at the nominal FLOPs"
        sgemm_goal = _common.goal(goal, frac, GOAL_ORT_FP32_OF_SGEMM_LIMIT, measured + ")")
        sgemm_goal["value_at_nominal_flops"] = at_nominal
    return [
        ratio_goal(
            "ort-fp32", f"ORT fp32 >= {GOAL_ORT_FP32_X_EAGER}x PyTorch eager", GOAL_ORT_FP32_X_EAGER
        ),
        sgemm_goal,
        ratio_goal(
            "ort-int8-cpu",
            f"ORT int8 (cpu target) >= {GOAL_INT8_CPU_X_EAGER}x PyTorch eager fp32",
            GOAL_INT8_CPU_X_EAGER,
        ),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/bench_export.py",
        description="Crops/s of PyTorch eager vs ONNX Runtime FP32/FP16/INT8, side by side.",
    )
    _common.add_model_arguments(
        parser,
        default_out=DEFAULT_OUT,
        onnx_help="use this FP32 export of --checkpoint instead of exporting again (its recorded "
        "source sha256 must be the checkpoint's)",
        seed_help="seed of the random-init checkpoint",
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="real images (folder or archive) for the "
        "benchmark crops and INT8 calibration; default: out/demo/data if "
        "`make demo` made it, else a small demo set built in --out",
    )
    parser.add_argument("--crops", type=int, default=DEFAULT_CROPS, help="crops per timed pass")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--threads", type=int, default=None, help="default: all usable CPUs")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up batches per variant")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES)
    parser.add_argument(
        "--method",
        default="minmax",
        choices=("minmax", "entropy", "percentile"),
        help="INT8 calibration method",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(BY_NAME),
        default=list(BY_NAME),
        help="what to measure (torch-fp32, the reference, is always measured)",
    )
    parser.add_argument("--sgemm-sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--json", type=Path, help="default: OUT/bench_export.json")
    args = parser.parse_args(argv)
    if args.onnx is not None and args.checkpoint is None:
        parser.error("--onnx needs the --checkpoint it was exported from")
    for name in ("crops", "batch", "repeats", "calib_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--warmup must be >= 0 and --threads >= 1")
    return args


def _images(args: argparse.Namespace, cfg: Any) -> tuple[str, list, list, Path]:
    """Calibration and benchmark images, disjoint; the calibration ones copied to a folder."""
    images = args.images if args.images is not None else default_images(args.out)
    n_bench = math.ceil(args.crops / cfg.num_crops)
    source, calib, held = pick_images(images, args.calib_images, n_bench)
    if len(calib) < args.calib_images:
        log(
            f"only {len(calib)} calibration images left in {source} (asked for {args.calib_images})"
        )
    calib_dir = args.out / "calib_images"
    write_calibration_folder(calib, calib_dir)
    return source, calib, held, calib_dir


def _row(v: Variant, path: Path, rounds: list[float], n: int, eager_rate: float, p, gflop, peak):
    med = statistics.median(rounds)
    rate = n / med
    return {
        "name": v.name,
        "label": v.label,
        "runtime": v.runtime,
        "precision": v.precision,
        "int8_target": v.int8_target,
        "path": str(path),
        "size_mb": path.stat().st_size / 1e6,
        "seconds_per_round": rounds,
        "median_seconds": med,
        "crops_per_s": rate,
        "spread_pct": _common.spread_pct(rounds),
        "x_eager": rate / eager_rate,
        "gflops": rate * gflop,
        "pct_of_sgemm_peak": 100 * rate * gflop / peak,
        "parity": None if p is None else parity_record(p),
        "parity_verdict": "reference" if p is None else parity_verdict(v, p),
    }


def _measure(args, chosen, paths, model, meta, held, threads: int) -> dict[str, Any]:
    """FLOPs, the sgemm peak (before and after), the timed rounds and the variants' rows."""
    import torch

    from loda.preprocess import preprocess_image

    cfg = meta.preprocess
    log("counting FLOPs (ONNX graph GEMMs, torch FlopCounterMode)")
    flops = count_flops(paths["ort-fp32"], model, cfg.crop_size)
    flops["nominal_gflop_per_crop"] = NOMINAL_GFLOP_PER_CROP.get(meta.model.name)
    log(f"measuring the sgemm peak with {threads} threads (sizes {args.sgemm_sizes})")
    sgemm_before = measure_sgemm_peak(args.sgemm_sizes, threads)
    torch.set_num_threads(threads)
    crops = np.concatenate([preprocess_image(i.source, cfg) for i in held])[: args.crops]
    crops = np.ascontiguousarray(crops)
    batches = [
        np.ascontiguousarray(crops[i : i + args.batch]) for i in range(0, len(crops), args.batch)
    ]
    runners: dict[str, Callable] = {}
    for v in chosen:
        if v.runtime == "torch":
            runners[v.name] = eager_runner(model, cfg)
        else:
            log(f"opening an ONNX Runtime session for {paths[v.name]}")
            runners[v.name] = ort_runner(paths[v.name], threads)
    log(f"timing {len(runners)} variants on {len(crops)} crops, {args.repeats} rounds")
    with thread_limits(threads):
        seconds, scores = time_variants(runners, batches, args.warmup, args.repeats)
    # Measured again after the timing and the best kept (see sgemm.best_sgemm).
    log("measuring the sgemm peak again")
    sgemm = best_sgemm(sgemm_before, measure_sgemm_peak(args.sgemm_sizes, threads))
    gflop = flops["graph_gemm_gflop_per_crop"]
    eager_rate = len(crops) / statistics.median(seconds["torch-fp32"])
    rows = []
    for v in chosen:
        p = None
        if v.name != "torch-fp32":
            p = parity(scores[v.name], scores["torch-fp32"], cfg.num_crops)
        rows.append(
            _row(v, paths[v.name], seconds[v.name], len(crops), eager_rate, p, gflop,
                 sgemm["peak_gflops"])
        )  # fmt: skip
    return {"crops": len(crops), "flops": flops, "sgemm": sgemm, "variants": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from loda.checkpoint import load_checkpoint
    from loda.metadata import read_safetensors_metadata

    started = time.perf_counter()
    threads = args.threads or _common.usable_cpus()
    torch.set_num_threads(threads)
    load_before = _common.load_average()
    chosen = [v for v in VARIANTS if v.name == "torch-fp32" or v.name in args.variants]
    args.out.mkdir(parents=True, exist_ok=True)
    artifacts = Artifacts(args.out)
    ckpt, ckpt_sha = weights(args, artifacts)
    meta, _ = read_safetensors_metadata(ckpt)
    source, calib, held, calib_dir = _images(args, meta.preprocess)
    paths = make_graphs(args, chosen, artifacts, ckpt, ckpt_sha, (source, calib, calib_dir))
    model, _ = load_checkpoint(ckpt)  # eval mode
    m = _measure(args, chosen, paths, model, meta, held, threads)
    peak = m["sgemm"]["peak_gflops"]
    limit = peak / m["flops"]["graph_gemm_gflop_per_crop"]
    nominal = m["flops"]["nominal_gflop_per_crop"]
    nominal_limit = peak / nominal if nominal else None
    return {
        "schema": SCHEMA,
        "config": meta.model.name,
        "settings": {
            "crops": m["crops"],
            "batch": args.batch,
            "threads": threads,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "settle_seconds": SETTLE_SECONDS,
            "int8_method": args.method,
        },
        "machine": _common.machine_description(threads),
        "load_average": {"before": load_before, "after": _common.load_average()},
        "checkpoint": {
            "path": str(ckpt),
            "sha256": ckpt_sha,
            "source": meta.provenance.get("source", "?"),
        },
        "images": {
            "source": source,
            "calib_images": len(calib),
            "calib_names": [c.name for c in calib],
            "bench_images": len(held),
            "bench_names": [h.name for h in held],
        },
        "artifacts": artifacts.events,
        "flops": m["flops"],
        "sgemm": m["sgemm"],
        "sgemm_bound_limit_crops_per_s": limit,
        "sgemm_bound_limit_nominal_crops_per_s": nominal_limit,
        "variants": m["variants"],
        "goals": judge_goals({r["name"]: r for r in m["variants"]}, limit, nominal_limit),
        "peak_rss_gb": _peak_rss_gb(),
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    return _common.bench_main(argv, parse_args, run, render, "bench_export.json")


if __name__ == "__main__":
    sys.exit(main())
