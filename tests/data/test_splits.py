"""Tests for loda.data.splits: group-disjoint, reproducible train/test splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loda.data.datasets import Dataset, DatasetError, Sample
from loda.data.splits import SPLITS_FORMAT, Splits, make_splits


def synthetic(n_refs: int = 10, per_ref: int = 3) -> Dataset:
    samples = tuple(
        Sample(path=Path(f"/d/r{r:02d}_{j}.png"), mos=float(r + j), ref=f"r{r:02d}",
               name=f"r{r:02d}_{j}.png")
        for r in range(n_refs)
        for j in range(per_ref)
    )  # fmt: skip
    return Dataset("synth", Path("/d"), samples, (0.0, 20.0), True, "test")


def authentic(n: int = 25) -> Dataset:
    samples = tuple(
        Sample(path=Path(f"/d/{i:03d}.jpg"), mos=float(i), ref=None, name=f"{i:03d}.jpg")
        for i in range(n)
    )
    return Dataset("auth", Path("/d"), samples, (0.0, 100.0), False, "test")


def refs_of(ds: Dataset, names) -> set[str]:
    by = {s.name: s.ref for s in ds.samples}
    return {by[n] for n in names}


def test_synthetic_split_by_ref():
    ds = synthetic()
    sp = make_splits(ds, k=5, seed=3)
    assert sp.by == "ref" and sp.k == 5 and len(sp.splits) == 5 and sp.dataset == "synth"
    for train, test in sp.splits:
        tr, te = refs_of(ds, train), refs_of(ds, test)
        assert not tr & te  # no reference in both
        assert len(tr) == 8 and len(te) == 2  # round(0.8 * 10)
        assert len(train) == 24 and len(test) == 6
        assert list(train) == sorted(train) and list(test) == sorted(test)
        assert set(train) | set(test) == set(ds.names)


def test_authentic_split_by_image():
    ds = authentic(25)
    sp = make_splits(ds, k=3, seed=0, train_fraction=0.8)
    assert sp.by == "image" and len(sp) == 3
    for train, test in sp.splits:
        assert len(train) == 20 and len(test) == 5
        assert not set(train) & set(test)
        assert set(train) | set(test) == set(ds.names)


def test_reproducible_and_seed_dependent():
    ds = synthetic(20)
    a = make_splits(ds, k=4, seed=7)
    assert a == make_splits(ds, k=4, seed=7)
    assert a.splits != make_splits(ds, k=4, seed=8).splits
    # splits within one run differ from each other
    assert len({test for _, test in a.splits}) > 1
    # order of samples in the dataset does not matter
    shuffled = Dataset(ds.name, ds.root, ds.samples[::-1], ds.mos_range, True, "")
    assert make_splits(shuffled, k=4, seed=7) == a


def test_default_k_is_10():
    assert len(make_splits(authentic()).splits) == 10


def test_save_load_round_trip(tmp_path):
    sp = make_splits(synthetic(), k=3, seed=1)
    path = sp.save(tmp_path / "sub" / "splits.json")
    text = path.read_text()
    assert text.startswith('{\n  "format"')  # indent 2
    assert json.loads(text)["format"] == SPLITS_FORMAT
    assert Splits.load(path) == sp


def test_select(tmp_path):
    ds = synthetic()
    sp = make_splits(ds, k=2, seed=0)
    train, test = sp.select(ds, 1)
    assert [s.name for s in train] == list(sp.splits[1][0])
    assert all(isinstance(s, Sample) for s in train + test)
    assert not {s.ref for s in train} & {s.ref for s in test}
    with pytest.raises(DatasetError, match="out of range"):
        sp.select(ds, 2)
    other = synthetic(n_refs=3)
    with pytest.raises(DatasetError, match="not in dataset 'synth'"):
        sp.select(other, 0)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": "loda-splits/1"}', "missing key"),
        (None, "'k' is 3 but there are 2 splits"),
        (None, "'by' must be"),
        (None, "must be a list of strings"),
        (None, "in both train and test"),
        (None, "'seed' must be an integer"),
    ],
)
def test_load_malformed(tmp_path, content, match):
    path = tmp_path / "s.json"
    if content is None:
        doc = json.loads(make_splits(synthetic(), k=3, seed=0).save(path).read_text())
        if "'k'" in match:
            doc["splits"] = doc["splits"][:2]
        elif "'by'" in match:
            doc["by"] = "content"
        elif "list of strings" in match:
            doc["splits"][0]["test"] = [1, 2]
        elif "both" in match:
            doc["splits"][0]["test"].append(doc["splits"][0]["train"][0])
        else:
            doc["seed"] = "zero"
        content = json.dumps(doc)
    path.write_text(content)
    with pytest.raises(DatasetError, match=match) as exc:
        Splits.load(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="missing file"):
        Splits.load(tmp_path / "none.json")


def test_bad_arguments():
    with pytest.raises(DatasetError, match="too few"):
        make_splits(synthetic(n_refs=1))
    with pytest.raises(DatasetError, match="k must be"):
        make_splits(authentic(), k=0)
    with pytest.raises(DatasetError, match="train_fraction"):
        make_splits(authentic(), train_fraction=1.0)
    broken = Dataset("b", Path("/d"), (Sample(Path("/d/a"), 1.0, None, "a"),) * 2, (0, 1), True, "")
    with pytest.raises(DatasetError, match="has no ref"):
        make_splits(broken)


def test_select_refuses_splits_that_would_leak_or_belong_elsewhere(tmp_path):
    import dataclasses

    ds = synthetic()
    # Splits by image of the same samples (as if the set had been read as authentic).
    by_image = make_splits(dataclasses.replace(ds, synthetic=False), k=2, seed=0)
    assert by_image.by == "image"
    with pytest.raises(DatasetError, match="synthetic but these splits are by image"):
        by_image.select(ds, 0)
    # By reference on paper, but r00 on both sides (a hand-edited file).
    names = sorted(ds.names)
    leaky = dataclasses.replace(
        make_splits(ds, k=1, seed=0), splits=((tuple(names[1:]), (names[0],)),)
    )
    with pytest.raises(DatasetError, match=r"1 reference\(s\) of 'synth' in both train and test"):
        leaky.select(ds, 0)
    with pytest.raises(DatasetError, match="made for dataset 'synth', not 'auth'"):
        make_splits(ds, k=1).select(authentic(), 0)
    doc = json.loads(make_splits(ds, k=1).save(tmp_path / "s.json").read_text())
    (tmp_path / "k0.json").write_text(json.dumps({**doc, "k": 0, "splits": []}))
    with pytest.raises(DatasetError, match=r"holds no split \(k = 0\)"):
        Splits.load(tmp_path / "k0.json")
