"""Readers for the IQA benchmarks, opened exactly as their authors distribute them.

No conversion scripts and no pickles: each reader takes the dataset's root folder (as
unpacked from the official archive), reads the official label file(s) with the official
column / variable names, checks that every referenced image exists, and returns a
:class:`Dataset` of :class:`Sample` records.

Kinds (see :data:`READERS` and :func:`read_dataset`):

==========  ===============================================  ==============  =========
kind        label file(s)                                     original scale  synthetic
==========  ===============================================  ==============  =========
koniq10k    koniq10k_scores_and_distributions.csv (``MOS``)   MOS 1-5 up      no
kadid10k    dmos.csv (``dist_img, ref_img, dmos``)            MOS 1-5 up      yes (ref)
live        dmos.mat + refnames_all.mat (release 2; or        DMOS 0-100 down yes (ref)
            dmos_realigned.mat with ``?dmos=realigned``)
tid2013     mos_with_names.txt                                MOS 0-9 up      yes (ref)
livec       Data/AllImages_release.mat + AllMOS_release.mat   MOS 0-100 up    no
spaq        MOS and Image attribute scores.xlsx               MOS 0-100 up    no
flive       labels_image.csv (``name, mos``; at the root or   MOS 0-100 up    no
            in ``database/``, the PaQ-2-PiQ repository)
csv         generic ``path,mos[,ref]`` CSV                    as given, up    iff ``ref``
==========  ===============================================  ==============  =========

MOS direction: after reading, every ``Sample.mos`` is *higher is better* and
``Dataset.mos_range`` is the range on that scale. The only dataset that is distributed as
lower-is-better is LIVE (DMOS); it is converted by the single function
:func:`to_higher_is_better`. (KADID-10k's column is called ``dmos`` but holds a MOS, higher
is better, and is used as is.)

Errors are :class:`DatasetError` with a one-line message naming the dataset, the file and
the problem.

This module is torch-free (numpy, scipy, openpyxl and the standard library only).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loda.errors import LodaError

__all__ = [
    "LIVE_FOLDERS",
    "LIVE_OFFICIAL_COUNTS",
    "READERS",
    "Dataset",
    "DatasetError",
    "Sample",
    "read_csv_dataset",
    "read_dataset",
    "read_flive",
    "read_kadid10k",
    "read_koniq10k",
    "read_live",
    "read_livec",
    "read_spaq",
    "read_tid2013",
    "to_higher_is_better",
]


class DatasetError(LodaError):
    """A dataset folder or label file is missing, malformed, or references missing images."""


# --------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One image with its subjective score.

    ``mos`` is on the dataset's higher-is-better scale, ``ref`` names the pristine reference
    content for synthetic datasets (``None`` for authentic ones) and ``name`` is the image
    path relative to the dataset root (POSIX separators), used as the stable id in splits.
    """

    path: Path
    mos: float
    ref: str | None
    name: str


@dataclass(frozen=True)
class Dataset:
    """A benchmark as read from disk; all ``mos`` are higher-is-better within ``mos_range``."""

    name: str
    root: Path
    samples: tuple[Sample, ...]
    mos_range: tuple[float, float]
    synthetic: bool
    higher_is_better_note: str

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def mos(self) -> np.ndarray:
        """MOS of all samples (float64, sample order)."""
        return np.array([s.mos for s in self.samples], dtype=np.float64)

    @property
    def names(self) -> tuple[str, ...]:
        """Stable ids of all samples (sample order)."""
        return tuple(s.name for s in self.samples)

    @property
    def refs(self) -> tuple[str, ...]:
        """Sorted unique reference ids (empty for authentic datasets)."""
        return tuple(sorted({s.ref for s in self.samples if s.ref is not None}))

    def to_csv(self, path: str | os.PathLike[str], *, write_meta: bool = True) -> Path:
        """Write the generic ``path,mos[,ref]`` layout readable by :func:`read_csv_dataset`.

        Image paths are written relative to the CSV's folder when the images lie below it,
        absolute otherwise; MOS are written exactly (``repr``) on the higher-is-better scale;
        the ``ref`` column is written iff the dataset is synthetic. With ``write_meta`` (the
        default) a ``dataset.json`` holding ``name`` and ``mos_range`` is written next to the
        CSV so that reading it back restores both. Returns the CSV path.
        """
        out = Path(path)
        base = out.parent.resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "mos", "ref"] if self.synthetic else ["path", "mos"])
            for s in self.samples:
                p = Path(s.path)
                p_abs = p if p.is_absolute() else p.resolve()
                try:
                    rel = p_abs.relative_to(base).as_posix()
                except ValueError:
                    rel = p_abs.as_posix()
                row = [rel, repr(float(s.mos))]
                if self.synthetic:
                    row.append("" if s.ref is None else s.ref)
                writer.writerow(row)
        if write_meta:
            meta = {"name": self.name, "mos_range": [float(v) for v in self.mos_range]}
            (out.parent / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        return out


# --------------------------------------------------------------------------------------
# MOS direction
# --------------------------------------------------------------------------------------


def to_higher_is_better(values: Any, lo: float, hi: float) -> Any:
    """Flip a lower-is-better score (e.g. DMOS) on ``[lo, hi]`` to higher-is-better.

    Returns ``lo + hi - values``: the affine reflection that maps ``lo`` to ``hi`` and ``hi``
    to ``lo``, so the range stays ``(lo, hi)`` and distances (hence PLCC/RMSE up to sign and
    all rank correlations up to sign) are preserved. It is its own inverse. Values outside
    ``[lo, hi]`` (LIVE's DMOS slightly exceeds 0-100) are reflected the same way, not
    clipped. A scalar gives a ``float``, anything else a float64 ``np.ndarray``.

    This is the only place where a MOS direction is changed; it is used by the LIVE reader
    (``to_higher_is_better(dmos, 0, 100)``, so DMOS 20 becomes 80).
    """
    arr = np.asarray(values, dtype=np.float64)
    out = float(lo) + float(hi) - arr
    if arr.ndim == 0:
        return float(out)
    return out


# --------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------


def _root(label: str, root: str | os.PathLike[str]) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"{label}: dataset folder {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{label}: {path} is not a folder (give the dataset's root folder)")
    return path


def _require_file(label: str, path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"{label}: missing file {path}")
    return path


def _require_dir(label: str, path: Path) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{label}: missing folder {path}")
    return path


def _name(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _number(label: str, where: str, column: str, value: Any) -> float:
    """Parse one score; ``where`` is e.g. ``"dmos.csv line 5"``."""
    try:
        out = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{label}: {where}: {column} {value!r} is not a number") from None
    if not math.isfinite(out):
        raise DatasetError(f"{label}: {where}: {column} is {value!r}, not a finite number")
    return out


def _read_text(label: str, path: Path) -> str:
    _require_file(label, path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_csv(label: str, path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (stripped) and the non-empty data rows with their 1-based line numbers."""
    text = _read_text(label, path)
    try:
        rows = [(i, row) for i, row in enumerate(csv.reader(text.splitlines()), 1)]
    except csv.Error as exc:
        raise DatasetError(f"{label}: {path.name} is not a readable CSV file ({exc})") from None
    rows = [(i, row) for i, row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DatasetError(f"{label}: {path.name} is empty (no header row)")
    header = [cell.strip() for cell in rows[0][1]]
    return header, rows[1:]


def _records(
    label: str,
    filename: str,
    header: Sequence[Any],
    rows: Iterable[tuple[int, Sequence[Any]]],
    *,
    names: Sequence[str],
    score: str,
    unit: str = "line",
) -> Iterator[tuple[str, list[str], float]]:
    """Each row as (where, the non-empty texts of the ``names`` columns, the ``score`` number);
    the columns are found by name in ``header``."""
    i_names = [_column(label, filename, header, c) for c in names]
    i_score = _column(label, filename, header, score)
    for line, row in rows:
        where = f"{filename} {unit} {line}"
        texts = []
        for i, column in zip(i_names, names, strict=True):
            cell = _cell(label, where, row, i, column)
            text = "" if cell is None else str(cell).strip()
            if not text:
                raise DatasetError(f"{label}: {where}: empty {column!r}")
            texts.append(text)
        yield where, texts, _number(label, where, score, _cell(label, where, row, i_score, score))


def _column(label: str, filename: str, header: Sequence[Any], wanted: str) -> int:
    """Index of column ``wanted``: exact match first, else a unique case-insensitive one."""
    cells = ["" if h is None else str(h).strip() for h in header]
    if wanted in cells:
        return cells.index(wanted)
    folded = [i for i, h in enumerate(cells) if h.casefold() == wanted.casefold()]
    if len(folded) == 1:
        return folded[0]
    shown = ", ".join(repr(h) for h in cells)
    raise DatasetError(f"{label}: {filename} has no column {wanted!r} (columns: {shown})")


def _cell(label: str, where: str, row: Sequence[Any], index: int, column: str) -> Any:
    if index >= len(row):
        raise DatasetError(f"{label}: {where}: row has {len(row)} fields, no {column!r} value")
    return row[index]


def _check_images(label: str, listing: str, paths: Sequence[Path]) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(
            f"{label}: {len(missing)} of {len(paths)} images listed in {listing} are "
            f"missing (first: {missing[0]})"
        )


def _finish(
    label: str,
    listing: str,
    *,
    name: str,
    root: Path,
    samples: Iterable[Sample],
    mos_range: tuple[float, float],
    synthetic: bool,
    note: str,
) -> Dataset:
    items = tuple(samples)
    if not items:
        raise DatasetError(f"{label}: {listing} lists no images")
    _check_images(label, listing, [s.path for s in items])
    seen: set[str] = set()
    for s in items:
        if s.name in seen:
            raise DatasetError(f"{label}: {listing} lists image {s.name!r} more than once")
        seen.add(s.name)
    return Dataset(
        name=name,
        root=root,
        samples=items,
        mos_range=(float(mos_range[0]), float(mos_range[1])),
        synthetic=synthetic,
        higher_is_better_note=note,
    )


# --------------------------------------------------------------------------------------
# MATLAB files
# --------------------------------------------------------------------------------------


def _loadmat(label: str, path: Path) -> dict[str, Any]:
    import scipy.io

    _require_file(label, path)
    try:
        data = scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise DatasetError(
            f"{label}: {path.name} is a MATLAB v7.3 (HDF5) file, which is not supported; "
            "use the file as distributed"
        ) from None
    except Exception as exc:  # scipy raises ValueError/TypeError/... for non-MAT data
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"{label}: {path.name} is not a readable MAT file ({msg})") from None
    return data


def _mat_var(label: str, path: Path, data: dict[str, Any], var: str) -> np.ndarray:
    if var not in data:
        have = ", ".join(sorted(k for k in data if not k.startswith("__"))) or "none"
        raise DatasetError(f"{label}: {path.name} has no variable {var!r} (variables: {have})")
    return np.asarray(data[var])


def _mat_numbers(label: str, path: Path, var: str, arr: np.ndarray) -> np.ndarray:
    """A 1xN / Nx1 / N numeric MATLAB array as a 1-D float64 vector."""
    if arr.ndim > 1 and sum(d != 1 for d in arr.shape) > 1:
        raise DatasetError(f"{label}: {path.name}: {var} has shape {arr.shape}, expected 1xN")
    try:
        out = arr.astype(np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DatasetError(f"{label}: {path.name}: {var} is not numeric") from None
    bad = ~np.isfinite(out)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{label}: {path.name}: {var}[{first}] is {out[first]}, not finite")
    return out


def _mat_string(value: Any) -> str | None:
    """Unwrap one MATLAB cell element (char array, possibly nested in 1x1 cells)."""
    while isinstance(value, np.ndarray):
        if value.dtype.kind in "US":
            flat = [str(v) for v in value.reshape(-1)]
            return "".join(flat) if value.ndim <= 1 or value.size <= 1 else None
        if value.dtype == object and value.size == 1:
            value = value.reshape(-1)[0]
            continue
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    return None


def _mat_strings(label: str, path: Path, var: str, arr: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings (1xN or Nx1, elements possibly nested) or char matrix."""
    if arr.dtype.kind in "US":  # char matrix: one row per name
        return [str(v).strip() for v in arr.reshape(-1)]
    if arr.dtype != object:
        raise DatasetError(f"{label}: {path.name}: {var} is not a cell array of file names")
    if arr.size == 1 and isinstance(arr.reshape(-1)[0], np.ndarray):
        inner = arr.reshape(-1)[0]
        if inner.dtype == object and inner.size > 1:  # a cell wrapped in a 1x1 cell
            arr = inner
    if arr.ndim > 1 and sum(d != 1 for d in arr.shape) > 1:
        raise DatasetError(f"{label}: {path.name}: {var} has shape {arr.shape}, expected 1xN")
    out: list[str] = []
    for i, item in enumerate(arr.reshape(-1)):
        text = _mat_string(item)
        if text is None:
            raise DatasetError(f"{label}: {path.name}: {var}{{{i + 1}}} is not a string")
        out.append(text.strip())
    return out


# --------------------------------------------------------------------------------------
# KonIQ-10k
# --------------------------------------------------------------------------------------

KONIQ_CSV = "koniq10k_scores_and_distributions.csv"
KONIQ_IMAGE_DIRS = ("1024x768", "512x384")


def read_koniq10k(root: str | os.PathLike[str], *, image_dir: str | None = None) -> Dataset:
    """KonIQ-10k (Hosu et al. 2020), authentic, 10,073 images.

    Reads ``koniq10k_scores_and_distributions.csv`` by column name: ``image_name`` and
    ``MOS``. ``MOS`` is on the 1-5 ACR scale, **higher is better**, used as is;
    ``mos_range = (1, 5)``. (The older release's ``MOS_zscore`` column, 0-100, is ignored.)
    Images are read from ``1024x768/`` if present, else ``512x384/``; ``image_dir`` picks
    one explicitly. No references.
    """
    label = "KonIQ-10k"
    base = _root(label, root)
    table = _require_file(label, base / KONIQ_CSV)
    if image_dir is None:
        found = [d for d in KONIQ_IMAGE_DIRS if (base / d).is_dir()]
        if not found:
            raise DatasetError(
                f"{label}: missing image folder {base / KONIQ_IMAGE_DIRS[0]} "
                f"(or {base / KONIQ_IMAGE_DIRS[1]})"
            )
        image_dir = found[0]
    images = _require_dir(label, base / image_dir)

    header, rows = _read_csv(label, table)
    samples = [
        Sample(path=images / fname, mos=mos, ref=None, name=_name(base, images / fname))
        for _, (fname,), mos in _records(
            label, table.name, header, rows, names=["image_name"], score="MOS"
        )
    ]
    return _finish(
        label,
        table.name,
        name="koniq10k",
        root=base,
        samples=samples,
        mos_range=(1.0, 5.0),
        synthetic=False,
        note="MOS 1-5 (higher is better), used as distributed",
    )


# --------------------------------------------------------------------------------------
# KADID-10k
# --------------------------------------------------------------------------------------


def read_kadid10k(root: str | os.PathLike[str]) -> Dataset:
    """KADID-10k (Lin et al. 2019), synthetic, 10,125 images of 81 references.

    Reads ``dmos.csv`` by column name: ``dist_img``, ``ref_img``, ``dmos`` (``var`` is
    ignored). Despite its name, KADID's ``dmos`` is a MOS on the 1-5 scale, **higher is
    better**, used as is; ``mos_range = (1, 5)``. Distorted images are in ``images/``
    (``I01_01_01.png`` ...); ``ref`` is the ``ref_img`` entry (e.g. ``I01.png``).
    """
    label = "KADID-10k"
    base = _root(label, root)
    table = _require_file(label, base / "dmos.csv")
    images = _require_dir(label, base / "images")
    header, rows = _read_csv(label, table)
    samples = [
        Sample(path=images / fname, mos=mos, ref=ref, name=_name(base, images / fname))
        for _, (fname, ref), mos in _records(
            label, table.name, header, rows, names=["dist_img", "ref_img"], score="dmos"
        )
    ]
    return _finish(
        label,
        table.name,
        name="kadid10k",
        root=base,
        samples=samples,
        mos_range=(1.0, 5.0),
        synthetic=True,
        note="MOS 1-5 (higher is better; the column is named 'dmos' but is a MOS), used as is",
    )


# --------------------------------------------------------------------------------------
# LIVE IQA release 2
# --------------------------------------------------------------------------------------

LIVE_FOLDERS = ("jp2k", "jpeg", "wn", "gblur", "fastfading")
"""Order of the distortion folders in LIVE's ``dmos.mat`` / ``refnames_all.mat``."""

LIVE_OFFICIAL_COUNTS = {"jp2k": 227, "jpeg": 233, "wn": 174, "gblur": 174, "fastfading": 174}
"""Images per folder in the official release (982 in all, 779 distorted + 203 references)."""

_LIVE_IMG = re.compile(r"img(\d+)\.bmp", re.IGNORECASE)

LIVE_DMOS = {"original": ("dmos.mat", "dmos"), "realigned": ("dmos_realigned.mat", "dmos_new")}
"""LIVE label choices: ``dmos`` option -> (file, DMOS variable); both files hold ``orgs``."""


def read_live(root: str | os.PathLike[str], *, dmos: str = "original") -> Dataset:
    """LIVE IQA release 2 (Sheikh et al. 2006), synthetic, 779 distorted images of 29 refs.

    Reads ``dmos.mat`` (``dmos`` and ``orgs``, 1xN each) and ``refnames_all.mat``
    (``refnames_all``, 1xN cell of reference file names). Entry ``j`` of these vectors is
    image ``img{i}.bmp`` of one of the folders ``jp2k, jpeg, wn, gblur, fastfading``, taken
    in that fixed order (official counts 227, 233, 174, 174, 174: N = 982). The count per
    folder is *not* hard-coded: each folder must hold ``img1.bmp ... imgK.bmp`` (numbered
    from 1 without gaps; the name is matched case-insensitively) and the K's must add up to
    N, which also lets miniature copies of the layout be read. Entries with ``orgs == 1``
    are the undistorted references and are excluded.

    DMOS is on a 0-100 scale (roughly; a few values fall slightly outside), **lower is
    better**; it is converted with ``to_higher_is_better(dmos, 0, 100)`` (DMOS 20 -> 80),
    ``mos_range = (0, 100)``. ``ref`` is the ``refnames_all`` entry (e.g. ``parrots.bmp``).

    ``dmos="original"`` (default, as pyiqa) reads ``dmos.mat`` (``dmos``, ``orgs``);
    ``dmos="realigned"`` reads the release's realigned scores, ``dmos_realigned.mat``
    (``dmos_new``, ``orgs``), which the LoDa authors' data script uses (and HyperIQA's);
    the same conversion applies.
    """
    label = "LIVE"
    if dmos not in LIVE_DMOS:
        raise DatasetError(f"{label}: dmos must be one of {', '.join(LIVE_DMOS)}, got {dmos!r}")
    base = _root(label, root)
    dmos_file, dmos_var = LIVE_DMOS[dmos]
    dmos_path = base / dmos_file
    refs_path = base / "refnames_all.mat"
    dmos_mat = _loadmat(label, dmos_path)
    dmos_values = _mat_numbers(
        label, dmos_path, dmos_var, _mat_var(label, dmos_path, dmos_mat, dmos_var)
    )
    orgs = _mat_numbers(label, dmos_path, "orgs", _mat_var(label, dmos_path, dmos_mat, "orgs"))
    refs_mat = _loadmat(label, refs_path)
    refnames = _mat_strings(
        label, refs_path, "refnames_all", _mat_var(label, refs_path, refs_mat, "refnames_all")
    )
    n = dmos_values.size
    if orgs.size != n:
        raise DatasetError(
            f"{label}: {dmos_file}: {dmos_var} has {n} values but orgs has {orgs.size}"
        )
    if len(refnames) != n:
        raise DatasetError(
            f"{label}: refnames_all.mat has {len(refnames)} names but {dmos_file} has {n} values"
        )

    files = _live_files(label, base, dmos_file, n)
    _check_images(label, dmos_file, files)

    mos = to_higher_is_better(dmos_values, 0.0, 100.0)
    samples = [
        Sample(path=files[j], mos=float(mos[j]), ref=refnames[j], name=_name(base, files[j]))
        for j in range(n)
        if orgs[j] != 1
    ]
    return _finish(
        label,
        dmos_file,
        name="live",
        root=base,
        samples=samples,
        mos_range=(0.0, 100.0),
        synthetic=True,
        note=f"DMOS 0-100 (lower is better, {dmos_file} {dmos_var}) converted with "
        "to_higher_is_better(dmos, 0, 100)",
    )


def _live_files(label: str, base: Path, dmos_file: str, n: int) -> list[Path]:
    """``img1.bmp ... imgK.bmp`` of each folder in LIVE's order; their count must be ``n``."""
    files: list[Path] = []
    counts: list[str] = []
    for folder in LIVE_FOLDERS:
        fdir = _require_dir(label, base / folder)
        numbered: dict[int, Path] = {}
        for entry in fdir.iterdir():
            m = _LIVE_IMG.fullmatch(entry.name)
            if m and entry.is_file():
                numbered[int(m.group(1))] = entry
        k = max(numbered, default=0)
        counts.append(f"{folder} {k}")
        files.extend(numbered.get(i, fdir / f"img{i}.bmp") for i in range(1, k + 1))
    if len(files) != n:
        official = ", ".join(f"{f} {c}" for f, c in LIVE_OFFICIAL_COUNTS.items())
        raise DatasetError(
            f"{label}: {dmos_file} has {n} entries but the folders hold {len(files)} images "
            f"img1..imgK ({', '.join(counts)}; official release: {official})"
        )
    return files


# --------------------------------------------------------------------------------------
# TID2013
# --------------------------------------------------------------------------------------


def read_tid2013(root: str | os.PathLike[str]) -> Dataset:
    """TID2013 (Ponomarenko et al. 2015), synthetic, 3,000 images of 25 references.

    Reads ``mos_with_names.txt`` (lines ``"<MOS> <file name>"``, e.g.
    ``5.51429 i01_01_1.bmp``) and the images in ``distorted_images/``, matching file names
    case-insensitively (the release mixes ``.bmp`` and ``.BMP``). MOS is on a 0-9 scale,
    **higher is better**, used as is; ``mos_range = (0, 9)``. ``ref`` is the reference id
    before the first underscore, lowercased (``i01``; ``i25`` is TID2013's synthetic
    reference image and is included like the others).
    """
    label = "TID2013"
    base = _root(label, root)
    listing = base / "mos_with_names.txt"
    text = _read_text(label, listing)
    images = _require_dir(label, base / "distorted_images")
    by_lower = {p.name.lower(): p for p in images.iterdir()}
    samples = []
    for line, raw in enumerate(text.splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        where = f"{listing.name} line {line}"
        if len(parts) != 2:
            raise DatasetError(
                f"{label}: {where}: expected '<MOS> <file name>', got {raw.strip()!r}"
            )
        mos = _number(label, where, "MOS", parts[0])
        fname = parts[1]
        ref = fname.split("_", 1)[0].lower()
        if "_" not in fname or not ref:
            raise DatasetError(f"{label}: {where}: {fname!r} is not named like i01_01_1.bmp")
        path = by_lower.get(fname.lower(), images / fname)
        samples.append(Sample(path=path, mos=mos, ref=ref, name=_name(base, path)))
    return _finish(
        label,
        listing.name,
        name="tid2013",
        root=base,
        samples=samples,
        mos_range=(0.0, 9.0),
        synthetic=True,
        note="MOS 0-9 (higher is better), used as distributed",
    )


# --------------------------------------------------------------------------------------
# LIVE In the Wild Image Quality Challenge
# --------------------------------------------------------------------------------------


_LIVEC_TRAINING = re.compile(r"t[1-7]\.bmp", re.IGNORECASE)  # the study's training images


def read_livec(root: str | os.PathLike[str], *, training_images: str = "drop") -> Dataset:
    """LIVE Challenge (Ghadiyaram & Bovik 2016), authentic, 1,162 images (1,169 listed).

    Reads ``Data/AllImages_release.mat`` (``AllImages_release``, Nx1 cell of file names)
    and ``Data/AllMOS_release.mat`` (``AllMOS_release``, 1xN). MOS is on a 0-100 scale,
    **higher is better**, used as is; ``mos_range = (0, 100)``. Images are looked up in
    ``Images/`` and, failing that, ``Images/trainingImages/``, where the release keeps the
    7 images of the study's training phase (``t1.bmp ... t7.bmp``, the first 7 entries).
    ``training_images="drop"`` (default) leaves those out, as the usual protocol does
    (HyperIQA, DBCNN, pyiqa: 1,162 images); ``"keep"`` keeps all 1,169.
    """
    label = "LIVE Challenge"
    if training_images not in ("drop", "keep"):
        raise DatasetError(
            f"{label}: training_images must be 'drop' or 'keep', got {training_images!r}"
        )
    base = _root(label, root)
    names_path = base / "Data" / "AllImages_release.mat"
    mos_path = base / "Data" / "AllMOS_release.mat"
    names_mat = _loadmat(label, names_path)
    names = _mat_strings(
        label,
        names_path,
        "AllImages_release",
        _mat_var(label, names_path, names_mat, "AllImages_release"),
    )
    mos_mat = _loadmat(label, mos_path)
    mos = _mat_numbers(
        label, mos_path, "AllMOS_release", _mat_var(label, mos_path, mos_mat, "AllMOS_release")
    )
    if mos.size != len(names):
        raise DatasetError(
            f"{label}: AllMOS_release.mat has {mos.size} values but AllImages_release.mat "
            f"has {len(names)} names"
        )
    images = _require_dir(label, base / "Images")
    training = images / "trainingImages"
    samples = []
    for fname, value in zip(names, mos, strict=True):
        if training_images == "drop" and _LIVEC_TRAINING.fullmatch(fname):
            continue
        path = images / fname
        if not path.is_file() and (training / fname).is_file():
            path = training / fname
        samples.append(Sample(path=path, mos=float(value), ref=None, name=_name(base, path)))
    return _finish(
        label,
        names_path.name,
        name="livec",
        root=base,
        samples=samples,
        mos_range=(0.0, 100.0),
        synthetic=False,
        note="MOS 0-100 (higher is better), used as distributed",
    )


# --------------------------------------------------------------------------------------
# SPAQ
# --------------------------------------------------------------------------------------

SPAQ_XLSX = "MOS and Image attribute scores.xlsx"


SPAQ_IMAGE_DIR = "TestImage"


def _safe_subdir(label: str, base: Path, image_dir: str) -> Path:
    rel = Path(image_dir)
    if not image_dir or rel.is_absolute() or ".." in rel.parts:
        raise DatasetError(
            f"{label}: image_dir must be a folder inside the root, got {image_dir!r}"
        )
    return _require_dir(label, base / rel)


def read_spaq(root: str | os.PathLike[str], *, image_dir: str | None = None) -> Dataset:
    """SPAQ (Fang et al. 2020), authentic smartphone photos, 11,125 images.

    Reads the first sheet of ``MOS and Image attribute scores.xlsx`` (at the root or in
    ``Annotations/``, as in the release) by header name: ``Image name`` and ``MOS``. MOS is
    on a 0-100 scale, **higher is better**, used as is; ``mos_range = (0, 100)``. Images
    are in ``TestImage/`` (full resolution, ~4000x3000; resizing is the pipeline's business).

    ``image_dir`` reads the images from another folder under the root instead, e.g. a copy
    resized to a 384 short side (the LoDa authors train from ``TestImage_384/``, PNGs named
    after the originals). Each image is looked up by its name, else by its stem with any
    extension (``00001.jpg`` -> ``00001.png``). Sample names stay ``TestImage/<Image name>``
    so that one split file serves the original and the resized folder.
    """
    import openpyxl

    label = "SPAQ"
    base = _root(label, root)
    candidates = [base / SPAQ_XLSX, base / "Annotations" / SPAQ_XLSX]
    sheet_path = next((p for p in candidates if p.is_file()), None)
    if sheet_path is None:
        raise DatasetError(f"{label}: missing file {candidates[0]} (or {candidates[1]})")
    images = _safe_subdir(label, base, image_dir or SPAQ_IMAGE_DIR)
    by_stem: dict[str, Path] | None = None
    if image_dir is not None:
        by_stem = {}
        for entry in sorted(images.iterdir()):
            if entry.is_file():
                by_stem.setdefault(entry.stem, entry)
    try:
        wb = openpyxl.load_workbook(sheet_path, read_only=True, data_only=True)
    except Exception as exc:  # zipfile.BadZipFile, InvalidFileException, KeyError, ...
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"{label}: {sheet_path.name} is not a readable .xlsx ({msg})") from None
    try:
        if not wb.worksheets:
            raise DatasetError(f"{label}: {sheet_path.name} has no sheets")
        rows = [
            (i, row)
            for i, row in enumerate(wb.worksheets[0].iter_rows(values_only=True), 1)
            if any(v is not None and str(v).strip() for v in row)
        ]
    finally:
        wb.close()
    if not rows:
        raise DatasetError(f"{label}: {sheet_path.name} is empty (no header row)")
    header = rows[0][1]
    samples = []
    records = _records(
        label, sheet_path.name, header, rows[1:], names=["Image name"], score="MOS", unit="row"
    )
    for _, (fname,), mos in records:
        path = images / fname
        if by_stem is not None and not path.is_file():
            path = by_stem.get(Path(fname).stem, path)
        name = f"{SPAQ_IMAGE_DIR}/{fname}"
        samples.append(Sample(path=path, mos=mos, ref=None, name=name))
    return _finish(
        label,
        sheet_path.name,
        name="spaq",
        root=base,
        samples=samples,
        mos_range=(0.0, 100.0),
        synthetic=False,
        note="MOS 0-100 (higher is better), used as distributed",
    )


# --------------------------------------------------------------------------------------
# FLIVE (PaQ-2-PiQ)
# --------------------------------------------------------------------------------------


def read_flive(root: str | os.PathLike[str]) -> Dataset:
    """FLIVE / PaQ-2-PiQ (Ying et al. 2020), authentic, ~40k images.

    Reads ``labels_image.csv`` by column name: ``name`` (a relative path such as
    ``voc_emotic_ava/xxx.jpg``) and ``mos``; other columns (``is_valid``, sizes) are
    ignored and no rows are dropped. MOS is on a 0-100 scale, **higher is better**, used
    as is; ``mos_range = (0, 100)``. The ``name`` paths are relative to ``database/`` when
    the root has that folder, else to the root itself.

    The root may also be a clone of the PaQ-2-PiQ repository (baidut/PaQ-2-PiQ), which
    keeps the labels in ``database/labels_image.csv`` beside the images: when the root has
    no ``labels_image.csv`` but ``database/`` does, that file is read.
    """
    label = "FLIVE"
    base = _root(label, root)
    labels = base / "labels_image.csv"
    if not labels.is_file() and (base / "database" / "labels_image.csv").is_file():
        labels = base / "database" / "labels_image.csv"
    table = _require_file(label, labels)
    images = base / "database" if (base / "database").is_dir() else base
    header, rows = _read_csv(label, table)
    samples = [
        Sample(path=images / fname, mos=mos, ref=None, name=_name(base, images / fname))
        for _, (fname,), mos in _records(
            label, table.name, header, rows, names=["name"], score="mos"
        )
    ]
    return _finish(
        label,
        table.name,
        name="flive",
        root=base,
        samples=samples,
        mos_range=(0.0, 100.0),
        synthetic=False,
        note="MOS 0-100 (higher is better), used as distributed",
    )


# --------------------------------------------------------------------------------------
# generic CSV
# --------------------------------------------------------------------------------------


def _csv_meta(label: str, path: Path) -> tuple[str | None, tuple[float, float] | None]:
    if not path.is_file():
        return None, None
    try:
        meta = json.loads(_read_text(label, path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{label}: {path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{label}: {path} must hold a JSON object")
    name = meta.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise DatasetError(f"{label}: {path}: 'name' must be a non-empty string")
    rng = meta.get("mos_range")
    if rng is None:
        return name, None
    if (
        not isinstance(rng, list)
        or len(rng) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in rng)
        or not all(math.isfinite(v) for v in rng)
        or not rng[0] < rng[1]
    ):
        raise DatasetError(f"{label}: {path}: 'mos_range' must be [lo, hi] with lo < hi")
    return name, (float(rng[0]), float(rng[1]))


def read_csv_dataset(root: str | os.PathLike[str]) -> Dataset:
    """Generic CSV: ``path,mos[,ref]`` with a header row (columns read by name).

    ``root`` is the CSV file itself or a folder holding exactly one ``*.csv``. ``path`` is
    relative to the CSV's folder (absolute paths are allowed); ``mos`` is taken **as given
    and must be higher-is-better**; the dataset is synthetic (split by reference) iff a
    ``ref`` column exists, in which case no ``ref`` may be empty. An optional
    ``dataset.json`` next to the CSV, ``{"name": ..., "mos_range": [lo, hi]}``, sets the
    name (default: the CSV's stem) and ``mos_range`` (default: min and max of the data).
    Sample names are the paths relative to the CSV's folder.
    """
    label = "CSV"
    given = Path(root).expanduser()
    if given.is_dir():
        found = sorted(given.glob("*.csv"))
        if len(found) != 1:
            what = "no *.csv file" if not found else f"{len(found)} *.csv files"
            raise DatasetError(f"{label}: folder {given} holds {what}; give the CSV file itself")
        table = found[0]
    else:
        table = _require_file(label, given)
    base = table.parent
    header, rows = _read_csv(label, table)
    try:
        _column(label, table.name, header, "ref")
        names = ["path", "ref"]
    except DatasetError:
        names = ["path"]
    samples = []
    for _, texts, mos in _records(label, table.name, header, rows, names=names, score="mos"):
        text, ref = texts[0], (texts[1] if len(texts) > 1 else None)
        path = Path(text).expanduser()
        path = path if path.is_absolute() else base / path
        samples.append(Sample(path=path, mos=mos, ref=ref, name=_name(base, path)))
    meta_name, meta_range = _csv_meta(label, base / "dataset.json")
    if meta_range is None and samples:
        values = [s.mos for s in samples]
        meta_range = (min(values), max(values))
    return _finish(
        label,
        table.name,
        name=meta_name or table.stem,
        root=base,
        samples=samples,
        mos_range=meta_range or (0.0, 0.0),
        synthetic=len(names) > 1,
        note="MOS as given in the CSV (must be higher is better)",
    )


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------

READERS: dict[str, Callable[..., Dataset]] = {
    "koniq10k": read_koniq10k,
    "kadid10k": read_kadid10k,
    "live": read_live,
    "tid2013": read_tid2013,
    "livec": read_livec,
    "spaq": read_spaq,
    "flive": read_flive,
    "csv": read_csv_dataset,
}
"""Dataset kind -> reader taking the dataset root (``csv``: the CSV file or its folder)."""


def read_dataset(kind: str, root: str | os.PathLike[str], **options: Any) -> Dataset:
    """Read dataset ``kind`` (a key of :data:`READERS`) from ``root``.

    ``options`` go to the reader: ``image_dir`` for ``koniq10k`` and ``spaq``,
    ``training_images`` for ``livec``, ``dmos`` for ``live``.
    """
    reader = READERS.get(kind)
    if reader is None:
        raise DatasetError(f"unknown dataset kind {kind!r} (known: {', '.join(READERS)})")
    try:
        return reader(root, **options)
    except TypeError as exc:
        if options and "unexpected keyword argument" in str(exc):
            raise DatasetError(
                f"dataset kind {kind!r} takes no option(s) {', '.join(sorted(options))}"
            ) from None
        raise
