"""Crops per second of one LoDa configuration, PyTorch eager vs ONNX Runtime, side by side.

Measures, in ONE process, on the same real crops, with the same thread count for everybody:

- ``torch-fp32``: PyTorch eager FP32, the authors' way (model in eval mode, ``torch.no_grad()``,
  crops normalised to a float32 NCHW batch by :func:`loda.preprocess.normalize`, as
  :mod:`loda.inference` does; the normalisation is inside the timed region, as it is inside the
  ONNX graphs);
- ``ort-fp32``: the FP32 ONNX export (:func:`loda.export.onnx.export_onnx`);
- ``ort-fp16``: the FP16 graph (:func:`loda.calib.fp16.convert_onnx_fp16`);
- ``ort-int8-tensorrt`` / ``ort-int8-cpu``: the INT8 Q/DQ graphs of both targets
  (:func:`loda.calib.int8.quantize_onnx_int8`), calibrated on real images.

All ONNX variants run in ONNX Runtime's CPU provider. Timing: warm-up first, then ``--repeats``
rounds; each round runs every variant once over all benchmark crops (in batches of ``--batch``),
the order rotating from round to round, so machine noise hits all variants alike; the reported
figure is the median round. Beside the speed, each variant's per-crop scores are compared with
eager's (max |d|, Spearman), so a fast but wrong variant shows.

Yardstick: the measured sgemm peak (:mod:`sgemm`, numpy and torch), the model's FLOPs per crop
counted twice (GEMM FLOPs of the exported graph, :func:`loda.calib.graph_stats.gemm_stats`, and
torch's ``FlopCounterMode`` on the eager model) and, for ``loda_b16``, the nominal 45.7 GFLOP.

Artifacts (checkpoint, ONNX files, calibration images) live in ``--out`` and are reused when
what they were made from is unchanged (``artifacts.json`` records each file's sha256 and
inputs), so a rerun only measures. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
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
from _common import Artifacts, BenchError, log
from sgemm import DEFAULT_SIZES, measure_sgemm_peak, thread_limits

from loda.compare import Bound, ScoreStats, Tolerance, compare_scores, judge

SCHEMA = 1
DEFAULT_OUT = Path("out/bench/export")
DEFAULT_CROPS = 30
DEFAULT_BATCH = 15
DEFAULT_CALIB_IMAGES = 8  # enough for a speed benchmark; INT8 calibration is slow on a CPU
DEMO_REFERENCES = 4  # references of the demo set built when no images are given
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
# Artifacts (made once, reused while their inputs are unchanged: _common.Artifacts)
# --------------------------------------------------------------------------------------------


def check_given_onnx(path: Path, checkpoint_sha: str) -> str:
    """The sha256 of ``path`` after checking that it is the FP32 export of the checkpoint."""
    from loda.artifacts import sha256_file

    _common.check_onnx_source(path, checkpoint_sha)
    log(f"using {path} (exported from this checkpoint)")
    return sha256_file(path)


def make_fp16(fp32_path: Path, path: Path) -> None:
    import onnx

    from loda.calib.fp16 import convert_onnx_fp16

    model, report = convert_onnx_fp16(onnx.load(str(fp32_path)), log=log)
    log(f"FP16 share of GEMM FLOPs {100 * report.fp16_share:.1f}% ({report.converter})")
    onnx.save_model(model, str(path))


def make_int8(fp32_path: Path, path: Path, calib_dir: Path, n: int, target: str, method: str):
    from loda.calib.int8 import quantize_onnx_int8

    report = quantize_onnx_int8(
        fp32_path,
        path,
        images=calib_dir,
        method=method,
        target=target,
        calib_images=n,
        verify=False,  # checked against eager on the benchmark crops instead (held-out images)
        log=log,
    )
    log(report.summary())


def pick_images(images: Path, n_calib: int, n_bench: int) -> tuple[str, list, list]:
    """Disjoint calibration and benchmark images, both spread over the sorted candidates."""
    from loda.calib.int8 import select_images

    source, chosen, _, _ = select_images(images, n_calib=n_calib + n_bench, verify=False, log=log)
    if len(chosen) < n_bench + 1:
        raise BenchError(
            f"{images}: {len(chosen)} image(s); the benchmark needs {n_bench} for --crops and at "
            "least 1 more to calibrate INT8"
        )
    bench_idx = {round(float(i)) for i in np.linspace(0, len(chosen) - 1, n_bench)}
    held = [c for i, c in enumerate(chosen) if i in bench_idx]
    calib = [c for i, c in enumerate(chosen) if i not in bench_idx][:n_calib]
    return source, calib, held


def write_calibration_folder(calib: Sequence[Any], folder: Path) -> None:
    """Copy the calibration images into ``folder`` (so the INT8 tools read exactly these)."""
    wanted = {f"{i:03d}_{Path(c.name).name}": c for i, c in enumerate(calib)}
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.name not in wanted:
            old.unlink() if old.is_file() else shutil.rmtree(old)
    for name, image in wanted.items():
        data = image.source if isinstance(image.source, bytes) else image.source.read_bytes()
        target = folder / name
        if not target.is_file() or target.read_bytes() != data:
            target.write_bytes(data)


def default_images(out: Path) -> Path:
    """``out/demo/data`` when ``make demo`` made it, else a small demo set in ``--out``."""
    from loda.data.demo import is_demo_dir, list_references, make_demo_set

    shared = Path("out/demo/data")
    if is_demo_dir(shared) and (shared / "demo.csv").is_file():
        return shared
    own = out / "demo"
    if is_demo_dir(own) and (own / "demo.csv").is_file():
        return own
    refs = list_references()[:DEMO_REFERENCES]
    if not refs:
        raise BenchError("no images: pass --images DIR (or pip install 'loda[demo]')")
    log(f"building a demo set of {len(refs)} references in {own} (pass --images DIR to skip)")
    make_demo_set(own, references=refs)
    return own


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def _cpu_attention_formula() -> dict[Any, Any]:
    """FlopCounterMode has no formula for the CPU flash-attention kernel that
    ``scaled_dot_product_attention`` runs here, so attention would count as 0 FLOPs; give it
    torch's own SDPA formula (QK^T and PV, 2 FLOPs per multiply-add)."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return {op: formula}


def count_flops(fp32_path: Path, model: Any, crop_size: int) -> dict[str, Any]:
    """GEMM FLOPs per crop of the exported graph and torch's FLOP count of the eager model."""
    import onnx
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from loda.calib.graph_stats import gemm_stats

    stats = gemm_stats(onnx.load(str(fp32_path)))
    by_type = {op: sum(v.values()) for op, v in stats.by_type().items()}
    x = torch.zeros(1, 3, crop_size, crop_size)
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formula())
    with counter, torch.no_grad():
        model.score(x)
    torch_by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {
        "graph_gemm_gflop_per_crop": stats.total_flops / 1e9,
        "graph_gemm_gflop_by_op": {k: v / 1e9 for k, v in sorted(by_type.items())},
        "graph_gemm_nodes": len(stats.nodes),
        "graph_gemm_nodes_without_shapes": list(stats.unknown),
        "torch_counter_gflop_per_crop": counter.get_total_flops() / 1e9,
        "torch_counter_gflop_by_op": {k: v / 1e9 for k, v in sorted(torch_by_op.items())},
    }


# --------------------------------------------------------------------------------------------
# Running and timing
# --------------------------------------------------------------------------------------------


def best_sgemm(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The higher of two sgemm measurements, both kept."""
    best, when = max((before, "before"), (after, "after"), key=lambda t: t[0]["peak_gflops"])
    return {
        "peak_gflops": best["peak_gflops"],
        "peak_from": f"{best['peak_from']}, {when} the timing",
        "sizes": best["sizes"],
        "threads": best["threads"],
        "numpy_blas": best["numpy_blas"],
        "before": before,
        "after": after,
    }


def eager_runner(model: Any, mean: Sequence[float], std: Sequence[float]) -> Callable:
    import torch

    from loda.preprocess import normalize

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(normalize(batch, mean, std))
        with torch.no_grad():
            return model.score(x).numpy()

    return run


def ort_runner(path: Path, threads: int) -> Callable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no fp16 "cast inserted" chatter
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: batch})[0])

    return run


def time_variants(
    runners: dict[str, Callable],
    batches: Sequence[np.ndarray],
    warmup: int,
    repeats: int,
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Seconds per pass over ``batches`` for each variant (rounds in rotating order) and each
    variant's scores from its last pass."""
    names = list(runners)
    for w in range(warmup):
        for name in names:
            log(f"warm-up {w + 1}/{warmup}: {name}")
            runners[name](batches[0])
    seconds: dict[str, list[float]] = {n: [] for n in names}
    scores: dict[str, np.ndarray] = {}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            time.sleep(SETTLE_SECONDS)
            t0 = time.perf_counter()
            out = [runners[name](b) for b in batches]
            seconds[name].append(time.perf_counter() - t0)
            scores[name] = np.concatenate(out).astype(np.float64)
        done = ", ".join(f"{n} {seconds[n][-1]:.2f}s" for n in names)
        log(f"round {r + 1}/{repeats}: {done}")
    return seconds, scores


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
    lines += ["", "goals"]
    for g in result["goals"]:
        status = "PASS" if g["passed"] else ("n/a " if g["passed"] is None else "MISS")
        lines.append(f"  {status}  {g['goal']}: {g['measured']}")
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
            return {"goal": goal, "measured": "not measured", "passed": None}
        x = row["x_eager"]
        return {
            "goal": goal,
            "measured": f"{x:.2f}x",
            "value": x,
            "threshold": threshold,
            "passed": x >= threshold,
        }

    goals = [
        ratio_goal(
            "ort-fp32", f"ORT fp32 >= {GOAL_ORT_FP32_X_EAGER}x PyTorch eager", GOAL_ORT_FP32_X_EAGER
        )
    ]
    ort = rows.get("ort-fp32")
    goal = f"ORT fp32 >= {GOAL_ORT_FP32_OF_SGEMM_LIMIT:.0%} of the sgemm-bound limit"
    if ort is None:
        goals.append({"goal": goal, "measured": "not measured", "passed": None})
    else:
        frac = ort["crops_per_s"] / limit
        measured = f"{100 * frac:.1f}% ({ort['crops_per_s']:.2f} of {limit:.2f} crops/s"
        if nominal_limit:
            nominal_frac = ort["crops_per_s"] / nominal_limit
            measured += f"; {100 * nominal_frac:.1f}% at the nominal FLOPs"
        goals.append(
            {
                "goal": goal,
                "measured": measured + ")",
                "value": frac,
                "value_at_nominal_flops": ort["crops_per_s"] / nominal_limit
                if nominal_limit
                else None,
                "threshold": GOAL_ORT_FP32_OF_SGEMM_LIMIT,
                "passed": frac >= GOAL_ORT_FP32_OF_SGEMM_LIMIT,
            }
        )
    goals.append(
        ratio_goal(
            "ort-int8-cpu",
            f"ORT int8 (cpu target) >= {GOAL_INT8_CPU_X_EAGER}x PyTorch eager fp32",
            GOAL_INT8_CPU_X_EAGER,
        )
    )
    return goals


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from loda.checkpoint import load_checkpoint
    from loda.export.onnx import DEFAULT_OPSET, export_onnx, sha256_file
    from loda.metadata import read_safetensors_metadata
    from loda.preprocess import preprocess_image

    started = time.perf_counter()
    threads = args.threads or _common.usable_cpus()
    torch.set_num_threads(threads)
    load_before = _common.load_average()
    chosen = [v for v in VARIANTS if v.name == "torch-fp32" or v.name in args.variants]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    artifacts = Artifacts(out)

    # Weights
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise BenchError(f"no checkpoint at {args.checkpoint}")
        ckpt = args.checkpoint
        ckpt_sha = sha256_file(ckpt)
    else:
        ckpt = out / f"{args.config}.safetensors"
        ckpt_sha = artifacts.ensure(
            ckpt,
            {"config": args.config, "seed": args.seed, "kind": "random-init"},
            lambda: _common.make_checkpoint(args.config, args.seed, ckpt),
        )
    meta, _ = read_safetensors_metadata(ckpt)
    config, cfg = meta.model.name, meta.preprocess
    stem = ckpt.stem if args.checkpoint is not None else config

    # Images: calibration and benchmark images disjoint
    images = args.images if args.images is not None else default_images(out)
    n_bench = math.ceil(args.crops / cfg.num_crops)
    source, calib, held = pick_images(images, args.calib_images, n_bench)
    if len(calib) < args.calib_images:
        log(
            f"only {len(calib)} calibration images left in {source} (asked for {args.calib_images})"
        )
    calib_dir = out / "calib_images"
    write_calibration_folder(calib, calib_dir)

    # Graphs
    paths: dict[str, Path] = {"torch-fp32": ckpt}
    if args.onnx is not None:
        fp32 = paths["ort-fp32"] = args.onnx
        fp32_sha = check_given_onnx(fp32, ckpt_sha)
    else:
        fp32 = paths["ort-fp32"] = out / f"{stem}.onnx"
        fp32_sha = artifacts.ensure(
            fp32,
            {"checkpoint_sha256": ckpt_sha, "opset": DEFAULT_OPSET},
            lambda: export_onnx(ckpt, fp32, verify=False, log=log),
        )
    for v in chosen:
        if v.precision == "fp16":
            paths[v.name] = out / f"{stem}.fp16.onnx"
            artifacts.ensure(
                paths[v.name],
                {"fp32_sha256": fp32_sha},
                lambda p=paths[v.name]: make_fp16(fp32, p),
            )
        elif v.precision == "int8":
            from loda.calib.int8 import TARGETS

            path = paths[v.name] = out / f"{stem}{TARGETS[v.int8_target].suffix}"
            artifacts.ensure(
                path,
                {
                    "fp32_sha256": fp32_sha,
                    "target": v.int8_target,
                    # the target's quantization settings: a changed recipe means a new graph
                    "target_settings": json.loads(
                        json.dumps(dataclasses.asdict(TARGETS[v.int8_target]), default=dict)
                    ),
                    "method": args.method,
                    "calibration_source": source,
                    "calibration_images": [c.name for c in calib],
                },
                lambda p=path, t=v.int8_target: make_int8(
                    fp32, p, calib_dir, len(calib), t, args.method
                ),
            )

    # Yardsticks
    model, _ = load_checkpoint(ckpt)  # eval mode
    log("counting FLOPs (ONNX graph GEMMs, torch FlopCounterMode)")
    flops = count_flops(fp32, model, cfg.crop_size)
    flops["nominal_gflop_per_crop"] = NOMINAL_GFLOP_PER_CROP.get(config)
    log(f"measuring the sgemm peak with {threads} threads (sizes {args.sgemm_sizes})")
    sgemm_before = measure_sgemm_peak(args.sgemm_sizes, threads)
    torch.set_num_threads(threads)

    # Crops and runners
    crops = np.concatenate([preprocess_image(i.source, cfg) for i in held])[: args.crops]
    crops = np.ascontiguousarray(crops)
    batches = [
        np.ascontiguousarray(crops[i : i + args.batch]) for i in range(0, len(crops), args.batch)
    ]
    runners: dict[str, Callable] = {}
    for v in chosen:
        if v.runtime == "torch":
            runners[v.name] = eager_runner(model, cfg.mean, cfg.std)
        else:
            log(f"opening an ONNX Runtime session for {paths[v.name]}")
            runners[v.name] = ort_runner(paths[v.name], threads)

    log(f"timing {len(runners)} variants on {len(crops)} crops, {args.repeats} rounds")
    with thread_limits(threads):
        seconds, scores = time_variants(runners, batches, args.warmup, args.repeats)
    # Measured again after the timing and the best kept: noise only ever lowers a measured peak,
    # and a low peak would flatter every "% of peak" figure.
    log("measuring the sgemm peak again")
    sgemm = best_sgemm(sgemm_before, measure_sgemm_peak(args.sgemm_sizes, threads))
    gflop = flops["graph_gemm_gflop_per_crop"]
    limit = sgemm["peak_gflops"] / gflop

    eager_rate = len(crops) / statistics.median(seconds["torch-fp32"])
    rows = []
    for v in chosen:
        med = statistics.median(seconds[v.name])
        rate = len(crops) / med
        p = (
            None
            if v.name == "torch-fp32"
            else parity(scores[v.name], scores["torch-fp32"], cfg.num_crops)
        )
        rows.append(
            {
                "name": v.name,
                "label": v.label,
                "runtime": v.runtime,
                "precision": v.precision,
                "int8_target": v.int8_target,
                "path": str(paths[v.name]),
                "size_mb": paths[v.name].stat().st_size / 1e6,
                "seconds_per_round": seconds[v.name],
                "median_seconds": med,
                "crops_per_s": rate,
                "spread_pct": 100 * (max(seconds[v.name]) - min(seconds[v.name])) / med,
                "x_eager": rate / eager_rate,
                "gflops": rate * gflop,
                "pct_of_sgemm_peak": 100 * rate * gflop / sgemm["peak_gflops"],
                "parity": None if p is None else parity_record(p),
                "parity_verdict": "reference" if p is None else parity_verdict(v, p),
            }
        )
    by_name = {r["name"]: r for r in rows}
    nominal = flops["nominal_gflop_per_crop"]
    nominal_limit = sgemm["peak_gflops"] / nominal if nominal else None
    return {
        "schema": SCHEMA,
        "config": config,
        "settings": {
            "crops": len(crops),
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
        "flops": flops,
        "sgemm": sgemm,
        "sgemm_bound_limit_crops_per_s": limit,
        "sgemm_bound_limit_nominal_crops_per_s": nominal_limit,
        "variants": rows,
        "goals": judge_goals(by_name, limit, nominal_limit),
        "peak_rss_gb": _peak_rss_gb(),
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    return _common.bench_main(argv, parse_args, run, render, "bench_export.json")


if __name__ == "__main__":
    sys.exit(main())
