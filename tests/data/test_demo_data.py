"""The built-in demo IQA set (loda.data.demo) and its CLI (loda-data demo)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.stats import spearmanr

from loda.data import demo as demo_data
from loda.data.cli import cli
from loda.data.demo import (
    DISTORTIONS,
    LEVELS,
    DemoDataError,
    list_references,
    load_reference,
    make_demo_set,
    pseudo_mos,
)
from loda.errors import LodaError

REPO = Path(__file__).resolve().parents[2]
SMALL = (96, 64)
FEW = ["astronaut", "camera", "china"]


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _split(path: str) -> tuple[str, str, int]:
    ref, name, level = Path(path).stem.split("_")
    return ref, name, int(level)


@pytest.fixture(scope="module")
def full_set(tmp_path_factory) -> Path:
    """The default set (all references, 512x384), made once for this module."""
    return make_demo_set(tmp_path_factory.mktemp("demo") / "set", seed=0)


# ---------------------------------------------------------------------------- full set


def test_full_set_layout(full_set: Path) -> None:
    root = full_set.parent
    assert full_set.name == "demo.csv"
    assert full_set.read_text(encoding="utf-8").splitlines()[0] == "path,mos,ref"
    rows = _rows(full_set)
    refs = {r["ref"] for r in rows}
    types = {_split(r["path"])[1] for r in rows}
    assert len(refs) >= 12 and len(types) >= 6
    assert len(rows) >= 12 * 6 * LEVELS
    assert len({r["path"] for r in rows}) == len(rows)

    per_pair: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in rows:
        path = r["path"]
        assert not Path(path).is_absolute() and path.startswith("images/") and path.endswith(".png")
        ref, name, level = _split(path)
        assert ref == r["ref"] and name in DISTORTIONS
        per_pair[(ref, name)].append(level)
        assert 1.0 <= float(r["mos"]) <= 5.0
        with Image.open(root / path) as im:
            assert im.size == (512, 384) and im.mode == "RGB"
    assert all(sorted(v) == list(range(1, LEVELS + 1)) for v in per_pair.values())
    # Every reference has every distortion, except colour-only ones on grayscale photos.
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    gray = {r["id"] for r in meta["references"] if r["grayscale"]}
    color_only = {d["name"] for d in meta["distortions"] if d["color_only"]}
    for ref in refs:
        want = set(DISTORTIONS) - (color_only if ref in gray else set())
        assert {n for (r, n) in per_pair if r == ref} == want

    assert meta["name"] == "loda-demo" and meta["mos_range"] == [1, 5]
    assert meta["seed"] == 0 and meta["levels"] == LEVELS and meta["count"] == len(rows)
    assert [r["id"] for r in meta["references"]] == list_references()
    assert {d["name"] for d in meta["distortions"]} == set(DISTORTIONS)
    assert "SSIM" in meta["rule"]
    assert {"numpy", "scipy", "pillow", "scikit-image"} <= set(meta["package_versions"])
    for r in meta["references"]:
        with Image.open(root / r["path"]) as im:
            assert im.size == (512, 384)
    # Nothing but the set itself.
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    expected = {"demo.csv", "dataset.json"} | {r["path"] for r in rows}
    assert files == expected | {r["path"] for r in meta["references"]}


def test_full_set_mos_spread_and_monotonic(full_set: Path) -> None:
    rows = _rows(full_set)
    mos = np.array([float(r["mos"]) for r in rows])
    assert mos.std() > 0.7 and mos.min() < 2.0 and mos.max() > 4.5
    assert 2.5 < mos.mean() < 4.0

    by_type: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    by_pair: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for r, m in zip(rows, mos, strict=True):
        ref, name, level = _split(r["path"])
        by_type[name][0].append(level)
        by_type[name][1].append(m)
        by_pair[(ref, name)][level] = m
    for name, (levels, scores) in by_type.items():
        rho = spearmanr(levels, scores)[0]
        assert rho < -0.6, (name, rho)
    decreasing = [
        all(np.diff([pair[k] for k in range(1, LEVELS + 1)]) < 0) for pair in by_pair.values()
    ]
    assert np.mean(decreasing) >= 0.95


# ---------------------------------------------------------------------------- reproducibility


def test_same_seed_is_byte_identical(tmp_path: Path) -> None:
    a = make_demo_set(tmp_path / "a", seed=3, size=SMALL, references=FEW).parent
    b = make_demo_set(tmp_path / "b", seed=3, size=SMALL, references=FEW).parent
    ha, hb = _hashes(a), _hashes(b)
    assert len(ha) == 2 + len(FEW) + len(_rows(a / "demo.csv"))
    assert ha == hb
    # Rewriting an existing set in place gives the same bytes again.
    make_demo_set(a, seed=3, size=SMALL, references=FEW)
    assert _hashes(a) == hb


def test_other_seed_changes_random_distortions_only(tmp_path: Path) -> None:
    a = make_demo_set(tmp_path / "a", seed=0, size=SMALL, references=FEW).parent
    b = make_demo_set(tmp_path / "b", seed=1, size=SMALL, references=FEW).parent
    ha, hb = _hashes(a), _hashes(b)
    assert ha.keys() == hb.keys()
    noise = [k for k in ha if k.startswith("images/") and _split(k)[1] == "noise"]
    assert noise and all(ha[k] != hb[k] for k in noise)
    fixed = [k for k in ha if k.startswith("images/") and _split(k)[1] in ("blur", "jpeg")]
    assert fixed and all(ha[k] == hb[k] for k in fixed)
    assert ha["demo.csv"] != hb["demo.csv"]


# ---------------------------------------------------------------------------- building blocks


def test_references_are_real_prepared_photos() -> None:
    refs = list_references()
    assert len(refs) >= 12 and len(set(refs)) == len(refs)
    for ref in ("astronaut", "camera", "china"):
        img = load_reference(ref, (160, 120))
        assert img.shape == (120, 160, 3) and img.dtype == np.uint8
        assert img.std() > 20  # a photo, not a flat field
    gray = load_reference("camera", (64, 48))
    assert np.array_equal(gray[..., 0], gray[..., 1])
    assert np.array_equal(load_reference("coffee", SMALL), load_reference("coffee", SMALL))
    with pytest.raises(DemoDataError, match="unknown reference"):
        load_reference("no-such-photo")
    assert issubclass(DemoDataError, LodaError)


def test_distortions_grow_with_level() -> None:
    assert len(DISTORTIONS) >= 6
    ref = load_reference("astronaut", (128, 96))
    for name, fn in DISTORTIONS.items():
        errors = []
        for level in range(1, LEVELS + 1):
            out = fn(ref, level, np.random.default_rng(0))
            assert out.shape == ref.shape and out.dtype == np.uint8, name
            assert np.array_equal(out, fn(ref, level, np.random.default_rng(0))), name
            errors.append(np.mean((out.astype(np.float64) - ref) ** 2))
        assert errors[0] > 0 and all(np.diff(errors) > 0), (name, errors)
        with pytest.raises(DemoDataError):
            fn(ref, LEVELS + 1, np.random.default_rng(0))


def test_pseudo_mos_rule_matches_skimage_ssim() -> None:
    from skimage.metrics import structural_similarity

    ref = load_reference("chelsea", (128, 96))
    assert pseudo_mos(ref, ref) == pytest.approx(5.0)
    dist = DISTORTIONS["jpeg"](ref, 3, np.random.default_rng(0))

    def planes(img: np.ndarray) -> list[np.ndarray]:
        x = img.astype(np.float64)
        y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
        half = (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) / 4
        r, g, b = half[..., 0], half[..., 1], half[..., 2]
        cb = -0.168736 * r - 0.331264 * g + 0.5 * b
        cr = 0.5 * r - 0.418688 * g - 0.081312 * b
        return [y, cb, cr]

    kw = {"data_range": 255, "gaussian_weights": True, "sigma": 1.5}
    kw["use_sample_covariance"] = False
    s = [structural_similarity(a, b, **kw) for a, b in zip(planes(ref), planes(dist), strict=True)]
    q = 0.8 * s[0] + 0.1 * s[1] + 0.1 * s[2]
    assert pseudo_mos(ref, dist) == pytest.approx(1 + 4 * q**3, abs=1e-9)
    assert 1.0 < pseudo_mos(ref, dist) < 5.0


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(DemoDataError, match="seed"):
        make_demo_set(tmp_path / "x", seed=-1, size=SMALL, references=FEW)
    with pytest.raises(DemoDataError, match="unknown reference"):
        make_demo_set(tmp_path / "x", size=SMALL, references=["astronaut", "nope"])
    with pytest.raises(DemoDataError, match="at least 32x32"):
        make_demo_set(tmp_path / "x", size=(16, 16), references=FEW)
    assert not (tmp_path / "x").exists()


def test_too_few_installed_references_is_one_clear_error(tmp_path, monkeypatch) -> None:
    real = demo_data._source_path
    monkeypatch.setattr(
        demo_data, "_source_path", lambda s: real(s) if s.package == "sklearn" else None
    )
    with pytest.raises(DemoDataError, match=r"need 12.*scikit-image"):
        make_demo_set(tmp_path / "x")


def test_foreign_directory_is_refused_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(DemoDataError, match="not empty"):
        make_demo_set(target, size=SMALL, references=FEW)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    make_demo_set(target, size=SMALL, references=FEW, force=True)
    assert (target / "notes.txt").read_text() == "keep me"
    assert (target / "demo.csv").is_file()


def test_rewrite_drops_files_of_the_old_set(tmp_path: Path) -> None:
    root = make_demo_set(tmp_path / "s", size=SMALL, references=FEW).parent
    make_demo_set(root, size=SMALL, references=["astronaut"])
    assert {r["ref"] for r in _rows(root / "demo.csv")} == {"astronaut"}
    leftovers = [p.name for p in root.rglob("*.png") if not p.name.startswith("astronaut")]
    assert leftovers == []


# ---------------------------------------------------------------------------- CLI


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_cli_demo_success_line_and_refusal(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    cmd = [sys.executable, "-m", "loda.data.cli", "demo", str(target), "--size", "64x48"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_cli_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    rows = _rows(target / "demo.csv")
    assert f"{len(rows)} images" in lines[0]
    assert str(target / "demo.csv") in lines[0] and "next: loda-train" in lines[0]

    # An existing demo set is rewritten in place without --force.
    again = subprocess.run(cmd, capture_output=True, text=True, env=_cli_env(), check=False)
    assert again.returncode == 0, again.stderr

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"x")
    cmd[4] = str(foreign)
    refused = subprocess.run(cmd, capture_output=True, text=True, env=_cli_env(), check=False)
    assert refused.returncode == 1
    err = refused.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loda-data: error:") and "--force" in err[0]
    assert [p.name for p in foreign.iterdir()] == ["data.bin"]


def test_cli_runner_force_and_usage_errors(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    runner = CliRunner()
    result = runner.invoke(cli, ["demo", str(foreign), "--size", "64x48", "--force", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((foreign / "dataset.json").read_text())["seed"] == 2
    assert runner.invoke(cli, ["demo", str(tmp_path / "y"), "--size", "64"]).exit_code == 2
    assert runner.invoke(cli, ["demo", str(tmp_path / "y"), "--seed", "-1"]).exit_code == 2
