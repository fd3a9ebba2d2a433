"""Arguments, the section plan, the printed summary."""

from __future__ import annotations

import argparse
import json
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loda.metadata import now_utc

from . import accel
from .check import Check
from .common import Report, first_line, log, write_json
from .images import REPO
from .recommend import recommendation


def _parity_lines(par: dict[str, Any]) -> list[str]:
    lines = []
    for label, m in (par.get("models") or {}).items():
        lines.append(f"parity {label}: variant  max|d|img  Spearman  dSRCC  ok")
        for key, e in m["variants"].items():
            if "max_abs_d_image" in e:
                lines.append(
                    f"  {key:<15}{e['max_abs_d_image']!s:<11}{e['spearman_vs_fp32']!s:<10}"
                    f"{e['dsrcc']!s:<8}{e['acceptable']}"
                )
            elif e.get("status") != "ok":
                lines.append(f"  {key:<15}{e.get('status')}")
    return lines


def summary(report: Report) -> str:
    d = report.data
    s = d["sections"]
    env = s.get("env", {})
    gpu = env.get("gpu") or {}
    lines = [
        f"LoDa GPU check: {gpu.get('name', env.get('device', '?'))} "
        f"(sm {gpu.get('compute_capability', '-')}), torch {env.get('torch', '?')}, "
        f"{env.get('cpu_affinity', '?')} cores; {d['elapsed_s']:.0f} s of {d['budget_s']:.0f} s",
        "section          status",
    ]
    for name, entry in s.items():
        lines.append(
            f"  {name:<15}{str(entry.get('status'))[:70]}  ({entry.get('seconds', 0):.1f} s)"
        )
    img = s.get("images", {})
    if img.get("source"):
        generated = " (GENERATED, not demo photos)" if img.get("generated") else ""
        lines.append(f"images: {img['n_images']} from {img['source']}{generated}")
    lines += _parity_lines(s.get("parity", {}))
    batches = d["settings"].get("batches", [])
    thr = (s.get("throughput") or {}).get("variants") or {}
    if thr:
        lines.append("crops/s (eager)   " + "  ".join(f"b{b:>5}" for b in batches))
        for name, t in thr.items():
            vals = [t["batches"].get(str(b), {}).get("items_per_s") for b in batches]
            lines.append(
                f"  {name:<22}" + "  ".join(f"{v if v is not None else '-':>7}" for v in vals)
            )
    dec = s.get("decode", {})
    if dec.get("one_core"):
        pp = dec.get("process_pool", {})
        lines.append(
            f"decode: 1 core {dec['one_core']['images_per_s']} img/s; {pp.get('processes', '?')} "
            f"processes {pp.get('images_per_s', '-')} img/s ({pp.get('crops_per_s', '-')} crops/s)"
        )
    rec = (s.get("recommendation") or {}).get("torch_backend_defaults")
    if rec:
        lines.append(f"recommendation: {json.dumps(rec)}")
    if d["errors"]:
        lines.append("errors: " + "; ".join(d["errors"]))
    lines.append(f"report: {report.path}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The LoDa GPU check: one JSON report.")
    add = p.add_argument
    add("--out", default=str(REPO / "out" / "gpu_check.json"), help="JSON report path")
    add("--device", default="auto", help="auto (cuda if present), cuda, cuda:N or cpu")
    add("--smoke", action="store_true", help="loda_micro, tiny counts: test the code paths")
    add("--images", default=None, help="bundle dir (manifest.json), demo set dir or image folder")
    add("--config", default=None, help="model config (default loda_b16; smoke: loda_micro)")
    add("--n-images", type=int, default=None, help="images for parity/decode (default 40; smoke 4)")
    add("--batches", default=None, help="comma list (default 15,60,240; smoke 1,2)")
    add(
        "--crops-per-image",
        type=int,
        default=None,
        help="grid crops per image (default 15; smoke 3)",
    )
    add("--smoke-workers", action="store_true",
        help="with --smoke on the CPU: also run the torch.compile child process (backend eager)")  # fmt: skip
    add("--parity-batch", type=int, default=None, help="batch for the parity runs (default 60)")
    add("--budget", type=float, default=440.0, help="seconds for the whole check (default 440)")
    add("--seed", type=int, default=0)
    add("--max-dsrcc", type=float, default=0.002)
    add("--min-spearman", type=float, default=0.998)
    add("--compile-mode", default="default",
        help="torch.compile mode (default; max-autotune-no-cudagraphs is much slower)")  # fmt: skip
    add("--compile-backend", default="inductor")
    add("--compile-max-s", type=float, default=200.0)
    add("--trt-reserve", type=float, default=150.0,
        help="seconds kept for TensorRT when it is importable")  # fmt: skip
    add("--trt-opt-level", type=int, default=3)
    add("--skip", default="", help="comma list of sections to skip")
    add("--worker", choices=("compile", "tensorrt"), help=argparse.SUPPRESS)
    add("--worker-spec", help=argparse.SUPPRESS)
    add("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.config = args.config or ("loda_micro" if args.smoke else "loda_b16")
    args.n_images = args.n_images or (4 if args.smoke else 40)
    args.crops_per_image = args.crops_per_image or (3 if args.smoke else 15)
    args.parity_batch = args.parity_batch or (6 if args.smoke else 60)
    batches = args.batches or ("1,2" if args.smoke else "15,60,240")
    args.batches = [int(b) for b in str(batches).split(",") if b.strip()]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


def run_worker_process(args: argparse.Namespace) -> int:
    from .workers import worker_compile, worker_tensorrt

    spec = json.loads(Path(args.worker_spec).read_text(encoding="utf-8"))
    out = Path(args.worker_out)
    try:
        {"compile": worker_compile, "tensorrt": worker_tensorrt}[args.worker](spec, out)
    except Exception as exc:
        data = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
        data.update(status="error", error=first_line(exc), traceback=traceback.format_exc()[-2500:])
        write_json(out, data)
        return 1
    return 0


def run_sections(check: Check, report: Report, skip: set[str]) -> None:
    plan: list[tuple[str, Callable[[], dict[str, Any]], float]] = [
        ("env", check.env, 0),
        ("images", check.load_images, 0),
        ("parity", check.parity, 15),
        ("throughput", check.run_throughput, 10),
        ("decode", check.decode, 8),
        ("cuda_graphs", lambda: accel.cuda_graphs(check), 15),
        ("torch_compile", lambda: accel.torch_compile(check), 0),
        ("tensorrt", lambda: accel.tensorrt(check), 0),
        ("recommendation", lambda: recommendation(check), 0),
    ]
    for name, fn, needs in plan:
        if name in skip:
            report.data["sections"][name] = {"status": "skipped: --skip", "seconds": 0.0}
            continue
        if name != "env" and check.torch is None and name not in ("images", "decode"):
            report.data["sections"][name] = {
                "status": "skipped: env failed (no torch)",
                "seconds": 0.0,
            }
            continue
        report.section(name, fn, needs_s=needs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker_process(args)
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
        run_sections(Check(args, report, Path(tmp_name)), report, args.skip)
    report.data["finished"] = now_utc()
    report.data["complete"] = True
    report.write()
    print(summary(report))
    return 0
