"""bench/bench_score.py runs end to end on loda_micro in --quick mode and writes a complete JSON.

Tiny counts (one image per pass, one round): this checks the benchmark's plumbing and its
honesty fields (every way scores like the PyTorch loop, goals judged or marked not judged),
never its speed figures.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_bench
from test_export_onnx import micro_export

WAYS = ("inference", "pipeline", "loda-score", "loda-score-total", "torch-loop")


def positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0 and math.isfinite(x)


@pytest.mark.slow
def test_bench_score_quick_micro(tmp_path_factory, tmp_path):
    micro = micro_export(tmp_path_factory)  # shared with the export tests: no second export
    out, json_path = tmp_path / "bench", tmp_path / "result.json"
    proc = run_bench(
        "bench_score.py",
        "--quick",
        "--config", "loda_micro",
        "--checkpoint", micro.checkpoint,
        "--onnx", micro.onnx_path,
        "--out", out,
        "--images", 1,
        "--decode-images", 2,
        "--memory-images", 1,
        "--threads", 1,
        "--score-jobs", 1,
        "--jobs", 1, 2,
        "--json", json_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(json_path.read_text())
    assert {"throughput", "decode", "memory", "machine", "goals", "settings"} <= set(result)
    assert result["config"] == "loda_micro" and result["settings"]["quick"] is True
    assert result["machine"]["cpu_model"] and result["machine"]["usable_cpus"] >= 1

    t = result["throughput"]
    assert t["images"] == 1 and t["threads"] == 1 and t["score_jobs"] == 1
    rows = {r["name"]: r for r in t["ways"]}
    assert tuple(rows) == WAYS
    for name, row in rows.items():
        assert positive(row["images_per_s"]) and positive(row["crops_per_s"]), name
        # The same pixels through ORT and torch: every way scores like the PyTorch loop.
        assert row["max_abs_vs_torch_loop"] <= 1e-4, name
    assert rows["inference"]["overhead_vs_inference"] == 0
    assert positive(t["startup"]["median_seconds"])
    assert [g["passed"] in (True, False) for g in t["goals"]] == [True, True]

    d = result["decode"]["formats"]
    assert [f["format"] for f in d] == ["jpeg", "png"]
    for f in d:
        assert positive(f["per_worker_images_per_s"])
        assert [s["jobs"] for s in f["scaling"]] == [1, 2]
        assert all(positive(s["images_per_s"]) for s in f["scaling"])

    m = result["memory"]
    assert m["config"] == "loda_micro" and [r["images"] for r in m["runs"]] == [1, 4]
    for r in m["runs"]:
        assert positive(r["peak_rss_sum_mb"]) and positive(r["peak_pss_sum_mb"])
        assert r["processes"] >= 2  # loda-score and at least its worker
    # 1 image ends inside the start-up ramp: reported, never judged.
    assert m["goals"][0]["passed"] is None and "not judged" in m["goals"][0]["measured"]

    assert len(result["goals"]) == 3
    assert "images/s" in proc.stdout and "peak RSS sum" in proc.stdout
    assert proc.stdout.count("PASS") + proc.stdout.count("MISS") >= 2
    assert "n/a" in proc.stdout


def test_bench_score_usage_error():
    proc = run_bench("bench_score.py", "--onnx", "model.onnx")
    assert proc.returncode == 2
    assert "--onnx needs the --checkpoint" in proc.stderr
