"""TensorRT for RTX engine builds: build time, peak RSS and plan size, side by side in one run.

For each ``--configs`` model (random init; default loda_micro and loda_b16) and each precision
(FP32 export, FP16 graph, INT8 Q/DQ graph for TensorRT), builds the RTX engine with
:func:`loda.export.trt.build_engine` in its own subprocess, so the peak resident set size of
the build (``ru_maxrss`` of that child from ``os.wait4``: the parse and the build, plus the
Python interpreter and imports) is the build's alone. No GPU is needed. The peak is the child's
``VmHWM`` (``/proc/self/status``, reset by ``exec``); ``ru_maxrss`` from ``os.wait4`` is not
used as the figure because Linux carries the parent's peak over ``fork`` into it.

Also reports what graph hygiene changes: the TensorRT network's layer count (and its layers
with INT64 outputs) of the exporter's graph before and after the shape arithmetic is folded
(:func:`loda.export.onnx.fold_shape_arithmetic`), for the FP32 and FP16 graphs.

Artifacts (checkpoints, ONNX files, the calibration images) live in ``--out`` and are reused
while what they were made from is unchanged. Output: a table on stdout and the JSON
(``--json``, default ``OUT/bench_build.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    Artifacts,
    BenchError,
    bench_main,
    load_average,
    log,
    machine_description,
    make_checkpoint,
)

PRECISIONS = ("fp32", "fp16", "int8")
ROOT = Path(__file__).resolve().parent.parent

_BUILD_CHILD = """
import json, sys, time
from loda.export.trt import build_engine, parse_batch_profile
onnx_path, engine_path, profile = sys.argv[1:4]
t0 = time.perf_counter()
r = build_engine(onnx_path, engine_path, flavor="rtx", profile=parse_batch_profile(profile))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({"build_s": r.build_seconds, "total_s": time.perf_counter() - t0,
                  "plan_bytes": r.plan_bytes, "network": r.sidecar["network"],
                  "version": r.sidecar["tensorrt_version"],
                  "vm_hwm_kb": int(hwm[0].split()[1]) if hwm else None}))
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from loda.config import list_configs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--configs",
        default="loda_micro,loda_b16",
        help="comma-separated model configurations (random init)",
    )
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="of fp32,fp16,int8")
    p.add_argument("--out", type=Path, default=Path("out/bench/build"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--batch", default="15:60:240", help="optimisation profile MIN:OPT:MAX")
    p.add_argument("--calib-images", type=int, default=8, help="INT8 calibration images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fold-report", action="store_true", help="skip the before/after counts")
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in list_configs()]
    if unknown or not args.configs:
        p.error(f"unknown --configs {unknown}; known: {', '.join(list_configs())}")
    args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if not args.precisions or set(args.precisions) - set(PRECISIONS):
        p.error(f"--precisions: a comma-separated subset of {', '.join(PRECISIONS)}")
    return args


def _network_layers(onnx_path: Path) -> dict[str, int]:
    """Layers of the TensorRT-RTX network parsed from ``onnx_path`` (no build)."""
    from loda.export.trt import import_tensorrt, network_stats
    from loda.trt_common import make_logger

    trt = import_tensorrt("rtx")
    logger = make_logger(trt, lambda _m: None)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise BenchError(f"TensorRT-RTX cannot parse {onnx_path}")
    stats = network_stats(trt, network, 224)
    return {"layers": stats.layers, "int64_layers": stats.int64_layers}


def _onnx_nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def _build(onnx_path: Path, engine: Path, profile: str) -> dict[str, Any]:
    """One RTX build in a child process: its report and its peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _BUILD_CHILD, str(onnx_path), str(engine), profile],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise BenchError(f"RTX build of {onnx_path} failed: {tail[0]}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "build_s": round(report["build_s"], 2),
        "child_wall_s": round(wall, 2),
        "peak_rss_mb": round(report["vm_hwm_kb"] / 1024, 1) if report["vm_hwm_kb"] else None,
        "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB; includes the parent's
        "plan_mb": round(report["plan_bytes"] / 1e6, 2),
        "layers": report["network"]["layers"],
        "int64_layers": report["network"]["int64_layers"],
        "gemm_flop_share": report["network"]["gemm_flop_share"],
        "tensorrt_rtx": report["version"],
    }


def _graphs(config: str, args: argparse.Namespace, art: Artifacts, images: Path) -> dict[str, Path]:
    import onnx

    from loda.calib.fp16 import convert_onnx_fp16
    from loda.calib.int8 import quantize_onnx_int8
    from loda.export.onnx import export_onnx

    d = args.out / config
    ckpt = d / f"{config}.safetensors"
    ckpt_sha = art.ensure(
        ckpt,
        {"config": config, "seed": args.seed},
        lambda: make_checkpoint(config, args.seed, ckpt),
    )
    paths: dict[str, Path] = {}
    for fold in (True, False) if not args.no_fold_report else (True,):
        tag = "" if fold else ".unfolded"
        fp32 = d / f"{config}{tag}.onnx"
        art.ensure(
            fp32,
            {"checkpoint": ckpt_sha, "fold": fold},
            lambda fp32=fp32, fold=fold: export_onnx(ckpt, fp32, verify=False, fold=fold),
        )
        paths[f"fp32{tag}"] = fp32
        if "fp16" in args.precisions:
            fp16 = d / f"{config}{tag}.fp16.onnx"

            def make_fp16(fp32: Path = fp32, fp16: Path = fp16) -> None:
                model, _ = convert_onnx_fp16(onnx.load(str(fp32)))
                onnx.save(model, str(fp16))

            art.ensure(fp16, {"fp32": art.records[art.key(fp32)]["sha256"]}, make_fp16)
            paths[f"fp16{tag}"] = fp16
    if "int8" in args.precisions:
        int8 = d / f"{config}.int8.onnx"
        art.ensure(
            int8,
            {"fp32": art.records[art.key(paths["fp32"])]["sha256"], "n": args.calib_images},
            lambda: quantize_onnx_int8(
                paths["fp32"],
                int8,
                images=images,
                target="tensorrt",
                calib_images=args.calib_images,
                verify=False,
            ),
        )
        paths["int8"] = int8
    return paths


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loda.data.demo import make_demo_set
    from loda.export.trt import import_tensorrt, parse_batch_profile

    try:
        parse_batch_profile(args.batch)
    except ValueError as exc:
        raise BenchError(f"--batch: {exc}") from None
    trt = import_tensorrt("rtx")  # one line when TensorRT-RTX is missing
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    art = Artifacts(args.out)
    images = args.out / "calib_images"
    if not (images / "demo.csv").is_file():
        make_demo_set(images, seed=args.seed, references=["astronaut", "coffee"])
    result: dict[str, Any] = {
        "benchmark": "bench_build",
        "machine": machine_description(),
        "load_average_at_start": load_average(),
        "tensorrt_rtx": trt.__version__,
        "profile": args.batch,
        "configs": {},
    }
    for config in args.configs:
        log(f"{config}: graphs")
        paths = _graphs(config, args, art, images)
        entry: dict[str, Any] = {"builds": {}, "folding": {}}
        for precision in args.precisions:
            engine = args.out / config / f"{config}.{precision}.rtx.engine"
            log(f"{config} {precision}: building the RTX engine")
            entry["builds"][precision] = _build(paths[precision], engine, args.batch)
            b = entry["builds"][precision]
            log(
                f"  {b['build_s']} s, peak RSS {b['peak_rss_mb']} MB, plan {b['plan_mb']} MB, "
                f"{b['layers']} layers"
            )
        if not args.no_fold_report:
            for precision in ("fp32", "fp16"):
                if f"{precision}.unfolded" not in paths:
                    continue
                before, after = paths[f"{precision}.unfolded"], paths[precision]
                entry["folding"][precision] = {
                    "onnx_nodes": {"before": _onnx_nodes(before), "after": _onnx_nodes(after)},
                    "tensorrt": {
                        "before": _network_layers(before),
                        "after": _network_layers(after),
                    },
                }
        result["configs"][config] = entry
    result["artifacts"] = art.events
    result["load_average_at_end"] = load_average()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        f"TensorRT-RTX {result['tensorrt_rtx']} builds (profile {result['profile']}) on "
        f"{result['machine']['cpu_model']} ({result['machine']['usable_cpus']} CPUs, no GPU)",
        "",
        f"{'config':12} {'precision':9} {'build s':>8} {'peak RSS MB':>12} {'plan MB':>8} "
        f"{'layers':>7}  GEMM FLOPs by TensorRT type",
    ]
    for config, entry in result["configs"].items():
        for precision, b in entry["builds"].items():
            shares = ", ".join(f"{k} {v:.1%}" for k, v in b["gemm_flop_share"].items())
            lines.append(
                f"{config:12} {precision:9} {b['build_s']:8.1f} {b['peak_rss_mb']:12.0f} "
                f"{b['plan_mb']:8.1f} {b['layers']:7d}  {shares}"
            )
    folds = [(c, e["folding"]) for c, e in result["configs"].items() if e["folding"]]
    if folds:
        lines += ["", "shape arithmetic folded at export: before -> after"]
        for config, folding in folds:
            for precision, f in folding.items():
                t, n = f["tensorrt"], f["onnx_nodes"]
                lines.append(
                    f"{config:12} {precision:5} ONNX nodes {n['before']} -> {n['after']}; "
                    f"TensorRT layers {t['before']['layers']} -> {t['after']['layers']} "
                    f"(INT64 outputs {t['before']['int64_layers']} -> "
                    f"{t['after']['int64_layers']})"
                )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(argv, parse_args, run, render, "bench_build.json")


if __name__ == "__main__":
    sys.exit(main())
