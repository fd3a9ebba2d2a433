"""Tests for loda.data.datasets on miniature trees in each benchmark's official layout."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import scipy.io
from PIL import Image

from loda.data.datasets import (
    READERS,
    Dataset,
    DatasetError,
    Sample,
    read_csv_dataset,
    read_dataset,
    read_flive,
    read_kadid10k,
    read_koniq10k,
    read_live,
    read_livec,
    read_spaq,
    read_tid2013,
    to_higher_is_better,
)
from loda.errors import LodaError

# --------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------


def img(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def cell(strings, column: bool = False) -> np.ndarray:
    """A MATLAB cell array of strings (1xN, or Nx1 with column=True)."""
    arr = np.empty((len(strings), 1) if column else (1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        arr.flat[i] = s
    return arr


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


KONIQ_ROWS = [("10004473376.jpg", 3.9), ("10007357496.jpg", 3.4), ("100117038.jpg", 1.6)]


def make_koniq(root: Path, folders=("1024x768",)) -> Path:
    header = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"]
    rows = [[name, 0, 1, 2, 3, 4, 10, mos, 0.5, (mos - 1) * 25] for name, mos in KONIQ_ROWS]
    write_csv(root / "koniq10k_scores_and_distributions.csv", header, rows)
    for folder in folders:
        for i, (name, _) in enumerate(KONIQ_ROWS):
            img(root / folder / name, i)
    return root


KADID_ROWS = [
    ("I01_01_01.png", "I01.png", 4.57, 0.29),
    ("I01_01_02.png", "I01.png", 4.33, 0.87),
    ("I02_01_01.png", "I02.png", 3.0, 0.1),
    ("I03_02_05.png", "I03.png", 1.2, 0.2),
]


def make_kadid(root: Path) -> Path:
    # columns deliberately not in the usual order: readers must go by name
    write_csv(
        root / "dmos.csv",
        ["dist_img", "dmos", "ref_img", "var"],
        [(d, m, r, v) for d, r, m, v in KADID_ROWS],
    )
    for i, (d, r, *_) in enumerate(KADID_ROWS):
        img(root / "images" / d, i)
        img(root / "images" / r, 100 + i)
    return root


# LIVE miniature: folders hold 2, 2, 1, 1, 1 images -> 7 entries; entry 2 (jp2k/img2) and
# entry 6 (gblur/img1) are references (orgs == 1).
LIVE_COUNTS = {"jp2k": 2, "jpeg": 2, "wn": 1, "gblur": 1, "fastfading": 1}
LIVE_DMOS = [20.0, 0.0, 35.5, 60.0, 101.2, 0.0, 42.0]
LIVE_ORGS = [0, 1, 0, 0, 0, 1, 0]
LIVE_REFS = ["bikes.bmp", "bikes.bmp", "parrots.bmp", "bikes.bmp", "house.bmp", "house.bmp",
             "parrots.bmp"]  # fmt: skip


def make_live(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        root / "dmos.mat",
        {"dmos": np.array([LIVE_DMOS]), "orgs": np.array([LIVE_ORGS], dtype=np.uint8)},
    )
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": cell(LIVE_REFS)})
    seed = 0
    for folder, n in LIVE_COUNTS.items():
        for i in range(1, n + 1):
            img(root / folder / f"img{i}.bmp", seed)
            seed += 1
        (root / folder / "info.txt").write_text("not an image")
    return root


TID_LINES = [
    ("5.51429", "i01_01_1.bmp"),
    ("5.56757", "i01_01_2.bmp"),
    ("4.94444", "I02_05_3.BMP"),
    ("3.0", "i25_24_5.bmp"),
]


def make_tid(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{m} {n}\r\n" for m, n in TID_LINES) + "\n"
    (root / "mos_with_names.txt").write_text(text)
    on_disk = ["i01_01_1.bmp", "i01_01_2.BMP", "i02_05_3.bmp", "I25_24_5.BMP"]
    for i, name in enumerate(on_disk):
        img(root / "distorted_images" / name, i)
    img(root / "reference_images" / "I01.BMP", 50)
    return root


LIVEC_NAMES = ["t1.bmp", "t2.bmp", "10.JPG", "100.bmp", "1000.JPG"]
LIVEC_MOS = [63.9, 25.3, 52.0, 40.1, 77.7]


def make_livec(root: Path) -> Path:
    (root / "Data").mkdir(parents=True)
    scipy.io.savemat(
        root / "Data" / "AllImages_release.mat",
        {"AllImages_release": cell(LIVEC_NAMES, column=True)},
    )
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": [LIVEC_MOS]})
    for i, name in enumerate(LIVEC_NAMES):
        sub = "Images/trainingImages" if name.startswith("t") else "Images"
        img(root / sub / name, i)
    return root


SPAQ_ROWS = [("00001.jpg", 42.5), ("00002.jpg", 77.0), ("00010.jpg", 10.25)]


def make_spaq(root: Path, annotations: bool = True, header=("Image name", "MOS")) -> Path:
    folder = root / "Annotations" if annotations else root
    folder.mkdir(parents=True, exist_ok=True)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append([header[0], header[1], "Brightness", "Colorfulness"])
    for name, mos in SPAQ_ROWS:
        ws.append([name, mos, 50, 60])
    wb.create_sheet("other").append(["ignored"])
    wb.save(folder / "MOS and Image attribute scores.xlsx")
    for i, (name, _) in enumerate(SPAQ_ROWS):
        img(root / "TestImage" / name, i)
    return root


FLIVE_ROWS = [
    ("voc_emotic_ava/a.jpg", 71.2),
    ("voc_emotic_ava/b.jpg", 55.0),
    ("blur_dataset/c.jpg", 30.4),
]


def make_flive(root: Path, database: bool = True) -> Path:
    write_csv(
        root / "labels_image.csv",
        ["name", "mos", "height", "width", "is_valid"],
        [(n, m, 8, 8, True) for n, m in FLIVE_ROWS],
    )
    base = root / "database" if database else root
    for i, (name, _) in enumerate(FLIVE_ROWS):
        img(base / name, i)
    return root


# --------------------------------------------------------------------------------------
# records, registry, direction
# --------------------------------------------------------------------------------------


def test_to_higher_is_better():
    assert to_higher_is_better(20, 0, 100) == 80.0
    assert isinstance(to_higher_is_better(20, 0, 100), float)
    out = to_higher_is_better([1.0, 5.0, 2.5], 1, 5)
    np.testing.assert_allclose(out, [5.0, 1.0, 3.5])
    np.testing.assert_allclose(to_higher_is_better(out, 1, 5), [1.0, 5.0, 2.5])


def test_registry_and_unknown_kind(tmp_path):
    assert set(READERS) == {"koniq10k", "kadid10k", "live", "tid2013", "livec", "spaq",
                            "flive", "csv"}  # fmt: skip
    with pytest.raises(DatasetError, match=r"unknown dataset kind 'nope' \(known: koniq10k"):
        read_dataset("nope", tmp_path)
    assert issubclass(DatasetError, LodaError)


def test_read_dataset_dispatch_and_options(tmp_path):
    make_koniq(tmp_path, folders=("1024x768", "512x384"))
    ds = read_dataset("koniq10k", tmp_path, image_dir="512x384")
    assert ds.samples[0].name == "512x384/10004473376.jpg"
    with pytest.raises(DatasetError, match=r"takes no option"):
        read_dataset("kadid10k", tmp_path, image_dir="x")


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist"):
        read_koniq10k(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------
# KonIQ-10k
# --------------------------------------------------------------------------------------


def test_koniq(tmp_path):
    ds = read_koniq10k(make_koniq(tmp_path, folders=("512x384", "1024x768")))
    assert isinstance(ds, Dataset) and len(ds) == 3
    assert ds.name == "koniq10k" and not ds.synthetic and ds.mos_range == (1.0, 5.0)
    np.testing.assert_allclose(ds.mos, [3.9, 3.4, 1.6])  # MOS, not MOS_zscore
    assert [s.name for s in ds.samples] == [f"1024x768/{n}" for n, _ in KONIQ_ROWS]
    assert ds.refs == () and all(s.ref is None for s in ds.samples)
    assert all(s.path.is_file() for s in ds.samples)
    assert "higher is better" in ds.higher_is_better_note


def test_koniq_falls_back_to_512(tmp_path):
    ds = read_koniq10k(make_koniq(tmp_path, folders=("512x384",)))
    assert ds.samples[0].name.startswith("512x384/")


def test_koniq_errors(tmp_path):
    root = make_koniq(tmp_path)
    table = root / "koniq10k_scores_and_distributions.csv"
    (root / "1024x768" / KONIQ_ROWS[1][0]).unlink()
    with pytest.raises(DatasetError, match=r"1 of 3 images .* missing \(first: .*10007357496"):
        read_koniq10k(root)
    write_csv(table, ["image_name", "MOS_zscore"], [("a.jpg", 50)])
    with pytest.raises(DatasetError) as exc:
        read_koniq10k(root)
    msg = str(exc.value)
    assert msg.startswith(
        "KonIQ-10k: koniq10k_scores_and_distributions.csv has no column 'MOS' (columns: "
    )
    assert "\n" not in msg
    write_csv(table, ["image_name", "MOS"], [(KONIQ_ROWS[0][0], "n/a")])
    with pytest.raises(DatasetError, match=r"line 2: MOS 'n/a' is not a number"):
        read_koniq10k(root)
    table.unlink()
    with pytest.raises(DatasetError, match=r"missing file .*koniq10k_scores_and_distributions"):
        read_koniq10k(root)


def test_koniq_missing_image_folder(tmp_path):
    make_koniq(tmp_path, folders=())
    with pytest.raises(DatasetError, match=r"missing image folder .*1024x768"):
        read_koniq10k(tmp_path)


# --------------------------------------------------------------------------------------
# KADID-10k
# --------------------------------------------------------------------------------------


def test_kadid(tmp_path):
    ds = read_kadid10k(make_kadid(tmp_path))
    assert len(ds) == 4 and ds.synthetic and ds.mos_range == (1.0, 5.0)
    np.testing.assert_allclose(ds.mos, [4.57, 4.33, 3.0, 1.2])  # "dmos" is a MOS: unchanged
    assert [s.ref for s in ds.samples] == ["I01.png", "I01.png", "I02.png", "I03.png"]
    assert ds.refs == ("I01.png", "I02.png", "I03.png")
    assert ds.samples[0].name == "images/I01_01_01.png"


def test_kadid_errors(tmp_path):
    root = make_kadid(tmp_path)
    (root / "images" / "I03_02_05.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 4 images listed in dmos.csv .*I03_02_05"):
        read_kadid10k(root)
    write_csv(root / "dmos.csv", ["dist_img", "ref", "dmos", "var"], [])
    with pytest.raises(DatasetError, match=r"dmos.csv has no column 'ref_img'"):
        read_kadid10k(root)
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], [])
    with pytest.raises(DatasetError, match=r"dmos.csv lists no images"):
        read_kadid10k(root)
    (root / "dmos.csv").unlink()
    with pytest.raises(DatasetError, match=r"KADID-10k: missing file .*dmos\.csv"):
        read_kadid10k(root)


# --------------------------------------------------------------------------------------
# LIVE
# --------------------------------------------------------------------------------------


def test_live(tmp_path):
    ds = read_live(make_live(tmp_path))
    # references (orgs == 1) excluded: 7 - 2 = 5
    assert [s.name for s in ds.samples] == [
        "jp2k/img1.bmp", "jpeg/img1.bmp", "jpeg/img2.bmp", "wn/img1.bmp", "fastfading/img1.bmp",
    ]  # fmt: skip
    # DMOS (lower is better) -> higher is better: 20 -> 80
    np.testing.assert_allclose(ds.mos, [80.0, 64.5, 40.0, -1.2, 58.0])
    assert [s.ref for s in ds.samples] == [
        "bikes.bmp",
        "parrots.bmp",
        "bikes.bmp",
        "house.bmp",
        "parrots.bmp",
    ]
    assert ds.refs == ("bikes.bmp", "house.bmp", "parrots.bmp")
    assert ds.synthetic and ds.mos_range == (0.0, 100.0) and ds.name == "live"
    assert "to_higher_is_better" in ds.higher_is_better_note


def test_live_column_vectors_and_nested_cells(tmp_path):
    root = make_live(tmp_path)
    scipy.io.savemat(
        root / "dmos.mat",
        {"dmos": np.array(LIVE_DMOS)[:, None], "orgs": np.array(LIVE_ORGS)[:, None]},
    )
    nested = cell([cell([r]) for r in LIVE_REFS], column=True)
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": nested})
    ds = read_live(root)
    assert len(ds) == 5 and ds.samples[1].ref == "parrots.bmp"
    assert ds.samples[0].mos == pytest.approx(80.0)


def test_live_errors(tmp_path):
    root = make_live(tmp_path)
    (root / "jpeg" / "img1.bmp").unlink()  # a gap: img2 present, img1 missing
    with pytest.raises(DatasetError, match=r"LIVE: 1 of 7 images .* \(first: .*jpeg.img1\.bmp"):
        read_live(root)
    (root / "jpeg" / "img2.bmp").unlink()  # folder now lists 0 images: count mismatch
    with pytest.raises(DatasetError, match=r"dmos.mat has 7 entries but the folders hold 5"):
        read_live(root)
    img(root / "jpeg" / "img1.bmp")
    img(root / "jpeg" / "img2.bmp")
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": cell(LIVE_REFS[:-1])})
    with pytest.raises(DatasetError, match=r"refnames_all.mat has 6 names but dmos.mat has 7"):
        read_live(root)
    scipy.io.savemat(root / "dmos.mat", {"dmos": np.array([LIVE_DMOS])})
    with pytest.raises(DatasetError, match=r"dmos.mat has no variable 'orgs' \(variables: dmos"):
        read_live(root)
    (root / "dmos.mat").write_text("not a mat file")
    with pytest.raises(DatasetError, match=r"LIVE: dmos.mat is not a readable MAT file"):
        read_live(root)
    (root / "dmos.mat").unlink()
    with pytest.raises(DatasetError, match=r"LIVE: missing file .*dmos\.mat"):
        read_live(root)


def test_live_missing_folder(tmp_path):
    root = make_live(tmp_path)
    for f in (root / "wn").iterdir():
        f.unlink()
    (root / "wn").rmdir()
    with pytest.raises(DatasetError, match=r"LIVE: missing folder .*wn"):
        read_live(root)


# --------------------------------------------------------------------------------------
# TID2013
# --------------------------------------------------------------------------------------


def test_tid2013(tmp_path):
    ds = read_tid2013(make_tid(tmp_path))
    assert len(ds) == 4 and ds.synthetic and ds.mos_range == (0.0, 9.0)
    np.testing.assert_allclose(ds.mos, [5.51429, 5.56757, 4.94444, 3.0])
    assert [s.ref for s in ds.samples] == ["i01", "i01", "i02", "i25"]
    # names use the case found on disk
    assert [s.name for s in ds.samples] == [
        "distorted_images/i01_01_1.bmp", "distorted_images/i01_01_2.BMP",
        "distorted_images/i02_05_3.bmp", "distorted_images/I25_24_5.BMP",
    ]  # fmt: skip
    assert all(s.path.is_file() for s in ds.samples)


def test_tid2013_errors(tmp_path):
    root = make_tid(tmp_path)
    (root / "distorted_images" / "i02_05_3.bmp").unlink()
    with pytest.raises(DatasetError, match=r"TID2013: 1 of 4 images .* \(first: .*I02_05_3"):
        read_tid2013(root)
    (root / "mos_with_names.txt").write_text("5.1 i01_01_1.bmp extra\n")
    with pytest.raises(DatasetError, match=r"line 1: expected '<MOS> <file name>'"):
        read_tid2013(root)
    (root / "mos_with_names.txt").write_text("high i01_01_1.bmp\n")
    with pytest.raises(DatasetError, match=r"line 1: MOS 'high' is not a number"):
        read_tid2013(root)
    (root / "mos_with_names.txt").unlink()
    with pytest.raises(DatasetError, match=r"TID2013: missing file .*mos_with_names\.txt"):
        read_tid2013(root)


# --------------------------------------------------------------------------------------
# LIVE Challenge
# --------------------------------------------------------------------------------------


def test_livec(tmp_path):
    root = make_livec(tmp_path)
    ds = read_livec(root)
    assert len(ds) == 3  # the study's training images t1..t7 (here 2) are left out
    np.testing.assert_allclose(ds.mos, LIVEC_MOS[2:])
    assert ds.samples[0].name == "Images/10.JPG"
    assert not ds.synthetic and ds.refs == () and ds.mos_range == (0.0, 100.0)
    ds = read_livec(root, training_images="keep")
    assert len(ds) == 5
    np.testing.assert_allclose(ds.mos, LIVEC_MOS)
    assert ds.samples[0].name == "Images/trainingImages/t1.bmp"
    with pytest.raises(DatasetError, match="training_images must be 'drop' or 'keep'"):
        read_livec(root, training_images="all")


def test_data_spec_passes_reader_options(tmp_path):
    from loda.train.cli import parse_data_spec

    root = make_livec(tmp_path / "livec")
    assert len(parse_data_spec(f"livec:{root}")[1]) == 3
    kind, ds = parse_data_spec(f"livec:{root}?training_images=keep")
    assert kind == "livec" and len(ds) == 5
    make_koniq(tmp_path / "koniq", folders=("1024x768", "512x384"))
    _, ds = parse_data_spec(f"koniq10k:{tmp_path / 'koniq'}?image_dir=512x384")
    assert ds.samples[0].name == "512x384/10004473376.jpg"
    with pytest.raises(DatasetError, match="takes no option"):
        parse_data_spec(f"livec:{root}?image_dir=512x384")


def test_livec_row_vector_names(tmp_path):
    root = make_livec(tmp_path)
    scipy.io.savemat(
        root / "Data" / "AllImages_release.mat", {"AllImages_release": cell(LIVEC_NAMES)}
    )
    assert len(read_livec(root, training_images="keep")) == 5


def test_livec_errors(tmp_path):
    root = make_livec(tmp_path)
    (root / "Images" / "100.bmp").unlink()
    with pytest.raises(DatasetError, match=r"LIVE Challenge: 1 of 3 images .*100\.bmp"):
        read_livec(root)
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": [LIVEC_MOS[:3]]})
    with pytest.raises(DatasetError, match=r"AllMOS_release.mat has 3 values but .* has 5 names"):
        read_livec(root)
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"MOS": [LIVEC_MOS]})
    with pytest.raises(DatasetError, match=r"AllMOS_release.mat has no variable 'AllMOS_release'"):
        read_livec(root)
    scipy.io.savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": np.arange(5.0)})
    with pytest.raises(DatasetError, match=r"AllImages_release is not a cell array"):
        read_livec(root)
    (root / "Data" / "AllImages_release.mat").unlink()
    with pytest.raises(DatasetError, match=r"missing file .*AllImages_release\.mat"):
        read_livec(root)


# --------------------------------------------------------------------------------------
# SPAQ
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("annotations", [True, False])
def test_spaq(tmp_path, annotations):
    ds = read_spaq(make_spaq(tmp_path, annotations=annotations))
    assert len(ds) == 3 and not ds.synthetic and ds.mos_range == (0.0, 100.0)
    np.testing.assert_allclose(ds.mos, [42.5, 77.0, 10.25])
    assert [s.name for s in ds.samples] == [f"TestImage/{n}" for n, _ in SPAQ_ROWS]


def test_spaq_errors(tmp_path):
    root = make_spaq(tmp_path / "a", header=("Image", "MOS"))
    with pytest.raises(DatasetError, match=r"xlsx has no column 'Image name' \(columns: 'Image'"):
        read_spaq(root)
    root = make_spaq(tmp_path / "b")
    (root / "TestImage" / "00010.jpg").unlink()
    with pytest.raises(DatasetError, match=r"SPAQ: 1 of 3 images .*00010\.jpg"):
        read_spaq(root)
    sheet = root / "Annotations" / "MOS and Image attribute scores.xlsx"
    sheet.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"is not a readable .xlsx"):
        read_spaq(root)
    sheet.unlink()
    with pytest.raises(DatasetError, match=r"SPAQ: missing file .*MOS and Image attribute"):
        read_spaq(root)


# --------------------------------------------------------------------------------------
# FLIVE
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", [True, False])
def test_flive(tmp_path, database):
    ds = read_flive(make_flive(tmp_path, database=database))
    assert len(ds) == 3 and not ds.synthetic and ds.mos_range == (0.0, 100.0)
    np.testing.assert_allclose(ds.mos, [71.2, 55.0, 30.4])
    prefix = "database/" if database else ""
    assert [s.name for s in ds.samples] == [prefix + n for n, _ in FLIVE_ROWS]


def test_flive_errors(tmp_path):
    root = make_flive(tmp_path)
    (root / "database" / "blur_dataset" / "c.jpg").unlink()
    with pytest.raises(DatasetError, match=r"FLIVE: 1 of 3 images .*c\.jpg"):
        read_flive(root)
    write_csv(root / "labels_image.csv", ["name", "score"], [("voc_emotic_ava/a.jpg", 1)])
    with pytest.raises(DatasetError, match=r"labels_image.csv has no column 'mos'"):
        read_flive(root)
    write_csv(root / "labels_image.csv", ["name", "mos"], [("voc_emotic_ava/a.jpg",)])
    with pytest.raises(DatasetError, match=r"line 2: row has 1 fields, no 'mos' value"):
        read_flive(root)
    (root / "labels_image.csv").unlink()
    with pytest.raises(DatasetError, match=r"FLIVE: missing file"):
        read_flive(root)


# --------------------------------------------------------------------------------------
# generic CSV and to_csv
# --------------------------------------------------------------------------------------


def test_csv_generic(tmp_path):
    img(tmp_path / "imgs" / "a.png")
    img(tmp_path / "imgs" / "b.png")
    outside = img(tmp_path.parent / f"{tmp_path.name}_outside.png")
    table = write_csv(
        tmp_path / "mine.csv",
        ["mos", "path"],
        [(2.5, "imgs/a.png"), (7.0, "imgs/b.png"), (4.0, str(outside))],
    )
    ds = read_csv_dataset(table)
    assert ds.name == "mine" and not ds.synthetic and len(ds) == 3
    assert ds.mos_range == (2.5, 7.0)
    assert [s.name for s in ds.samples][:2] == ["imgs/a.png", "imgs/b.png"]
    assert ds.samples[2].path == outside
    # a folder holding exactly one CSV works too; dataset.json sets name and range
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x", "mos_range": [0, 10]}))
    ds = read_dataset("csv", tmp_path)
    assert ds.name == "x" and ds.mos_range == (0.0, 10.0)


def test_csv_generic_synthetic_and_errors(tmp_path):
    img(tmp_path / "a.png")
    table = write_csv(tmp_path / "d.csv", ["path", "mos", "ref"], [("a.png", 1, "r1")])
    ds = read_csv_dataset(table)
    assert ds.synthetic and ds.refs == ("r1",)
    write_csv(table, ["path", "mos", "ref"], [("a.png", 1, "")])
    with pytest.raises(DatasetError, match=r"empty 'ref'"):
        read_csv_dataset(table)
    write_csv(table, ["file", "mos"], [("a.png", 1)])
    with pytest.raises(DatasetError, match=r"d.csv has no column 'path'"):
        read_csv_dataset(table)
    write_csv(table, ["path", "mos"], [("a.png", 1), ("a.png", 2)])
    with pytest.raises(DatasetError, match=r"lists image 'a.png' more than once"):
        read_csv_dataset(table)
    write_csv(table, ["path", "mos"], [("a.png", 1), ("b.png", 2)])
    with pytest.raises(DatasetError, match=r"1 of 2 images .*b\.png"):
        read_csv_dataset(table)
    (tmp_path / "dataset.json").write_text('{"mos_range": [5, 1]}')
    write_csv(table, ["path", "mos"], [("a.png", 1)])
    with pytest.raises(DatasetError, match=r"'mos_range' must be"):
        read_csv_dataset(table)
    write_csv(tmp_path / "e.csv", ["path", "mos"], [])
    with pytest.raises(DatasetError, match=r"2 \*\.csv files"):
        read_csv_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"CSV: missing file"):
        read_csv_dataset(tmp_path / "none.csv")


@pytest.mark.parametrize("maker", [make_live, make_koniq])
def test_to_csv_round_trip(tmp_path, maker):
    src = maker(tmp_path / "src")
    ds = read_live(src) if maker is make_live else read_koniq10k(src)
    out = ds.to_csv(tmp_path / "src" / "generic.csv")
    back = read_csv_dataset(out)
    assert back.name == ds.name and back.mos_range == ds.mos_range
    assert back.synthetic == ds.synthetic
    assert [(s.name, s.mos, s.ref) for s in back.samples] == [
        (s.name, s.mos, s.ref) for s in ds.samples
    ]
    # written elsewhere: absolute paths, same samples
    other = ds.to_csv(tmp_path / "elsewhere" / "g.csv", write_meta=False)
    back = read_csv_dataset(other)
    assert [s.path.resolve() for s in back.samples] == [s.path.resolve() for s in ds.samples]
    assert back.name == "g"


def test_records_are_frozen(tmp_path):
    ds = read_kadid10k(make_kadid(tmp_path))
    with pytest.raises(AttributeError):
        ds.samples[0].mos = 1.0  # type: ignore[misc]
    assert isinstance(ds.samples[0], Sample) and ds.mos.dtype == np.float64


def test_no_torch_import():
    code = (
        "import sys, loda.data.datasets, loda.data.splits; "
        "bad = [m for m in ('torch', 'timm') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("maker", "reader"),
    [(make_kadid, read_kadid10k), (make_live, read_live), (make_tid, read_tid2013)],
)
def test_splits_of_synthetic_benchmarks_keep_references_apart(tmp_path, maker, reader):
    """The official layouts, split and reloaded: no reference on both sides of any split."""
    from loda.data.splits import Splits, make_splits

    ds = reader(maker(tmp_path / "d"))
    splits = make_splits(ds, k=4, seed=1, train_fraction=0.5)
    assert splits.by == "ref"
    back = Splits.load(splits.save(tmp_path / "splits.json"))
    assert back == splits
    for i in range(len(back)):
        train, test = back.select(ds, i)
        assert train and test and not {s.ref for s in train} & {s.ref for s in test}
        assert {s.name for s in train} | {s.name for s in test} == set(ds.names)


# --------------------------------------------------------------------------------------
# label and folder options: LIVE realigned DMOS, SPAQ resized folder, FLIVE repository root
# --------------------------------------------------------------------------------------

# the release's dmos_realigned.mat: dmos_new, dmos_std and orgs, 1xN each
LIVE_DMOS_NEW = [25.0, 0.0, 30.5, 66.0, 98.0, 0.0, 47.5]


def add_live_realigned(root: Path) -> Path:
    scipy.io.savemat(
        root / "dmos_realigned.mat",
        {
            "dmos_new": np.array([LIVE_DMOS_NEW]),
            "dmos_std": np.full((1, len(LIVE_DMOS_NEW)), 7.5),
            "orgs": np.array([LIVE_ORGS], dtype=np.uint8),
        },
    )
    return root


def test_live_realigned_dmos(tmp_path):
    from loda.train.cli import parse_data_spec

    root = add_live_realigned(make_live(tmp_path))
    original = read_live(root)
    realigned = read_live(root, dmos="realigned")
    assert original.names == realigned.names  # the same images, other labels
    np.testing.assert_allclose(original.mos, [80.0, 64.5, 40.0, -1.2, 58.0])  # default: dmos.mat
    np.testing.assert_allclose(realigned.mos, [75.0, 69.5, 34.0, 2.0, 52.5])  # 100 - dmos_new
    assert "dmos_realigned.mat dmos_new" in realigned.higher_is_better_note
    _, via_spec = parse_data_spec(f"live:{root}?dmos=realigned")
    np.testing.assert_allclose(via_spec.mos, realigned.mos)
    with pytest.raises(DatasetError, match=r"LIVE: dmos must be one of original, realigned"):
        read_live(root, dmos="new")
    (root / "dmos_realigned.mat").unlink()
    with pytest.raises(DatasetError, match=r"LIVE: missing file .*dmos_realigned\.mat"):
        read_live(root, dmos="realigned")
    scipy.io.savemat(root / "dmos_realigned.mat", {"dmos_new": np.array([LIVE_DMOS_NEW[:-1]])})
    with pytest.raises(DatasetError, match=r"dmos_realigned.mat has no variable 'orgs'"):
        read_live(root, dmos="realigned")


def test_spaq_resized_image_dir(tmp_path):
    from loda.train.cli import parse_data_spec

    root = make_spaq(tmp_path)
    full = read_spaq(root)
    resized = root / "TestImage_384"
    for i, (name, _) in enumerate(SPAQ_ROWS):  # the authors' copy: PNGs named after the JPEGs
        img(resized / (Path(name).stem + ".png"), i)
    ds = read_spaq(root, image_dir="TestImage_384")
    assert [s.path for s in ds.samples] == [resized / f"{n[:-4]}.png" for n, _ in SPAQ_ROWS]
    assert ds.names == full.names == tuple(f"TestImage/{n}" for n, _ in SPAQ_ROWS)
    np.testing.assert_allclose(ds.mos, full.mos)
    _, via_spec = parse_data_spec(f"spaq:{root}?image_dir=TestImage_384")
    assert [s.path for s in via_spec.samples] == [s.path for s in ds.samples]
    img(resized / "00002.jpg", 9)  # an exact name match wins over a stem match
    assert read_spaq(root, image_dir="TestImage_384").samples[1].path == resized / "00002.jpg"
    (resized / "00010.png").unlink()
    with pytest.raises(DatasetError, match=r"SPAQ: 1 of 3 images .*TestImage_384.00010\.jpg"):
        read_spaq(root, image_dir="TestImage_384")
    with pytest.raises(DatasetError, match=r"SPAQ: missing folder .*TestImage_512"):
        read_spaq(root, image_dir="TestImage_512")
    for bad in ("../elsewhere", str(tmp_path)):
        with pytest.raises(DatasetError, match="image_dir must be a folder inside the root"):
            read_spaq(root, image_dir=bad)


def test_flive_paq2piq_repository_root(tmp_path):
    # baidut/PaQ-2-PiQ keeps labels_image.csv inside database/, beside the image folders
    root = make_flive(tmp_path / "repo")
    (root / "labels_image.csv").rename(root / "database" / "labels_image.csv")
    ds = read_flive(root)
    assert [s.name for s in ds.samples] == ["database/" + n for n, _ in FLIVE_ROWS]
    assert all(s.path.is_file() for s in ds.samples)
    np.testing.assert_allclose(ds.mos, [71.2, 55.0, 30.4])
    # the database folder itself works as the root too (labels and images side by side)
    inner = read_flive(root / "database")
    assert [s.path for s in inner.samples] == [s.path for s in ds.samples]
