"""loda-score's decode modes and its decode-bound / inference-bound report (runtime/cli.py,
runtime/pipeline.py, runtime/output.py's run record)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loda.preprocess import PreprocessConfig, preprocess_image
from loda.runtime.pipeline import RunStats


@pytest.fixture(scope="module")
def camera_jpegs(micro, tmp_path_factory) -> Path:
    """Three 3200x2400 JPEGs made from demo images (large enough for a 1/4-scale decode)."""
    folder = tmp_path_factory.mktemp("camera")
    for k, src in enumerate(sorted((micro.demo_dir / "images").glob("*.png"))[::30][:3]):
        big = Image.open(src).convert("RGB").resize((3200, 2400), Image.Resampling.BICUBIC)
        big.save(folder / f"cam{k}.jpg", quality=90)
    return folder


def loda_score(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loda.runtime.cli", *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _scores(path: Path) -> dict[str, float]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["source"]: float(row["score"]) for row in csv.DictReader(f)}


@pytest.mark.slow
def test_decode_fast_is_recorded_close_to_exact_and_never_mixed(micro, camera_jpegs, tmp_path):
    exact, fast = tmp_path / "exact.csv", tmp_path / "fast.csv"
    for out, extra in ((exact, []), (fast, ["--decode", "fast"])):
        r = loda_score(camera_jpegs, "-m", micro.onnx_path, "-o", out, "-j", "1", *extra)
        assert r.returncode == 0, r.stderr
    a, b = _scores(exact), _scores(fast)
    assert a.keys() == b.keys() and len(a) == 3
    # the fast path is a different decode, so not equal; close (docs/preprocessing.md)
    assert max(abs(a[k] - b[k]) for k in a) < 0.01
    record = json.loads((tmp_path / "fast.csv.json").read_text())
    assert record["preprocess"]["decode"] == "fast"
    assert json.loads((tmp_path / "exact.csv.json").read_text())["preprocess"]["decode"] == "exact"
    # the fast path really is what the workers ran: its crops are the library's fast crops
    cfg = PreprocessConfig(decode="fast")
    first = sorted(camera_jpegs.glob("*.jpg"))[0]
    assert not np.array_equal(preprocess_image(first, cfg), preprocess_image(first))

    r = loda_score(camera_jpegs, "-m", micro.onnx_path, "-o", fast, "--resume", "-j", "1")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "other settings (preprocess differ" in errors[0], r.stderr
    assert _scores(fast) == b  # the file is untouched
    r = loda_score(camera_jpegs, "-m", micro.onnx_path, "-o", fast, "--resume", "--decode", "fast")
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_summary_names_the_bound(micro, tmp_path):
    images = micro.demo_dir / "images"
    r = loda_score(images, "-m", micro.onnx_path, "-o", tmp_path / "s.csv", "-j", "1")
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "-bound: decoding" in x]
    assert "images/s (1 worker(s) x" in line and "vs inference" in line


def test_bottleneck_verdicts():
    assert RunStats().bottleneck(2) is None
    assert RunStats(images=10, decode_seconds=1.0, infer_seconds=0.0).bottleneck(2) is None
    # 10 images in 4 s of worker CPU: 2.5/s per worker, 5/s with 2; inference 10/s -> decode
    slow_decode = RunStats(images=10, decode_seconds=4.0, infer_seconds=1.0).bottleneck(2)
    assert slow_decode.startswith("decode-bound: decoding 5.0 images/s (2 worker(s) x 2.5)")
    assert "vs inference 10.0 images/s" in slow_decode and "--decode fast" in slow_decode
    slow_infer = RunStats(images=10, decode_seconds=1.0, infer_seconds=4.0).bottleneck(1)
    assert slow_infer.startswith("inference-bound: decoding 10.0 images/s (1 worker(s) x 10.0)")
    assert "vs inference 2.5 images/s" in slow_infer
    # -j 0 decodes in-process: counted as one worker
    assert "(1 worker(s)" in RunStats(images=1, decode_seconds=1, infer_seconds=1).bottleneck(0)
