"""loda-data pack: a tar of a dataset's (held-out) images plus a MOS manifest."""

from __future__ import annotations

import csv
import subprocess
import sys
import tarfile

from loda.data.datasets import read_dataset
from loda.data.splits import make_splits


def test_pack_held_out_images(tmp_path, tmp_path_factory):
    from micro import tiny_demo_set

    demo = tiny_demo_set(tmp_path_factory)
    csv_path = demo / "demo.csv"
    dataset = read_dataset("csv", csv_path)
    splits = make_splits(dataset, k=2, seed=0, train_fraction=0.5)
    splits_path = splits.save(tmp_path / "splits.json")
    out = tmp_path / "held" / "test.tar"
    r = subprocess.run(
        [sys.executable, "-m", "loda.data.cli", "pack", str(csv_path), "-o", str(out),
         "--splits", str(splits_path), "--split", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    _train, test = splits.select(dataset, 1)
    with tarfile.open(out) as tf:
        names = tf.getnames()
        assert names == [s.name for s in test]
        assert tf.extractfile(names[0]).read() == test[0].path.read_bytes()
    with open(out.with_name("test.tar.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["source"] for r in rows] == [f"{out}::{s.name}" for s in test]
    assert [float(r["mos"]) for r in rows] == [s.mos for s in test]
    assert {r["ref"] for r in rows}.isdisjoint({s.ref for s in _train})

    # loda-calib reads the MOS of archive members from this manifest (relative paths as well).
    from loda.calib.int8 import select_images

    rel = subprocess.run(
        [sys.executable, "-m", "loda.data.cli", "pack", str(csv_path), "-o", "rel.tar"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert rel.returncode == 0, rel.stderr
    for archive, expected in [(out, test), (tmp_path / "rel.tar", dataset.samples)]:
        _, calib, _, held = select_images(archive, n_calib=3, n_verify=4)
        by_name = {s.name: s.mos for s in expected}
        assert [i.mos for i in calib + held] == [by_name[i.name] for i in calib + held]
