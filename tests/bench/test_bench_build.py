"""bench/bench_build.py runs end to end on loda_micro (one FP16 RTX build) and writes its JSON.

This checks the benchmark's plumbing (a real build in a child process, its peak RSS, the plan
size as written, the precision TensorRT sees), never its timings.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_bench

pytest.importorskip(
    "tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'loda[rtx]'; make test does)"
)


@pytest.mark.slow
def test_bench_build_micro_fp16(tmp_path):
    out = tmp_path / "bench"
    r = run_bench(
        "bench_build.py", "--configs", "loda_micro", "--precisions", "fp16",
        "--no-fold-report", "--batch", "1:15:30", "--out", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "bench_build.json").read_text())
    build = result["configs"]["loda_micro"]["builds"]["fp16"]
    engine = out / "loda_micro" / "loda_micro.fp16.rtx.engine"
    assert build["plan_mb"] == round(engine.stat().st_size / 1e6, 2)
    assert 50 < build["peak_rss_mb"] < 16_000  # the child's own peak, in MB
    assert 0 < build["build_s"] <= build["child_wall_s"]
    assert build["gemm_flop_share"]["HALF"] >= 0.95
    assert result["machine"]["cpu_model"] and result["tensorrt_rtx"] == build["tensorrt_rtx"]
    assert "loda_micro" in r.stdout and "fp16" in r.stdout


def test_bench_build_rejects_unknown_configs(tmp_path):
    r = run_bench("bench_build.py", "--configs", "loda_nope", "--out", tmp_path)
    assert r.returncode == 2 and "unknown --configs" in r.stderr
    r = run_bench("bench_build.py", "--precisions", "fp8", "--out", tmp_path)
    assert r.returncode == 2 and "--precisions" in r.stderr
