"""Command-line guards: a run never replaces a file it reads, unusable output paths and
out-of-range values are one line (exit 1, or 2 for usage errors), never a traceback."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

BIN = Path(sys.executable).parent


def run(tool: str, *args, cwd: Path):
    import subprocess

    return subprocess.run(
        [str(BIN / tool), *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def one_error_line(result, prog: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert lines and lines[-1].startswith(f"{prog}: error: "), result.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("guards")
    (d / "afile").write_text("a plain file\n")
    for i in range(3):
        Image.new("RGB", (64, 48), (60 * i, 100, 150)).save(d / f"img{i}.png")
    with open(d / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "mos"])
        writer.writerows([[f"img{i}.png", 1.5 + i] for i in range(3)])
    r = run("loda", "create", "loda_micro", "-o", "micro.safetensors", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


def test_outputs_never_replace_an_input(work, tmp_path):
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    cases = [
        ("loda-data", ["pack", "data.csv", "-o", "data.csv"]),
        ("loda-data", ["pack", "data.csv", "-o", "img1.png"]),
        ("loda-export", ["onnx", "micro.safetensors", "--no-verify", "-o", "micro.safetensors"]),
        ("loda-eval", ["micro.safetensors", "--data", "data.csv", "-o", "data.csv"]),
        ("loda-score", ["img0.png", "-m", "micro.safetensors", "-o", "img0.png", "--overwrite"]),
    ]
    for tool, args in cases:
        r = run(tool, *args, cwd=work)
        assert r.returncode == 1, (tool, args, r.stderr)
        assert "would overwrite" in one_error_line(r, tool), (tool, r.stderr)
    after = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    assert after == before


def test_unusable_output_paths_are_one_line(work):
    for tool, args in [
        ("loda", ["create", "loda_micro", "-o", "afile/x.safetensors"]),
        ("loda-data", ["pack", "data.csv", "-o", "afile/p.tar"]),
        ("loda-data", ["demo", "afile/sub", "--size", "32x32"]),
    ]:
        r = run(tool, *args, cwd=work)
        assert r.returncode == 1, (tool, r.stderr)
        assert "afile" in one_error_line(r, tool)


def test_out_of_range_values(work, tmp_path):
    r = run("loda-data", "demo", tmp_path / "big", "--size", "100000x100000", cwd=work)
    assert r.returncode == 1 and "at most 4096x4096" in one_error_line(r, "loda-data")
    assert not (tmp_path / "big").exists()  # refused before anything was made
    usage = [
        ("loda-score", ["img0.png", "-m", "micro.safetensors", "--threads", "1000"]),
        ("loda-score", ["img0.png", "-m", "micro.safetensors", "--crops", "100000"]),
        ("loda-score", ["img0.png", "-m", "micro.safetensors", "--seed", "-1"]),
        ("loda", ["predict", "micro.safetensors", "img0.png", "--seed", "-5"]),
        ("loda-train", ["--data", "data.csv", "--out", "run", "--lr", "-1"]),
        ("loda-data", ["pack", "data.csv", "-o", "p.tar", "--split", "3"]),
        ("loda-eval", ["micro.safetensors", "--data", "kadid10k:"]),
        ("loda-eval", ["micro.safetensors", "--data", "livec:somewhere?keep"]),
    ]
    for tool, args in usage:
        r = run(tool, *args, cwd=work)
        assert r.returncode == 2, (tool, args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (work / "run").exists() and not (work / "p.tar").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
