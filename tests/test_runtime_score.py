"""loda-score end to end (runtime/cli.py, runtime/pipeline.py) and the Scorer API.

Real model (loda_micro exported to ONNX), real files: the bad-input corpus of
tests/badinputs.py, archives, kill -9 / SIGTERM and --resume, shards, -j equality.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from badinputs import make_bad_corpus
from PIL import Image

from loda.runtime import Scorer

ATOL = 1e-4


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from test_export_onnx import micro_export

    return micro_export(tmp_path_factory)


@pytest.fixture(scope="module")
def images(micro) -> list[Path]:
    """Ten real demo images (96 x 64 distortions of two photos)."""
    paths = sorted((micro.demo_dir / "images").glob("*.png"))
    assert len(paths) >= 10
    return paths[:: max(1, len(paths) // 10)][:10]


def loda_score(*args, cwd=None, stdin=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loda.runtime.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        input=stdin,
        timeout=timeout,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def by_source(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    out = {}
    for row in rows:
        assert row["source"] not in out, f"duplicated row {row['source']}"
        out[row["source"]] = row
    return out


# --------------------------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------------------------


def test_scorer_api_matches_torch_reference_and_reports_errors(micro, images, tmp_path):
    from loda.checkpoint import load_checkpoint
    from loda.inference import score_image

    model, meta = load_checkpoint(micro.checkpoint)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with Scorer.open(micro.onnx_path, device="cpu") as scorer:
        assert scorer.preprocess == meta.preprocess
        results = scorer.score_paths([*images[:3], bad])
        arrays = scorer.score_images([np.asarray(Image.open(images[0]))])
    for path, result in zip(images[:3], results[:3], strict=True):
        ref = score_image(model, path, meta.preprocess)
        assert result.ok and result.source == os.fspath(path)
        assert abs(result.score - ref.score) <= ATOL
        assert abs(result.spread - ref.spread) <= ATOL
        assert (result.width, result.height) == (96, 64)
        assert (result.mos is None) == (meta.calibration is None)
    assert not results[3].ok and "bad.jpg" in results[3].error
    assert arrays[0].source == "image[0]" and abs(arrays[0].score - results[0].score) <= ATOL


def test_grid_scores_identical_across_backends(micro, images):
    with Scorer.open(micro.onnx_path, device="cpu") as ort_scorer:
        ort = ort_scorer.score_paths(images)
    with Scorer.open(micro.checkpoint, device="cpu") as torch_scorer:
        ref = torch_scorer.score_paths(images)
    for a, b in zip(ort, ref, strict=True):
        assert a.ok and b.ok
        assert abs(a.score - b.score) <= ATOL
        np.testing.assert_allclose(a.crop_scores, b.crop_scores, atol=ATOL, rtol=0)


def test_crop_packer_straddles_batches_in_order():
    from loda.runtime import CropPacker

    calls = []

    def infer(crops):
        calls.append(len(crops))
        return crops[:, 0, 0, 0].astype(np.float32)

    packer = CropPacker(infer, batch_size=4)
    done = []
    sizes = [3, 0, 5, 1, 2]
    for key, n in enumerate(sizes):
        crops = np.zeros((n, 2, 2, 3), np.uint8)
        crops[:, 0, 0, 0] = np.arange(n) + 10 * key
        done += packer.add(key, crops)
    done += packer.finish()
    assert [k for k, _ in done] == list(range(len(sizes)))
    for key, scores in done:
        np.testing.assert_array_equal(scores, np.arange(sizes[key]) + 10 * key)
    assert calls == [4, 4, 3]


# --------------------------------------------------------------------------------------------
# loda-score
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    expected = make_bad_corpus(root)
    return root, expected


def test_bad_input_corpus_never_stops_a_run(micro, corpus, tmp_path):
    root, expected = corpus
    out = tmp_path / "scores.csv"
    r = loda_score(root, "-m", micro.onnx_path, "-o", out, "-j", "2", cwd=root)
    assert r.returncode == 1, r.stderr  # some inputs failed
    rows = by_source(read_csv(out))
    got = {}
    for source, row in rows.items():
        rel = os.path.relpath(source, root) if "::" not in source else None
        if rel is None:
            archive, member = source.split("::", 1)
            rel = f"{os.path.relpath(archive, root)}::{member}"
        got[rel] = row
    for name, expectation in expected.items():
        if expectation == "skip":
            assert name not in got, f"{name} should be skipped, got a row"
            continue
        assert name in got, f"no row for {name}; rows: {sorted(got)}"
        row = got[name]
        assert row["status"] == expectation, f"{name}: {row}"
        if expectation == "ok":
            assert np.isfinite(float(row["score"])) and row["error"] == ""
            assert int(row["width"]) > 0 and int(row["height"]) > 0
        else:
            assert row["score"] == "" and row["error"] and "\n" not in row["error"]
    assert any(line.startswith("loda-score: scored") for line in r.stderr.splitlines())


def test_jobs_do_not_change_scores_and_jsonl(micro, images, tmp_path):
    outs = {}
    for jobs in ("0", "1", "2"):
        out = tmp_path / f"j{jobs}.csv"
        r = loda_score(*images, "-m", micro.onnx_path, "-o", out, "-j", jobs)
        assert r.returncode == 0, r.stderr
        outs[jobs] = out.read_bytes()
    assert outs["0"] == outs["1"] == outs["2"]
    rows = read_csv(tmp_path / "j1.csv")
    assert [r["source"] for r in rows] == [str(p) for p in images]  # input order
    out = tmp_path / "s.jsonl"
    r = loda_score(*images[:3], "-m", micro.onnx_path, "-o", out, "-j", "1")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["source"] for d in lines] == [str(p) for p in images[:3]]
    for d, row in zip(lines, rows, strict=False):
        assert d["score"] == float(row["score"]) and d["status"] == "ok"


def test_random_layout_is_seeded_per_image(micro, images, tmp_path):
    def run(seed, jobs, order):
        out = tmp_path / f"r{seed}_{jobs}_{len(order)}.csv"
        r = loda_score(
            *order, "-m", micro.onnx_path, "-o", out, "--layout", "random", "--seed", seed,
            "-j", jobs,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return {row["source"]: float(row["score"]) for row in read_csv(out)}

    a = run(1, 1, images[:4])
    b = run(1, 2, images[:4][::-1])  # other order, other worker count
    c = run(2, 1, images[:4])
    for key in a:
        assert abs(a[key] - b[key]) <= ATOL
    assert any(abs(a[k] - c[k]) > 1e-6 for k in a)


def test_archives_lists_and_stdin(micro, images, tmp_path):
    tgz = tmp_path / "imgs.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        for p in images[:3]:
            tf.add(p, arcname=f"sub/{p.name}")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in images[3:5]))
    out = tmp_path / "a.csv"
    r = loda_score(
        tgz, f"@{listing}", "-", "-m", micro.onnx_path, "-o", out, "-j", "1",
        stdin=f"{images[5]}\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = read_csv(out)
    assert [row["source"] for row in rows] == [
        *(f"{tgz}::sub/{p.name}" for p in images[:3]),
        *map(str, images[3:6]),
    ]
    direct = {row["source"]: row for row in read_csv(_score(micro, images[:3], tmp_path / "d.csv"))}
    for p, row in zip(images[:3], rows, strict=False):
        assert abs(float(row["score"]) - float(direct[str(p)]["score"])) <= ATOL


def _score(micro, inputs, out, *extra) -> Path:
    r = loda_score(*inputs, "-m", micro.onnx_path, "-o", out, "-j", "1", *extra)
    assert r.returncode == 0, r.stderr
    return out


def test_shards_partition_and_concatenate_to_the_whole(micro, images, tmp_path):
    whole = by_source(read_csv(_score(micro, images, tmp_path / "whole.csv")))
    parts = []
    for i in range(3):
        parts += read_csv(_score(micro, images, tmp_path / f"s{i}.csv", "--shard", f"{i}/3"))
    merged = by_source(parts)  # asserts no duplicates
    assert merged.keys() == whole.keys()
    for key, row in merged.items():
        assert abs(float(row["score"]) - float(whole[key]["score"])) <= ATOL


def test_usage_errors_exit_2_and_user_errors_exit_1(micro, images, tmp_path):
    r = loda_score(tmp_path / "missing", "-m", micro.onnx_path)
    assert r.returncode == 2 and "missing" in r.stderr
    r = loda_score(images[0], "-m", micro.onnx_path, "--shard", "3/3")
    assert r.returncode == 2 and "shard" in r.stderr.lower()
    existing = tmp_path / "exists.csv"
    existing.write_text("source\n")
    r = loda_score(images[0], "-m", micro.onnx_path, "-o", existing)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = loda_score(images[0], "-m", tmp_path / "nope.onnx")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"loda-score: error: no ONNX model at {tmp_path / 'nope.onnx'}"
    ]


def test_no_images_is_a_warning_not_a_silent_success(micro, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = loda_score(empty, "-m", micro.onnx_path, "-o", tmp_path / "e.csv", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"warning: no images found in {empty}" in r.stderr
    assert read_csv(tmp_path / "e.csv") == []
    (empty / "notes.txt").write_text("not an image")  # skipped with a reason: no warning
    r = loda_score(empty, "-m", micro.onnx_path, "-o", tmp_path / "f.csv", "--no-progress")
    assert r.returncode == 0 and "skipped" in r.stderr and "no images found" not in r.stderr


# --------------------------------------------------------------------------------------------
# Interruptions: kill -9, SIGTERM, --resume
# --------------------------------------------------------------------------------------------


def _start(micro, inputs, out, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "loda.runtime.cli", *map(str, inputs), "-m", str(micro.onnx_path),
         "-o", str(out), "-j", "1", "--batch-size", "15", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_rows(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= n + 1:  # header + n rows
            return
        if proc.poll() is not None:
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_then_resume_loses_and_duplicates_nothing(micro, images, tmp_path):
    inputs = images * 2  # 20 inputs (duplicates are scored once: 10 rows)
    reference = by_source(
        read_csv(_score(micro, images, tmp_path / "ref.csv", "--batch-size", "15"))
    )
    for kill_after in (0, 3, 7):
        out = tmp_path / f"k{kill_after}.csv"
        proc = _start(micro, inputs, out, "--resume")
        if kill_after:
            _wait_rows(out, kill_after, proc)
        else:
            time.sleep(1.0)  # during start-up
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r = loda_score(
            *inputs, "-m", micro.onnx_path, "-o", out, "-j", "1", "--batch-size", "15", "--resume"
        )
        assert r.returncode == 0, r.stderr
        rows = by_source(read_csv(out))  # no duplicates, every line parses
        assert rows.keys() == reference.keys(), kill_after
        for key, row in rows.items():
            assert row["score"] == reference[key]["score"], (kill_after, key)
            assert row["status"] == "ok"


@pytest.mark.slow
def test_sigterm_flushes_a_consistent_file_and_exits_143(micro, images, tmp_path):
    out = tmp_path / "t.csv"
    proc = _start(micro, images, out)
    _wait_rows(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "--resume" in err
    data = out.read_bytes()
    assert data.endswith(b"\n")
    partial = read_csv(out)
    assert 2 <= len(partial) < len(images)
    r = loda_score(
        *images, "-m", micro.onnx_path, "-o", out, "-j", "1", "--batch-size", "15", "--resume"
    )
    assert r.returncode == 0, r.stderr
    assert [row["source"] for row in read_csv(out)] == [str(p) for p in images]


def test_stdout_output_and_score_progress_summary(micro, images):
    r = loda_score(images[0], "-m", micro.onnx_path, "-j", "0", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    assert json.loads(line)["source"] == str(images[0])
    assert "scored 1 of 1 image(s), 0 failed" in r.stderr  # the summary goes to stderr


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_dead_worker_is_one_line_and_resume_finishes(micro, images, tmp_path):
    out = tmp_path / "w.csv"
    proc = _start(micro, images, out)
    _wait_rows(out, 2, proc)
    for pid in _descendants(proc.pid):  # the forkserver and its workers, not the tracker
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before its workers could be killed")
    assert proc.returncode == 1, err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert "decode worker died" in line and "--resume" in line
    r = loda_score(
        *images, "-m", micro.onnx_path, "-o", out, "-j", "1", "--batch-size", "15", "--resume"
    )
    assert r.returncode == 0, r.stderr
    assert [row["source"] for row in read_csv(out)] == [str(p) for p in images]
