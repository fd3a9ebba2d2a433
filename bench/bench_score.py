"""Images per second of ``loda-score`` end to end, beside inference alone and a PyTorch loop.

Measures, in ONE run, on the same images, with the same inference thread count for everybody
(issue 5, "Performance"):

1. Throughput, after warm-up, in interleaved rounds (the order rotates from round to round, so
   machine noise hits every way alike; medians are reported):

   - ``inference``: ``Scorer.open(onnx).backend.infer`` (ONNX Runtime FP32, CPU) on the crops of
     the benchmark images, made beforehand, in batches of 60 crops: the ceiling of the pipeline;
   - ``pipeline``: :func:`loda.runtime.pipeline.score_items` in this process on the tar (worker
     processes decode, the main thread infers, rows go to a CSV): ``loda-score`` without the
     interpreter start-up;
   - ``loda-score``: the command as a subprocess on the tar (``-o`` a CSV), wall time from start
     to exit; its start-up (interpreter, imports, model load) is measured on its own as
     ``loda-score`` on an empty archive and reported, and subtracted for the goal;
   - ``torch-loop``: the authors' evaluation style: one image at a time through
     :func:`loda.inference.score_image` (Pillow decode, resize and 15 crops with the torchvision
     rule, normalise, eager FP32 without autograd, the mean of the crop scores).

   Every way's per-image scores are compared with the PyTorch loop's (max |dscore|), so a fast
   but wrong way shows.
2. Decode: images/s of :func:`loda.runtime.scorer.prepare_image` (decode + resize + 15 crops)
   for a 1024x768 JPEG and a 512x384 PNG, per worker (in this process) and with ``-j`` worker
   processes (``loda-score``'s own ``DecodePool`` running ``prepare_image``, the crops returned to
   the parent).
3. Memory: peak resident memory of ``loda-score`` and all its processes (the worker pool and
   the fork server; polled from ``/proc``) for a tar of M and of 4M images, with ``loda_micro``
   so this part is quick; the pipeline's queue bounds what is in flight, so both should match.

Images: the demo set's reference photographs (scikit-image and scikit-learn, see
:mod:`loda.data.demo`) fitted to 1024x768 (saved as JPEG, quality 90) and 512x384 (PNG), in
``--out``. Models: a random-init checkpoint of ``--config`` and its FP32 ONNX export, made in
``--out`` and reused while their inputs are unchanged (``artifacts.json``). Random weights do
not change the speed. Code: ``score_setup`` (images, models), ``score_ways`` (the ways),
``score_throughput``, ``score_decode_memory`` (the parts). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/*.py, run as a script

import _common
from _common import Artifacts
from proctree import TreeMemory
from score_decode_memory import (
    DEFAULT_MEMORY_IMAGES,
    MEMORY_CONFIG,
    MEMORY_FACTOR,
    MEMORY_MIN_QUEUES,
    run_decode,
    run_memory,
)
from score_setup import FORMATS, ensure_model, make_images, make_tar, model_from_onnx
from score_throughput import run_throughput

# bench_ray.py takes these from here.
__all__ = ["FORMATS", "TreeMemory", "main", "make_images", "make_tar"]

SCHEMA = 1
DEFAULT_OUT = Path("out/bench/score")
DEFAULT_IMAGES = 8  # loda_b16 infers ~2-3 crops/s on 2 cores: 8 x 15 crops is ~1 min a pass
DEFAULT_REPEATS = 3
DEFAULT_DECODE_IMAGES = 24
SETTLE_SECONDS = 0.3  # idle gap before each timed pass: spinning threads of the last one sleep
QUICK = {"images": 2, "repeats": 1, "decode_images": 4, "memory_images": 4}
SECTIONS = ("throughput", "decode", "memory")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _render_header(result: dict[str, Any]) -> list[str]:
    m = result["machine"]
    v = m["versions"]
    return [
        f"LoDa {result['config']} scoring benchmark on {m['cpu_model']} ({m['usable_cpus']} "
        f"usable CPUs); {result['settings']['threads']} inference threads for ORT and torch",
        f"python {m['python']}, torch {v.get('torch', '?')}, onnxruntime "
        f"{v.get('onnxruntime', v.get('onnxruntime-gpu', '?'))}, numpy {v.get('numpy', '?')}, "
        f"pillow {v.get('pillow', '?')}; git {str(m.get('git_commit'))[:12]}",
        f"weights: {result['model']['source']}; ONNX graph "
        f"{result['model'].get('onnx_precision', 'fp32')}; median of "
        f"{result['settings']['repeats']} interleaved round(s) after warm-up; load average "
        f"{result['load_average']['before']} "
        f"-> {result['load_average']['after']}",
    ]


def _render_throughput(t: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"throughput: {t['images']} images ({t['format']}, reference photos; tar "
        f"{t['tar_mb']:.1f} MB), {t['crops_per_image']} crops each, batches of "
        f"{t['batch_crops']} crops, {t['score_jobs']} decode worker(s), queue "
        f"{t['queue_images']} images",
    ]
    header = (
        f"{'way':<40} {'images/s':>9} {'crops/s':>8} {'median s':>9} {'spread':>7} "
        f"{'overhead':>9} {'+ s':>7} {'x torch':>8} {'max |d|':>9}"
    )
    lines += [header, "-" * len(header)]
    for r in t["ways"]:
        spread = "-" if r["spread_pct"] is None else f"{r['spread_pct']:.1f}%"
        lines.append(
            f"{r['label']:<40} {r['images_per_s']:9.3f} {r['crops_per_s']:8.2f} "
            f"{r['median_seconds']:9.2f} {spread:>7} "
            f"{100 * r['overhead_vs_inference']:8.1f}% {r['overhead_seconds']:7.2f} "
            f"{r['x_torch_loop']:8.2f} "
            + (
                f"{'reference':>9}"
                if r["name"] == "torch-loop"
                else f"{r['max_abs_vs_torch_loop']:9.2e}"
            )
        )
    s = t["startup"]
    lines.append(
        "overhead: time over inference alone's, as a share of it; + s: seconds over it "
        "(fixed costs such as starting the workers do not grow with the images); max |d|: "
        "per-image score vs the PyTorch loop"
    )
    lines.append(
        f"loda-score start-up (empty tar: interpreter, imports, model load): "
        f"{s['median_seconds']:.2f} s, excluded by {t['start_up_excluded_by']}; "
        f"loda-score's own timer per round (0.1 s): {t['loda_score_own_seconds_per_round']} s"
    )
    return lines


def _render_decode(d: dict[str, Any]) -> list[str]:
    jobs = [s["jobs"] for s in d["formats"][0]["scaling"]]
    lines = ["", "decode (prepare_image: decode + resize + crops), images/s"]
    header = f"{'format':<16} {'KB/file':>8} {'1 worker':>9} " + " ".join(
        f"{f'-j {j}':>8}" for j in jobs
    )
    lines += [header, "-" * len(header)]
    for row in d["formats"]:
        cells = " ".join(
            f"{s['images_per_s']:8.1f}"
            + ("" if s["x_one_worker"] is None else f" ({s['x_one_worker']:.2f}x)")
            for s in row["scaling"]
        )
        lines.append(
            f"{row['label']:<16} {row['mean_file_kb']:8.0f} "
            f"{row['per_worker_images_per_s']:9.1f} {cells}"
        )
    lines.append("(1 worker: in-process; -j N: worker processes, crops sent back; (x -j 1))")
    return lines


def _render_memory(mem: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"memory: loda-score with {mem['config']} (a tiny model, so this part is quick), "
        f"-j {mem['jobs']}, queue {mem['queue_images']} images "
        f"(<= {mem['in_flight_crops_mb']:.0f} MB of crops in flight), /proc polled every "
        f"{mem['poll_seconds']} s",
    ]
    header = (
        f"{'images':>7} {'tar MB':>8} {'peak RSS sum':>13} {'peak PSS sum':>13} "
        f"{'RSS over 1 img':>15} {'largest proc':>13} {'procs':>6} {'seconds':>8}"
    )
    lines += [header, "-" * len(header)]
    for r in mem["runs"]:
        lines.append(
            f"{r['images']:7d} {r['archive_mb']:8.1f} {r['peak_rss_sum_mb']:10.0f} MB "
            f"{r['peak_pss_sum_mb']:10.0f} MB {r['above_1_image_rss_mb']:12.0f} MB "
            f"{r['largest_process_hwm_mb']:10.0f} MB {r['processes']:6d} {r['seconds']:8.1f}"
        )
    return lines


def render(result: dict[str, Any]) -> str:
    lines = _render_header(result)
    if result.get("throughput"):
        lines += _render_throughput(result["throughput"])
    if result.get("decode"):
        lines += _render_decode(result["decode"])
    if result.get("memory"):
        lines += _render_memory(result["memory"])
    lines += ["", "goals", *_common.goal_lines(result["goals"])]
    if not result["goals"]:
        lines.append("  (no section with a goal was run)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    _common.add_model_arguments(
        parser,
        default_out=DEFAULT_OUT,
        onnx_help="its FP32 export (recorded source sha256 must match); default: exported in --out",
        seed_help="seed of random-init checkpoints",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help=f"images scored per pass (default {DEFAULT_IMAGES}; keep it small for loda_b16)",
    )
    parser.add_argument("--threads", type=int, default=None, help="default: all usable CPUs")
    parser.add_argument(
        "--jobs",
        type=int,
        nargs="+",
        default=None,
        help="worker counts of the decode scaling table (default 1..usable CPUs)",
    )
    parser.add_argument(
        "--score-jobs",
        type=int,
        default=None,
        help="loda-score -j for the throughput and memory parts (default: its own, all CPUs)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"rounds, median reported ({DEFAULT_REPEATS})"
    )
    parser.add_argument(
        "--decode-images",
        type=int,
        default=None,
        help=f"images per format in the decode part ({DEFAULT_DECODE_IMAGES})",
    )
    parser.add_argument(
        "--memory-images",
        type=int,
        default=None,
        help=f"M: the memory part scores tars of M and {MEMORY_FACTOR}M images (default "
        f"{DEFAULT_MEMORY_IMAGES}, at least {MEMORY_MIN_QUEUES} x the pipeline's queue)",
    )
    parser.add_argument(
        "--memory-onnx",
        type=Path,
        help=f"FP32 ONNX of {MEMORY_CONFIG} for the memory part (default: the benchmarked model "
        f"if it is {MEMORY_CONFIG}, else a random-init one made in --out)",
    )
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to run"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny counts for a smoke test: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
        + " (explicit options win)",
    )
    parser.add_argument(
        "--any-precision",
        action="store_true",
        help="accept an FP16 or INT8 graph of the checkpoint as --onnx (measured and reported; "
        "the goals, set for FP32, are not judged)",
    )
    parser.add_argument("--json", type=Path, help="default: OUT/bench_score.json")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/bench_score.py",
        description="loda-score end to end vs inference alone vs a PyTorch loop; decode "
        "throughput; peak memory.",
    )
    _add_arguments(parser)
    args = parser.parse_args(argv)
    defaults = {
        "images": DEFAULT_IMAGES,
        "repeats": DEFAULT_REPEATS,
        "decode_images": DEFAULT_DECODE_IMAGES,
        "memory_images": 0,  # 0: chosen by the memory part (see --memory-images)
    }
    for key, value in (QUICK if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.memory_images < 0:
        parser.error("--memory-images must be >= 1")
    if args.onnx is not None and args.checkpoint is None:
        parser.error("--onnx needs the --checkpoint it was exported from")
    for name in ("images", "repeats", "decode_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    # Quick mode checks plumbing, not speed: no idle gaps between timed passes.
    args.settle = 0.0 if args.quick else SETTLE_SECONDS
    cpus = _common.usable_cpus()
    args.threads = args.threads or cpus
    args.jobs = args.jobs or list(range(1, cpus + 1))
    if args.score_jobs is None:
        from loda.runtime.pipeline import default_jobs

        args.score_jobs = default_jobs()
    if args.threads < 1 or args.score_jobs < 1 or min(args.jobs) < 1:
        parser.error("--threads, --jobs and --score-jobs must be >= 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = _common.load_average()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    artifacts = Artifacts(out)
    precisions = ("fp32", "fp16", "int8") if args.any_precision else ("fp32",)
    model = ensure_model(
        artifacts, out, args.config, args.seed, args.checkpoint, args.onnx, precisions
    )
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "config": model.config,
        "settings": {
            "images": args.images,
            "repeats": args.repeats,
            "threads": args.threads,
            "score_jobs": args.score_jobs,
            "decode_jobs": args.jobs,
            "decode_images": args.decode_images,
            "quick": args.quick,
            "sections": args.sections,
            "settle_seconds": args.settle,
        },
        "machine": _common.machine_description(),
        "model": {
            "checkpoint": str(model.checkpoint),
            "onnx": str(model.onnx),
            "onnx_precision": model.precision,
            "source": model.source,
        },
        "images": "scikit-image / scikit-learn reference photographs (loda.data.demo), fitted "
        "(centre crop, bicubic) to 1024x768 JPEG q90 and 512x384 PNG",
    }
    goals = []
    if "throughput" in args.sections:
        result["throughput"] = run_throughput(args, model, out)
        if model.precision != "fp32":  # the goals are set for the FP32 graph
            for goal in result["throughput"]["goals"]:
                _common.not_judged(
                    goal, f" (not judged: a {model.precision} graph; goals are for FP32)"
                )
        goals += result["throughput"]["goals"]
    if "decode" in args.sections:
        result["decode"] = run_decode(args, model, out)
    if "memory" in args.sections:
        if args.memory_onnx is not None:
            mem_model = model_from_onnx(args.memory_onnx)
        elif model.config == MEMORY_CONFIG:
            mem_model = model
        else:
            mem_model = ensure_model(artifacts, out / "memory_model", MEMORY_CONFIG, args.seed)
        result["memory"] = run_memory(args, mem_model, out)
        goals += result["memory"]["goals"]
    result["goals"] = goals
    result["artifacts"] = artifacts.events
    result["load_average"] = {"before": load_before, "after": _common.load_average()}
    result["seconds"] = time.perf_counter() - started
    shutil.rmtree(out / "scratch", ignore_errors=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return _common.bench_main(argv, parse_args, run, render, "bench_score.json")


if __name__ == "__main__":
    sys.exit(main())
