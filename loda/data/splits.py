"""Train/test splits for IQA benchmarks (the usual "k random 80/20 splits" protocol).

Synthetic datasets (LIVE, TID2013, KADID-10k, a CSV with a ``ref`` column) are split by
*reference content*: all distorted versions of one reference go to the same side, so no
reference is ever in both train and test. Authentic datasets are split by image.

For a seed, one ``np.random.default_rng(seed)`` draws a fresh permutation of the sorted
groups (references or image names) for each of the ``k`` splits; the first
``round(train_fraction * n_groups)`` groups go to train, the rest to test. Each split
stores the sorted sample *names* (:attr:`loda.data.datasets.Sample.name`, the path relative
to the dataset root), which is what :meth:`Splits.save` writes and :meth:`Splits.select`
maps back to samples.

Torch-free (numpy and the standard library only).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from loda.data.datasets import Dataset, DatasetError, Sample

__all__ = ["SPLITS_FORMAT", "Splits", "make_splits"]

SPLITS_FORMAT = "loda-splits/1"
"""Value of the ``format`` key in saved split files."""

Split = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True)
class Splits:
    """``k`` (train names, test names) pairs for one dataset, both sorted."""

    dataset: str
    seed: int
    k: int
    train_fraction: float
    by: Literal["ref", "image"]
    splits: tuple[Split, ...]

    def __len__(self) -> int:
        return len(self.splits)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the splits as JSON (indent 2); returns the path."""
        out = Path(path)
        doc = {
            "format": SPLITS_FORMAT,
            "dataset": self.dataset,
            "seed": self.seed,
            "k": self.k,
            "train_fraction": self.train_fraction,
            "by": self.by,
            "splits": [{"train": list(tr), "test": list(te)} for tr, te in self.splits],
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Splits:
        """Read a file written by :meth:`save`; anything malformed -> :class:`DatasetError`."""
        src = Path(path)
        if not src.is_file():
            raise DatasetError(f"splits: missing file {src}")
        try:
            doc = json.loads(src.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            msg = str(exc).splitlines()[0]
            raise DatasetError(f"splits: {src} is not valid JSON ({msg})") from None

        def bad(problem: str) -> DatasetError:
            return DatasetError(f"splits: {src}: {problem}")

        if not isinstance(doc, dict):
            raise bad("expected a JSON object")
        keys = {"format", "dataset", "seed", "k", "train_fraction", "by", "splits"}
        missing = sorted(keys - doc.keys())
        if missing:
            raise bad(f"missing key(s) {', '.join(missing)}")
        extra = sorted(doc.keys() - keys)
        if extra:
            raise bad(f"unexpected key(s) {', '.join(extra)}")
        if doc["format"] != SPLITS_FORMAT:
            raise bad(f"format is {doc['format']!r}, expected {SPLITS_FORMAT!r}")
        if not isinstance(doc["dataset"], str):
            raise bad("'dataset' must be a string")
        for key in ("seed", "k"):
            if not _is_int(doc[key]):
                raise bad(f"{key!r} must be an integer")
        frac = doc["train_fraction"]
        if not _is_number(frac) or not 0 < frac < 1:
            raise bad("'train_fraction' must be a number between 0 and 1")
        if doc["by"] not in ("ref", "image"):
            raise bad(f"'by' must be 'ref' or 'image', got {doc['by']!r}")
        raw = doc["splits"]
        if not isinstance(raw, list):
            raise bad("'splits' must be a list")
        if len(raw) != doc["k"]:
            raise bad(f"'k' is {doc['k']} but there are {len(raw)} splits")
        if not raw:
            raise bad("it holds no split (k = 0)")
        splits: list[Split] = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or set(item) != {"train", "test"}:
                raise bad(f"split {i} must be an object with keys 'train' and 'test'")
            parts = []
            for side in ("train", "test"):
                names = item[side]
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise bad(f"split {i} {side!r} must be a list of strings")
                if len(set(names)) != len(names):
                    raise bad(f"split {i} {side!r} lists a name more than once")
                parts.append(tuple(sorted(names)))
            overlap = set(parts[0]) & set(parts[1])
            if overlap:
                raise bad(f"split {i} has {len(overlap)} name(s) in both train and test")
            splits.append((parts[0], parts[1]))
        return cls(
            dataset=doc["dataset"],
            seed=int(doc["seed"]),
            k=int(doc["k"]),
            train_fraction=float(frac),
            by=doc["by"],
            splits=tuple(splits),
        )

    def select(self, dataset: Dataset, i: int) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
        """Samples of split ``i`` as (train, test), in the stored (sorted name) order.

        Refuses splits made for another dataset, and, for a synthetic dataset, splits that are
        not by reference or that put a reference on both sides (a test reference would leak
        into training).
        """
        if not _is_int(i) or not 0 <= i < len(self.splits):
            raise DatasetError(
                f"splits: split index {i!r} out of range (0..{len(self.splits) - 1})"
            )
        if self.dataset != dataset.name:
            raise DatasetError(f"splits: made for dataset {self.dataset!r}, not {dataset.name!r}")
        if dataset.synthetic and self.by != "ref":
            raise DatasetError(
                f"splits: dataset {dataset.name!r} is synthetic but these splits are by "
                f"{self.by}, so references would be shared by train and test; make splits "
                "by reference (loda.data.splits.make_splits)"
            )
        by_name = {s.name: s for s in dataset.samples}
        out = []
        for names in self.splits[i]:
            absent = [n for n in names if n not in by_name]
            if absent:
                raise DatasetError(
                    f"splits: {len(absent)} name(s) of split {i} are not in dataset "
                    f"{dataset.name!r} (first: {absent[0]!r})"
                )
            out.append(tuple(by_name[n] for n in names))
        if dataset.synthetic:
            shared = {s.ref for s in out[0]} & {s.ref for s in out[1]}
            if shared:
                raise DatasetError(
                    f"splits: split {i} puts {len(shared)} reference(s) of {dataset.name!r} in "
                    f"both train and test (first: {sorted(shared)[0]!r})"
                )
        return out[0], out[1]


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def make_splits(
    dataset: Dataset, k: int = 10, seed: int = 0, train_fraction: float = 0.8
) -> Splits:
    """``k`` random train/test splits of ``dataset``, deterministic for ``seed``.

    Synthetic datasets are split by reference (``by="ref"``), authentic ones by image
    (``by="image"``). Raises :class:`DatasetError` when a side would be empty (too few
    references or images for ``train_fraction``) or a synthetic sample has no ``ref``.
    """
    if not _is_int(k) or k < 1:
        raise DatasetError(f"splits: k must be a positive integer, got {k!r}")
    if not _is_int(seed):
        raise DatasetError(f"splits: seed must be an integer, got {seed!r}")
    if not _is_number(train_fraction) or not 0 < train_fraction < 1:
        raise DatasetError(f"splits: train_fraction must be in (0, 1), got {train_fraction!r}")
    if len(dataset) == 0:
        raise DatasetError(f"splits: dataset {dataset.name!r} has no samples")

    by: Literal["ref", "image"] = "ref" if dataset.synthetic else "image"
    members: dict[str, list[str]] = {}
    for s in dataset.samples:
        if by == "ref":
            if s.ref is None:
                raise DatasetError(
                    f"splits: dataset {dataset.name!r} is synthetic but {s.name!r} has no ref"
                )
            key = s.ref
        else:
            key = s.name
        members.setdefault(key, []).append(s.name)
    groups = sorted(members)
    n_train = round(train_fraction * len(groups))
    if not 0 < n_train < len(groups):
        what = "references" if by == "ref" else "images"
        raise DatasetError(
            f"splits: dataset {dataset.name!r} has {len(groups)} {what}, too few for "
            f"train_fraction {train_fraction} (a side would be empty)"
        )

    rng = np.random.default_rng(int(seed))
    splits: list[Split] = []
    for _ in range(int(k)):
        order = rng.permutation(len(groups))
        train_groups = [groups[j] for j in order[:n_train]]
        test_groups = [groups[j] for j in order[n_train:]]
        train = tuple(sorted(n for g in train_groups for n in members[g]))
        test = tuple(sorted(n for g in test_groups for n in members[g]))
        splits.append((train, test))
    return Splits(
        dataset=dataset.name,
        seed=int(seed),
        k=int(k),
        train_fraction=float(train_fraction),
        by=by,
        splits=tuple(splits),
    )
