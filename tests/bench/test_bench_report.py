"""docs/benchmarks.md is bench/report.py's rendering of bench/results/*.json (no drift), and
every record there names where its figures come from."""

from __future__ import annotations

import importlib
import json
import shutil
import sys

import pytest
from conftest import ROOT, run_bench

RESULTS = ROOT / "bench" / "results"


def _bench(name: str):
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


def test_committed_page_is_the_rendering_of_the_committed_results():
    report = _bench("report")
    page = report.render(report.load_results(RESULTS))
    assert (ROOT / "docs" / "benchmarks.md").read_text() == page, (
        "docs/benchmarks.md differs from the rendering: run python bench/report.py"
    )


def test_every_record_names_its_source_machine_and_date():
    records = sorted(RESULTS.glob("*.json"))
    assert len(records) >= 8
    for path in records:
        record = json.loads(path.read_text())
        if record.get("placeholder"):
            assert record["command"].startswith(".venv/bin/python bench/"), path.name
            continue
        machine = record.get("machine") or {}
        if "source" in record:  # measured before its JSON was kept
            assert record["source"].startswith("transcribed from "), path.name
            assert machine.get("cpu_model") or record.get("machine_stated"), path.name
        else:  # the JSON a benchmark wrote: the CPU by name, the date of the run
            assert machine.get("cpu_model") or machine.get("cpu"), path.name
            assert str(machine.get("date", ""))[:4].isdigit(), path.name


def test_check_fails_in_one_line_when_the_page_drifts(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    page = tmp_path / "benchmarks.md"
    assert run_bench("report.py", "--results", results, "--out", page).returncode == 0
    assert run_bench("report.py", "--results", results, "--out", page, "--check").returncode == 0
    build = json.loads((results / "bench_build.json").read_text())
    build["configs"]["loda_micro"]["builds"]["fp32"]["build_s"] = 99.3
    (results / "bench_build.json").write_text(json.dumps(build))
    proc = run_bench("report.py", "--results", results, "--out", page, "--check")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "is not what bench/report.py renders" in proc.stderr
    assert run_bench("report.py", "--results", results, "--out", page).returncode == 0
    assert "| loda_micro | FP32 | 99.3 |" in page.read_text()  # the record's figure, as given


def test_unknown_or_broken_records_are_one_line_errors(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_nope.json").write_text("{}")
    proc = run_bench("report.py", "--results", results, "--out", tmp_path / "x.md")
    assert proc.returncode == 1 and "bench_nope.json: no benchmark of that name" in proc.stderr
    (results / "bench_nope.json").unlink()
    (results / "bench_hostile.json").write_text('{"runs": []}')
    proc = run_bench("report.py", "--results", results, "--out", tmp_path / "x.md")
    assert proc.returncode == 1 and proc.stderr.startswith("error: bench_hostile.json: KeyError")
    assert not (tmp_path / "x.md").exists()


def test_hostile_section_shows_each_bomb_at_each_jobs_count():
    sections = _bench("report_sections")
    run = {"archive_bytes": 970_000, "seconds": 2.4, "exit": 0, "goal": "PASS"}
    record = {
        "machine": {"cpu_model": "Some CPU", "usable_cpus": 2, "isa": ["avx2"], "date": "2026-01-02"},
        "settings": {"model": "m.onnx", "member_gb": 1.0, "jobs": [1, 2], "poll_seconds": 0.01,
                     "goal_bytes": 1.5e9},
        "idle_rss_bytes": 50_000_000,
        "runs": [
            {**run, "bomb": "bomb1x.zip", "jobs": 1, "peak_rss_bytes": 100_000_000},
            {**run, "bomb": "bomb1x.zip", "jobs": 2, "peak_rss_bytes": 120_000_000},
        ],
    }  # fmt: skip
    text = "\n".join(sections.bench_hostile([("bench_hostile.json", record)]))
    assert "| `bomb1x.zip` (0.97 MB) | 0.10 GB | 0.12 GB | 2.4 s |" in text
    assert "On Some CPU, 2 usable cores (avx2); run of 2026-01-02." in text
    assert "alone: 0.05 GB" in text and "met." in text
    record["runs"][1]["goal"] = "FAIL"
    assert "**missed**" in "\n".join(sections.bench_hostile([("h.json", record)]))


@pytest.mark.parametrize("name", ["bench_preprocess", "bench_ray"])
def test_placeholders_say_which_command_replaces_them(name):
    sections = _bench("report_sections")
    record = {
        "placeholder": True,
        "command": f".venv/bin/python bench/{name}.py --out out/bench/x",
        "earlier_figures": "docs/ray.md",
    }
    text = "\n".join(getattr(sections, name)([(f"{name}.json", record)]))
    assert record["command"] in text and "Not yet measured" in text
    assert "(ray.md)" in text
