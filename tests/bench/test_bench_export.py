"""bench/bench_export.py runs end to end on loda_micro and writes a complete JSON.

Tiny counts (15 crops, 1 round): this checks the benchmark's plumbing and its honesty fields
(parity with eager, FLOP counts, goals), never its speed figures.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
from conftest import ROOT, run_bench
from micro import micro_export

SCRIPT = ROOT / "bench" / "bench_export.py"
VARIANTS = ("torch-fp32", "ort-fp32", "ort-fp16", "ort-int8-tensorrt", "ort-int8-cpu")


@pytest.mark.slow
def test_bench_export_micro(tmp_path_factory, tmp_path):
    micro = micro_export(tmp_path_factory)  # shared with the export tests: no second export
    out, json_path = tmp_path / "bench", tmp_path / "result.json"
    common = [
        "--config", "loda_micro",
        "--checkpoint", micro.checkpoint,
        "--onnx", micro.onnx_path,
        "--images", micro.demo_dir,
        "--out", out,
        "--crops", 15,
        "--batch", 8,  # two batches, the second partial
        "--repeats", 1,
        "--warmup", 1,
        "--threads", 1,
        "--calib-images", 2,
        "--sgemm-sizes", 128,
    ]  # fmt: skip
    proc = run_bench("bench_export.py", *common, "--json", json_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(json_path.read_text())

    rows = {r["name"]: r for r in result["variants"]}
    assert tuple(rows) == VARIANTS
    for name, row in rows.items():
        assert row["crops_per_s"] > 0 and math.isfinite(row["crops_per_s"]), name
        assert len(row["seconds_per_round"]) == 1
        assert row["size_mb"] > 0
        for key in ("x_eager", "gflops", "pct_of_sgemm_peak"):
            assert row[key] > 0, (name, key)
    assert rows["torch-fp32"]["parity"] is None
    for name in VARIANTS[1:]:
        p = rows[name]["parity"]
        assert p["n_crops"] == 15 and p["n_images"] == 1 and p["n_nonfinite"] == 0, name
        assert p["max_abs"] >= 0 and p["spearman_crops"] is not None, name
        assert "spearman_images" in p and "mean_abs" in p, name
    # FP32 ONNX must score like eager (a correctness check, not a speed one).
    assert rows["ort-fp32"]["parity"]["max_abs"] <= 1e-4
    assert rows["ort-fp32"]["parity_verdict"] == "ok"

    flops = result["flops"]
    graph, counted = flops["graph_gemm_gflop_per_crop"], flops["torch_counter_gflop_per_crop"]
    assert graph > 0 and abs(graph - counted) <= 0.02 * graph  # two independent FLOP counts
    assert flops["graph_gemm_nodes_without_shapes"] == []
    assert result["sgemm"]["peak_gflops"] > 0
    assert result["sgemm_bound_limit_crops_per_s"] > 0
    assert [g["passed"] in (True, False) for g in result["goals"]] == [True] * 3
    assert result["images"]["calib_images"] == 2 and result["images"]["bench_images"] == 1
    assert set(result["images"]["calib_names"]).isdisjoint(result["images"]["bench_names"])
    assert result["machine"]["threads"] == 1 and result["machine"]["cpu_model"]
    assert "x eager" in proc.stdout and "sgemm-bound limit" in proc.stdout
    assert proc.stdout.count("PASS") + proc.stdout.count("MISS") >= 3

    # docs/benchmarks.md's renderer takes the JSON as the benchmark writes it.
    page = "\n".join(_bench_module("report_sections").bench_export([("r.json", result)]))
    assert f"| ORT fp32 | {rows['ort-fp32']['crops_per_s']:.2f} |" in page
    assert (
        f"run of {result['machine']['date'][:10]}" in page
        and "Source: `bench/results/r.json`" in page
    )


def _bench_module(name: str):
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


def test_artifacts_are_reused_only_while_inputs_and_bytes_match(tmp_path):
    bench_export = _load_script()
    built = []

    def build(path, text):
        def make():
            built.append(text)
            path.write_text(text)

        return make

    model = tmp_path / "m.onnx"
    sha = bench_export.Artifacts(tmp_path).ensure(model, {"src": "a"}, build(model, "one"))
    again = bench_export.Artifacts(tmp_path)  # a new run reads artifacts.json
    assert again.ensure(model, {"src": "a"}, build(model, "two")) == sha
    assert built == ["one"] and again.events["m.onnx"]["reused"] is True
    again.ensure(model, {"src": "b"}, build(model, "three"))  # other inputs: made again
    model.write_text("edited")  # the bytes no longer match the record: made again
    again.ensure(model, {"src": "b"}, build(model, "four"))
    assert built == ["one", "three", "four"] and model.read_text() == "four"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_export", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_export"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bench_export_usage_error():
    proc = run_bench("bench_export.py", "--onnx", "model.onnx")
    assert proc.returncode == 2
    assert "--onnx needs the --checkpoint" in proc.stderr


def test_goals_are_judged_at_their_thresholds_the_right_way_round():
    """judge_goals on made-up rows: x eager is variant / eager, >= passes, < misses."""
    bench_export = _load_script()

    def rows(fp32_x, int8_x, fp32_crops_per_s):
        return {
            "ort-fp32": {"x_eager": fp32_x, "crops_per_s": fp32_crops_per_s},
            "ort-int8-cpu": {"x_eager": int8_x},
        }

    goals = bench_export.judge_goals(rows(1.40, 2.50, 8.5), limit=10.0, nominal_limit=None)
    assert [g["passed"] for g in goals] == [True, True, True]
    goals = bench_export.judge_goals(rows(1.39, 2.49, 8.49), limit=10.0, nominal_limit=9.0)
    assert [g["passed"] for g in goals] == [False, False, False]
    assert goals[1]["value"] == pytest.approx(0.849)
    assert goals[1]["value_at_nominal_flops"] == pytest.approx(8.49 / 9.0)
    goals = bench_export.judge_goals({}, limit=10.0, nominal_limit=None)
    assert [g["passed"] for g in goals] == [None, None, None]


def test_variants_warm_up_first_then_rotate_rounds():
    bench_export = _load_script()
    calls = []

    def runner(name):
        return lambda batch: calls.append((name, len(batch))) or np.zeros(len(batch))

    batches = [np.zeros((3, 1)), np.zeros((2, 1))]
    seconds, scores = bench_export.time_variants(
        {"a": runner("a"), "b": runner("b")}, batches, warmup=1, repeats=2, settle=0
    )
    warm, timed = calls[:2], calls[2:]
    assert warm == [("a", 3), ("b", 3)]  # every variant once before any timing
    assert [n for n, _ in timed] == ["a", "a", "b", "b", "b", "b", "a", "a"]  # order rotates
    assert {k: len(v) for k, v in seconds.items()} == {"a": 2, "b": 2}
    assert scores["a"].shape == (5,)
