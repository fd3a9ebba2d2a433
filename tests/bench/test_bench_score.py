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
from micro import micro_export

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
    assert m["config"] == "loda_micro" and [r["images"] for r in m["runs"]] == [1, 1, 4]
    for r in m["runs"]:
        assert positive(r["peak_rss_sum_mb"]) and positive(r["peak_pss_sum_mb"])
        assert r["processes"] >= 2  # loda-score and at least its worker
    # 1 image ends inside the start-up ramp: reported, never judged.
    assert m["goals"][0]["passed"] is None and "not judged" in m["goals"][0]["measured"]

    assert len(result["goals"]) == 3
    assert "images/s" in proc.stdout and "peak RSS sum" in proc.stdout
    assert proc.stdout.count("PASS") + proc.stdout.count("MISS") >= 2
    assert "n/a" in proc.stdout

    # docs/benchmarks.md's renderer takes the JSON as the benchmark writes it.
    page = "\n".join(_bench_module("report_sections").bench_score([("r.json", result)]))
    assert f"| {rows['inference']['images_per_s']:.3f} |" in page
    assert "| PNG 512x384 |" in page and "peak PSS MB" in page


def test_bench_score_usage_error():
    proc = run_bench("bench_score.py", "--onnx", "model.onnx")
    assert proc.returncode == 2
    assert "--onnx needs the --checkpoint" in proc.stderr


@pytest.mark.slow
def test_bench_score_other_precision_is_measured_not_judged(tmp_path_factory, tmp_path):
    """An FP16/INT8 graph is refused as --onnx unless --any-precision; then the report names
    the precision and leaves the (FP32) goals unjudged."""
    import onnx

    from loda.calib.fp16 import convert_onnx_fp16

    micro = micro_export(tmp_path_factory)
    fp16_model, _ = convert_onnx_fp16(onnx.load(str(micro.onnx_path)))
    fp16_path = tmp_path / "micro.fp16.onnx"
    onnx.save(fp16_model, str(fp16_path))
    args = [
        "bench_score.py", "--quick", "--sections", "throughput",
        "--config", "loda_micro", "--checkpoint", micro.checkpoint, "--onnx", fp16_path,
        "--out", tmp_path / "bench", "--images", 1, "--threads", 1, "--score-jobs", 1,
        "--json", tmp_path / "result.json",
    ]  # fmt: skip
    refused = run_bench(*args)
    assert refused.returncode != 0
    assert "is a fp16 graph; pass the FP32 export" in refused.stderr
    proc = run_bench(*args, "--any-precision")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["model"]["onnx_precision"] == "fp16"
    goals = result["throughput"]["goals"]
    assert len(goals) == 2 and all(g["passed"] is None for g in goals)
    assert all("not judged: a fp16 graph" in g["measured"] for g in goals)
    assert "ONNX graph fp16" in proc.stdout and "PASS" not in proc.stdout
    rows = {r["name"]: r for r in result["throughput"]["ways"]}
    assert rows["inference"]["max_abs_vs_torch_loop"] < 0.05  # FP16 rounding, same model


def _bench_module(name: str):
    """A module of bench/ (the scripts import their neighbours from there)."""
    import importlib
    import sys

    from conftest import ROOT

    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


def test_overhead_and_goal_verdicts():
    overhead = _bench_module("score_ways").overhead
    goal = _bench_module("_common").goal
    assert overhead(105.0, 100.0) == pytest.approx(0.05)  # 5% longer than inference
    assert overhead(100.0, 100.0) == 0
    within = goal("g", 0.05, 0.05, "5%", higher_is_better=False)
    over = goal("g", 0.0501, 0.05, "5.01%", higher_is_better=False)
    assert within["passed"] is True and over["passed"] is False
    assert goal("x", 1.4, 1.4, "1.4x")["passed"] is True
    assert goal("x", 1.39, 1.4, "1.39x")["passed"] is False


def test_ways_rotate_their_order_every_round():
    calls = []
    runners = {name: (lambda n=name: calls.append(n) or n) for name in ("a", "b", "c")}
    rounds = _bench_module("_common").interleaved_rounds
    seconds, results = rounds(runners, repeats=3, settle=0)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in seconds.items()} == {"a": 3, "b": 3, "c": 3}
    assert results == {"a": "a", "b": "b", "c": "c"}


def test_images_are_compared_with_the_torch_loop_per_image():
    """max |d| over images, matched by name; a missing or extra image is an error."""
    ways = _bench_module("score_ways")
    ref = {"a.jpg": 0.5, "b.jpg": 0.25}
    assert ways.max_abs_vs({"b.jpg": 0.5, "a.jpg": 0.5}, ref) == pytest.approx(0.25)
    assert ways.max_abs_vs(dict(ref), ref) == 0
    with pytest.raises(ways.BenchError, match="the sets differ"):
        ways.max_abs_vs({"a.jpg": 0.5}, ref)
