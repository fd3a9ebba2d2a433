"""This machine's measured single-precision GEMM (sgemm) peak, the yardstick of the benchmark.

Square float32 products ``C = A @ B`` of a few sizes through numpy (its bundled BLAS) and through
torch (``torch.mm``, oneDNN/MKL), each the best of several timed runs after one warm-up run, with
the same thread count for both. The measured peak is the fastest of all: a GEMM-bound model can
run no faster than ``peak / GEMM FLOPs per crop``.

Run alone: ``python bench/sgemm.py [--threads T] [--sizes 1024 2048 4096]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

__all__ = ["DEFAULT_SIZES", "best_sgemm", "measure_sgemm_peak", "thread_limits"]

DEFAULT_SIZES = (1024, 2048, 4096)
MIN_RUNS = 3
MAX_RUNS = 200
MIN_SECONDS = 1.0  # per size and library: keep timing until this much has run (or MAX_RUNS)
# Idle gap before each library: BLAS threads that just finished busy-wait for a while and would
# steal cores from the next library's threads.
SETTLE_SECONDS = 0.3


def thread_limits(threads: int) -> Any:
    """A context that holds numpy's BLAS (and any OpenMP pool it finds) to ``threads`` threads.

    Uses threadpoolctl (installed with scikit-learn, the demo extra); without it the BLAS keeps
    its default (all cores), which the caller records.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=threads)


def _best_seconds(run) -> tuple[float, int]:
    time.sleep(SETTLE_SECONDS)
    run()  # warm-up: page in the buffers, spin up the thread pool
    best, n, spent = float("inf"), 0, 0.0
    while n < MIN_RUNS or (spent < MIN_SECONDS and n < MAX_RUNS):
        t0 = time.perf_counter()
        run()
        dt = time.perf_counter() - t0
        best, n, spent = min(best, dt), n + 1, spent + dt
    return best, n


def measure_sgemm_peak(
    sizes: Sequence[int] = DEFAULT_SIZES, threads: int | None = None
) -> dict[str, Any]:
    """GFLOP/s of float32 square GEMMs in numpy and torch; ``peak_gflops`` is the best of all.

    A multiply-add counts as 2 FLOPs (``2 n^3`` per product), as in the model's FLOP counts.
    """
    import torch

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"threads": threads, "sizes": list(sizes), "numpy": {}, "torch": {}}
    with thread_limits(threads):
        out["numpy_blas"] = _blas_description()
        for n in sizes:
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            c = np.empty((n, n), dtype=np.float32)
            flops = 2.0 * n**3
            sec, runs = _best_seconds(lambda a=a, b=b, c=c: np.matmul(a, b, out=c))
            out["numpy"][str(n)] = {"gflops": flops / sec / 1e9, "best_seconds": sec, "runs": runs}
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            tc = torch.empty((n, n), dtype=torch.float32)
            sec, runs = _best_seconds(lambda ta=ta, tb=tb, tc=tc: torch.mm(ta, tb, out=tc))
            out["torch"][str(n)] = {"gflops": flops / sec / 1e9, "best_seconds": sec, "runs": runs}
    best = max(
        ((lib, int(n), r["gflops"]) for lib in ("numpy", "torch") for n, r in out[lib].items()),
        key=lambda t: t[2],
    )
    out["peak_gflops"] = best[2]
    out["peak_from"] = f"{best[0]} {best[1]}x{best[1]}"
    return out


def best_sgemm(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The higher of two measurements (before and after a benchmark's timing), both kept: noise
    only ever lowers a measured peak, and a low peak would flatter every "% of peak" figure."""
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


def _blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed: BLAS threads not limited)"
    pools = [
        f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    ]
    return ", ".join(pools) or "none found"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    args = parser.parse_args(argv)
    result = measure_sgemm_peak(args.sizes, args.threads)
    for lib in ("numpy", "torch"):
        for n, r in result[lib].items():
            print(f"{lib:6s} {n:>5s}x{n:<5s} {r['gflops']:8.1f} GFLOP/s", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
