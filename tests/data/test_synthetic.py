"""Synthetic training images of the demo set (loda.data.synthetic, loda-train --synthetic-per-ref)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loda.data.demo import (
    DISTORTION_LEVELS,
    DISTORTIONS,
    DISTORTIONS_BY_VALUE,
    LEVELS,
    DemoDataError,
    load_reference,
    make_demo_set,
    pseudo_mos,
)
from loda.data.synthetic import LEVEL_RANGE, distortion_value, synthesize, synthesize_training_set

SMALL = (96, 64)
REFS = ["astronaut", "camera", "china"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_set(
        tmp_path_factory.mktemp("demo") / "set", size=SMALL, references=REFS
    ).parent


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_integer_levels_are_the_demo_sets_distortions() -> None:
    ref = load_reference("chelsea", (128, 96))
    for name, (_, values) in DISTORTION_LEVELS.items():
        for level in range(1, LEVELS + 1):
            assert distortion_value(name, level) == pytest.approx(values[level - 1]), name
            by_value = DISTORTIONS_BY_VALUE[name](
                ref, distortion_value(name, level), np.random.default_rng(5)
            )
            assert np.array_equal(by_value, DISTORTIONS[name](ref, level, np.random.default_rng(5)))
        lo, hi = sorted(values[1:3])
        assert lo <= distortion_value(name, 2.5) <= hi, name


def test_continuous_levels_lower_the_pseudo_mos_monotonically() -> None:
    ref = load_reference("astronaut", (128, 96))
    levels = [LEVEL_RANGE[0], 1.5, 2.5, 3.5, 4.5, LEVEL_RANGE[1]]
    for name, distort in DISTORTIONS_BY_VALUE.items():
        mos = [
            pseudo_mos(ref, distort(ref, distortion_value(name, u), np.random.default_rng(1)))
            for u in levels
        ]
        assert all(1.0 <= m < 5.0 for m in mos), (name, mos)
        assert all(np.diff(mos) < 0), (name, mos)


def test_reads_only_the_given_references_and_is_reproducible(demo: Path, tmp_path: Path) -> None:
    held_out = demo / "references" / "china.png"
    held_out.rename(tmp_path / "china.png")  # a held-out reference must never be needed
    try:
        samples = synthesize_training_set(demo, ["camera", "astronaut"], tmp_path / "a", 3, seed=4)
        with pytest.raises(DemoDataError, match="china"):
            synthesize_training_set(demo, ["china"], tmp_path / "c", 1)
    finally:
        (tmp_path / "china.png").rename(held_out)
    assert [s.ref for s in samples] == ["astronaut"] * 3 + ["camera"] * 3
    demo_images = {_digest(p) for p in (demo / "images").glob("*.png")}
    for s in samples:
        assert 1.0 <= s.mos <= 5.0
        with Image.open(s.path) as im:
            assert im.size == SMALL and im.mode == "RGB"
        assert _digest(s.path) not in demo_images
    with open(tmp_path / "a" / "synthetic.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], float(r["mos"]), r["ref"]) for r in rows] == [
        (s.name, s.mos, s.ref) for s in samples
    ]

    again = synthesize_training_set(demo, ["astronaut", "camera"], tmp_path / "b", 3, seed=4)
    assert [_digest(s.path) for s in again] == [_digest(s.path) for s in samples]
    assert [s.mos for s in again] == [s.mos for s in samples]
    other = synthesize_training_set(demo, ["astronaut", "camera"], tmp_path / "o", 3, seed=5)
    assert [_digest(s.path) for s in other] != [_digest(s.path) for s in samples]


def test_an_identical_call_reuses_the_files(demo: Path, tmp_path: Path) -> None:
    first = synthesize_training_set(demo, ["astronaut"], tmp_path, 2)
    stamps = [s.path.stat().st_mtime_ns for s in first]
    assert [s.path.stat().st_mtime_ns for s in synthesize_training_set(demo, ["astronaut"], tmp_path, 2)] == stamps  # fmt: skip
    more = synthesize_training_set(demo, ["astronaut"], tmp_path, 3)  # other settings: remade
    assert len(more) == 3
    assert (tmp_path / "synthetic.json").read_text().count('"per_ref": 3') == 1


def test_one_image_draws_only_from_its_own_seed() -> None:
    ref = load_reference("camera", SMALL)
    a, b = synthesize("camera", ref, 7, seed=0), synthesize("camera", ref, 7, seed=0)
    assert np.array_equal(a.image, b.image) and a.mos == b.mos and a.level == b.level
    assert LEVEL_RANGE[0] <= a.level <= LEVEL_RANGE[1]
    assert a.value == pytest.approx(distortion_value(a.distortion, a.level))
    assert not np.array_equal(a.image, synthesize("camera", ref, 8, seed=0).image)


def test_refuses_what_is_not_the_demo_set(tmp_path: Path, demo: Path) -> None:
    with pytest.raises(DemoDataError, match="not one"):
        synthesize_training_set(tmp_path, ["astronaut"], tmp_path / "o", 1)
    with pytest.raises(DemoDataError, match="nope"):
        synthesize_training_set(demo, ["nope"], tmp_path / "o", 1)
    with pytest.raises(DemoDataError, match="positive"):
        synthesize_training_set(demo, ["astronaut"], tmp_path / "o", 0)
