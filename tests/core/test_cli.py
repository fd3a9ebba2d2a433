from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from conftest import write_photo


def loda(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "loda.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


@pytest.fixture(scope="module")
def created(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    out = loda("create", "loda_tiny", "-o", d / "tiny.safetensors", "--seed", "3")
    assert out.returncode == 0, out.stderr
    return d, out


def test_create_info_predict(created):
    d, out = created
    assert "wrote" in out.stderr and "next: loda info" in out.stderr
    info = loda("info", d / "tiny.safetensors")
    assert info.returncode == 0, info.stderr
    meta = json.loads(info.stdout)
    assert meta["model"]["name"] == "loda_tiny"
    assert meta["preprocess"]["crop_size"] == 224 and meta["preprocess"]["num_crops"] == 15
    assert "random-init" in meta["provenance"]["source"]

    images = [write_photo(d / "a.jpg", seed=1), write_photo(d / "b.png", 300, 500, seed=2)]
    pred = loda("predict", d / "tiny.safetensors", *images)
    assert pred.returncode == 0, pred.stderr
    rows = list(csv.DictReader(io.StringIO(pred.stdout)))
    assert [r["path"] for r in rows] == [str(p) for p in images]
    scores = [float(r["score"]) for r in rows]
    assert all(-1 <= s <= 1 for s in scores) and scores[0] != scores[1]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["info", "missing.safetensors"], 1, "loda: error: no checkpoint at missing.safetensors"),
        (["create", "no_such_config", "-o", "x.safetensors"], 2, "Invalid value"),
        (["predict", "tiny.safetensors", "notes.jpg"], 1, "loda: error:"),
        (["info", "notes.jpg"], 1, "is not a safetensors file"),
    ],
)
def test_errors_are_one_line_with_exit_codes(created, args, code, message):
    d, _ = created
    (d / "notes.jpg").write_text("this is a text file named .jpg\n")
    out = loda(*args, cwd=d)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert message in out.stderr
    if code == 1:
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr
