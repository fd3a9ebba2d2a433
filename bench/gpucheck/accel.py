"""Beyond eager: CUDA graphs (in process), torch.compile and TensorRT (child processes with a
time cap), and the recommendation drawn from everything measured."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

from .check import Check
from .common import Skip, first_line, module_available, r, speedup, write_json
from .images import REPO
from .variants import VARIANTS, Runner, tile_batch, time_blocks

ENTRY = REPO / "bench" / "gpu_check.py"


def graph_candidates(check: Check) -> list[str]:
    """fp32_tf32 plus the two fastest acceptable non-fp32 eager variants (largest batch)."""
    big = max(check.args.batches)
    ranked = sorted(
        (
            (rows[big]["items_per_s"], name)
            for name, rows in check.throughput.items()
            if big in rows
            and rows[big].get("items_per_s")
            and VARIANTS[name].mode != "fp32"
            and not VARIANTS[name].end_to_end
            and check.acceptable.get(VARIANTS[name].precision_key, False)
        ),
        reverse=True,
    )
    names = [n for _, n in ranked[:2]] or ["fp16_autocast"]
    return ["fp32_tf32", *[n for n in names if n != "fp32_tf32"]]


def _graph_row(check: Check, runner: Runner, name: str, x_all: Any, b: int) -> dict[str, Any]:
    """Capture one CUDA graph of ``runner`` at batch ``b``; its replay speed and difference."""
    torch = check.torch
    static_x = runner.prepare(tile_batch(x_all, b)).clone()
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
        torch.cuda.reset_peak_memory_stats(check.device)
        row = time_blocks(torch, check.device, graph.replay, n_items=b, cfg=check.timing)
    row.update(
        status="ok",
        capture_s=r(capture_s, 3),
        max_abs_d_vs_eager=r(max_d, 8),
        peak_mem_mib=r(torch.cuda.max_memory_allocated(check.device) / 2**20, 1),
        speedup_vs_eager=speedup(row, check.throughput.get(name, {}).get(b)),
        speedup_vs_fp32=speedup(row, check.throughput.get("fp32", {}).get(b)),
    )
    return row


def cuda_graphs(check: Check) -> dict[str, Any]:
    check.need_cuda()
    torch = check.torch
    x_all = check.device_crops()
    model = check.main_model()
    out: dict[str, Any] = {"variants": {}}
    for name in graph_candidates(check):
        rows: dict[str, Any] = {}
        out["variants"][name] = rows
        # The autocast cache must be off under capture: cached casts would be freed when the
        # autocast context closes, while the graph keeps pointing at them.
        runner = Runner(torch, model, VARIANTS[name], check.device, cache=False)
        for b in check.args.batches:
            if check.report.left() < 10:
                rows[str(b)] = {"status": "skipped: time budget"}
                continue
            try:
                rows[str(b)] = _graph_row(check, runner, name, x_all, b)
                check.extra_entries.append(
                    {"kind": "cuda_graph", "variant": name, "batch": b, **rows[str(b)]}
                )
            except Exception as exc:
                rows[str(b)] = {"status": "error", "error": first_line(exc)}
            finally:
                with contextlib.suppress(Exception):  # a failed capture may poison these
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
            check.report.write()
        del runner
    return out


# -- child processes ----------------------------------------------------------------------


def worker_spec(check: Check, **extra: Any) -> dict[str, Any]:
    crops = check.tmp / "crops.npy"
    if not crops.exists():
        np.save(crops, check.crops)
    return {
        "config": check.args.config,
        "seed": check.args.seed,
        "device": str(check.device),
        "crops": str(crops),
        "crops_per_image": check.crops_per_image,
        "timing": check.timing,
        "parity_batch": check.args.parity_batch,
        "smoke": check.args.smoke,
        "work": str(check.tmp),
        **extra,
    }


def _wait(proc: subprocess.Popen, timeout_s: float) -> tuple[int, bool]:
    """The exit status; the process group is killed when ``timeout_s`` passes."""
    try:
        return proc.wait(timeout=max(1.0, timeout_s)), False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=10), True
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(), True


def run_worker(check: Check, kind: str, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``bench/gpu_check.py --worker KIND``; its JSON result, exit status and log tail."""
    spec_path = check.tmp / f"{kind}.spec.json"
    out_path = check.tmp / f"{kind}.out.json"
    err_path = check.tmp / f"{kind}.stderr.txt"
    write_json(spec_path, spec)
    cmd = [sys.executable, str(ENTRY), "--worker", kind, "--worker-spec", str(spec_path)]
    cmd += ["--worker-out", str(out_path)]
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, start_new_session=True)
        rc, killed = _wait(proc, timeout_s)
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


def torch_compile(check: Check) -> dict[str, Any]:
    args = check.args
    left = check.report.left()
    trt_reserve = args.trt_reserve if (check.cuda and module_available("tensorrt")) else 0
    timeout_s = min(args.compile_max_s, left - trt_reserve - 10)
    if not check.cuda:
        if not (args.smoke and args.smoke_workers):
            raise Skip("no CUDA")
        spec = worker_spec(
            check, variant="fp16_autocast", backend="eager", mode=None, batches=args.batches[:1]
        )
        plumbing = run_worker(check, "compile", spec, max(30.0, min(90.0, left - 5)))
        return {
            "status": "skipped: no CUDA (plumbing checked with backend='eager' on the CPU)",
            "plumbing_check": plumbing,
        }
    if timeout_s < 60:
        raise Skip(f"time budget ({left:.0f} s left, TensorRT reserve {trt_reserve} s)")
    if not (module_available("triton") or args.compile_backend != "inductor"):
        raise Skip("triton is not installed (inductor needs it on CUDA)")
    candidates = [n for n in graph_candidates(check) if n != "fp32_tf32"]
    variant = candidates[0] if candidates else "fp16_autocast"
    spec = worker_spec(
        check,
        variant=variant,
        backend=args.compile_backend,
        mode=args.compile_mode,
        batches=sorted(args.batches, reverse=True),
    )
    result = run_worker(check, "compile", spec, timeout_s)
    for b, row in (result.get("batches") or {}).items():
        if isinstance(row, dict) and row.get("items_per_s"):
            if (gain := speedup(row, check.throughput.get("fp32", {}).get(int(b)))) is not None:
                row["speedup_vs_fp32"] = gain
            check.extra_entries.append(
                {"kind": "torch_compile", "variant": variant, "batch": int(b), **row}
            )
    return result


def tensorrt(check: Check) -> dict[str, Any]:
    check.need_cuda()
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        raise Skip(f"tensorrt not importable ({first_line(exc)})") from None
    left = check.report.left()
    if left < 90:
        raise Skip(f"time budget ({left:.0f} s left)")
    spec = worker_spec(check, batches=check.args.batches, opt_level=check.args.trt_opt_level)
    result = run_worker(check, "tensorrt", spec, left - 8)
    for entry in (result.get("engines") or {}).values():
        for b, row in (entry.get("batches") or {}).items():
            if isinstance(row, dict) and row.get("items_per_s"):
                base = check.throughput.get("fp32", {}).get(int(b))
                if (gain := speedup(row, base)) is not None:
                    row["speedup_vs_torch_fp32"] = gain
    return result
