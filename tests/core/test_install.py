"""The scoring install: `pip install 'loda[cpu]'` into a fresh venv, with no torch, scores an
ONNX model with `loda-score`; commands that need an extra say which one in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from micro import micro_export

ROOT = Path(__file__).resolve().parents[2]
SIZE_GOAL_MB = 400


def _du_mb(path: Path) -> float:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 2**20


@pytest.fixture(scope="module")
def scoring_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("scoring") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{ROOT}[cpu]"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    return venv


def _run(venv: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=venv.parent,
    )


@pytest.mark.slow
def test_scoring_install_has_no_torch_and_scores(scoring_venv, tmp_path_factory):
    listed = _run(scoring_venv, "python", "-m", "pip", "list", "--format=freeze")
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert {"loda", "onnxruntime", "numpy", "pillow", "click", "tqdm"} <= names
    assert not names & {"torch", "timm", "onnx", "onnxscript", "scipy", "openpyxl"}, names

    micro = micro_export(tmp_path_factory)
    out = scoring_venv.parent / "scores.csv"
    images = micro.demo_dir / "images"
    done = _run(scoring_venv, "loda-score", str(images), "-m", str(micro.onnx_path),
                "-o", str(out), "-j", "1", "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = out.read_text().splitlines()
    n_images = len(list(images.iterdir()))
    assert len(rows) == 1 + n_images
    assert all(",ok," in row for row in rows[1:])

    size = _du_mb(scoring_venv)
    print(f"scoring-only venv: {size:.0f} MB")
    assert size <= SIZE_GOAL_MB, f"{size:.0f} MB"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["loda", "create", "loda_micro", "-o", "m.safetensors"], "train"),
        (["loda-train", "--data", "x.csv", "--out", "run"], "train"),
        (["loda-export", "onnx", "{checkpoint}", "-o", "m.onnx"], "export"),
        (["loda-calib", "int8", "m.onnx", "--images", "d", "-o", "q.onnx"], "export"),
    ],
)
def test_commands_name_the_missing_extra(scoring_venv, tmp_path_factory, command, extra):
    checkpoint = str(micro_export(tmp_path_factory).checkpoint)
    done = _run(scoring_venv, *(arg.format(checkpoint=checkpoint) for arg in command))
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"pip install 'loda[{extra}]'" in lines[0]
    assert lines[0].startswith(f"{command[0]}: error: ")
