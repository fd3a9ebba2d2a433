"""loda-parity (loda.parity, loda.parity_cli): artifacts judged against the PyTorch reference.

All runs use the loda_micro checkpoint and FP32 ONNX of ``micro_export`` on a few images of the
tiny demo set with 2-3 grid crops each (the CPU budget of the suite); one subprocess run checks
the installed entry point's exit code on a damaged artifact, the other CLI checks call ``main``
in-process.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from loda.data.datasets import DatasetError, read_dataset
from loda.data.splits import make_splits
from loda.parity import (
    TOLERANCES,
    BackendRun,
    ParityRow,
    compare,
    reference_row,
    select_samples,
    spread_indices,
    tolerance_for,
)
from loda.parity import run_parity as _run_parity
from loda.parity_cli import main

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
N_IMAGES, N_CROPS = 5, 3


@pytest.fixture(scope="module")
def dataset(micro):
    return read_dataset("csv", micro.demo_dir / "demo.csv")


def _with_record(model: onnx.ModelProto, path: Path, edit) -> Path:
    """A copy of ``model`` whose LoDa metadata record went through ``edit(dict)``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for prop in out.metadata_props:
        if prop.key == "loda":
            record = json.loads(prop.value)
            edit(record)
            prop.value = json.dumps(record, sort_keys=True)
    onnx.save(out, str(path))
    return path


def _damaged(model: onnx.ModelProto, path: Path) -> Path:
    """A copy with the largest MatMul weight perturbed by seeded noise of std 0.05.

    (A constant +0.05 is mostly cancelled by the LayerNorms that follow each MatMul.)
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    weights = [
        inits[n.input[1]] for n in out.graph.node if n.op_type == "MatMul" and n.input[1] in inits
    ]
    tensor = max(weights, key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(tensor)
    noise = np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype) * 0.05
    tensor.CopyFrom(numpy_helper.from_array(w + noise, tensor.name))
    onnx.save(out, str(path))
    return path


@pytest.fixture(scope="module")
def artifacts(micro, tmp_path_factory) -> dict[str, Path]:
    from loda.calib.fp16 import convert_onnx_fp16

    d = tmp_path_factory.mktemp("parity")
    model = onnx.load(str(micro.onnx_path))
    fp16, _ = convert_onnx_fp16(model)  # no images: the parity run is the check
    onnx.save(fp16, str(d / "micro.fp16.onnx"))
    (d / "corrupt.onnx").write_bytes(b"not an ONNX file")
    (d / "micro.engine").write_bytes(b"not a plan either")

    def other_model(r):
        r["model"]["latent_dim"] = 64

    def other_preprocess(r):
        r["preprocess"]["mean"] = [0.5, 0.5, 0.5]

    return {
        "fp32": micro.onnx_path,
        "fp16": d / "micro.fp16.onnx",
        "damaged": _damaged(model, d / "damaged.onnx"),
        "corrupt": d / "corrupt.onnx",
        "missing": d / "missing.onnx",
        "other_model": _with_record(model, d / "other_model.onnx", other_model),
        "other_preprocess": _with_record(model, d / "other_pre.onnx", other_preprocess),
        "engine": d / "micro.engine",
    }


@pytest.fixture(scope="module")
def report(micro, dataset, artifacts):
    samples, what = select_samples(dataset, limit=N_IMAGES)
    return _run_parity(
        micro.checkpoint,
        samples,
        list(artifacts.values()),
        device="cpu",
        num_crops=N_CROPS,
        data=f"demo ({what})",
    )


def _row(report, path: Path) -> ParityRow:
    return next(r for r in report.rows if r.artifact == str(path))


# --------------------------------------------------------------------------------------------
# One run with every kind of artifact
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reference_row_comes_first(report, micro):
    ref = report.rows[0]
    assert (ref.artifact, ref.backend, ref.precision, ref.status) == (
        str(micro.checkpoint),
        "torch",
        "fp32",
        "REF",
    )
    assert ref.image_scores.shape == (N_IMAGES,) and ref.crop_scores.shape == (N_IMAGES, N_CROPS)
    assert -1 <= ref.srcc <= 1 and ref.images_per_s > 0 and ref.size_mb > 0
    assert ref.dsrcc is None and ref.max_abs_dscore is None


@pytest.mark.slow
def test_fp32_onnx_passes(report, artifacts):
    row = _row(report, artifacts["fp32"])
    assert (row.backend, row.precision, row.status) == ("onnxruntime", "fp32", "PASS"), row.reason
    assert row.max_abs_dscore <= 1e-4 and abs(row.dsrcc) < 5e-4
    assert row.mean_abs_dscore <= row.p99_abs_dscore <= row.max_abs_dscore
    assert row.max_abs_dscore <= row.max_abs_dscore_crop  # a mean differs less than its crops
    assert row.needed == {"max_abs_dscore": row.max_abs_dscore, "abs_dsrcc": abs(row.dsrcc)}
    assert row.images_per_s > 0 and row.size_mb > 0


@pytest.mark.slow
def test_fp16_onnx_passes_its_tolerance(report, artifacts):
    row = _row(report, artifacts["fp16"])
    assert (row.precision, row.status) == ("fp16", "PASS"), row.reason
    assert 0 < row.max_abs_dscore < 5e-3
    assert list(row.needed) == ["abs_dsrcc"]  # fp16 is judged on dSRCC only


@pytest.mark.slow
def test_damaged_weight_fails(report, artifacts):
    row = _row(report, artifacts["damaged"])
    assert row.status == "FAIL" and row.precision == "fp32"
    assert row.max_abs_dscore > 1e-3
    assert row.reason.startswith("fp32: max|d|")
    assert row.needed["max_abs_dscore"] == row.max_abs_dscore
    assert not report.passed


@pytest.mark.slow
def test_missing_corrupt_and_foreign_artifacts_fail_with_reasons(report, artifacts):
    for key, reason in (
        ("missing", "no ONNX model at"),
        ("corrupt", "damaged or not an ONNX model"),
        ("other_model", "artifact was exported from another model (latent_dim 64 != 32"),
        ("other_preprocess", "artifact's preprocessing differs from the checkpoint's (mean"),
    ):
        row = _row(report, artifacts[key])
        assert row.status == "FAIL", key
        assert reason in row.reason, (key, row.reason)
        assert row.image_scores is None and row.srcc is None


@pytest.mark.slow
@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: a fake plan is a FAIL there")
def test_engine_without_tensorrt_is_skipped(report, artifacts):
    row = _row(report, artifacts["engine"])
    assert (row.backend, row.status) == ("tensorrt", "SKIP")
    assert "TensorRT" in row.reason or "tensorrt" in row.reason
    assert row.size_mb is not None


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_table_and_markdown(report, artifacts):
    table = report.format("table")
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("artifact "))
    body = lines[header + 1 : header + 1 + len(report.rows)]
    assert [line.split()[0] for line in body] == [r.artifact for r in report.rows]
    assert "status" in lines[header] and "img/s" in lines[header] and "needs" in lines[header]
    assert lines[header].index("status") == body[0].index("REF")  # columns are aligned
    assert "tolerances (per precision; |d| on per-image scores)" in table
    assert any(line.split()[:3] == ["fp32", "<=", "0.0001"] for line in lines)
    assert table.isascii()  # no emojis

    md = report.format("markdown").splitlines()
    rows = [line for line in md if line.startswith("| ")]
    assert len(rows) == 1 + len(report.rows) + 1 + len(TOLERANCES)
    widths = {line.replace("\\|", "").count("|") for line in rows[: 1 + len(report.rows)]}
    assert len(widths) == 1  # escaped pipes keep every row's cell count


@pytest.mark.slow
def test_csv_and_json_parse(report, artifacts):
    rows = list(csv.DictReader(io.StringIO(report.format("csv"))))
    assert [r["status"] for r in rows] == [r.status for r in report.rows]
    fp32 = next(r for r in rows if r["artifact"] == str(artifacts["fp32"]))
    assert float(fp32["max_abs_dscore"]) <= 1e-4 and fp32["tolerance"].startswith("max|d| <=")

    doc = json.loads(report.format("json", per_image=True))
    assert doc["passed"] is False and doc["n_images"] == N_IMAGES
    assert doc["crops_per_image"] == N_CROPS
    assert doc["tolerances"]["fp32"]["abs_dsrcc"] == {"op": "<", "limit": 5e-4}
    assert len(doc["images"]) == N_IMAGES and {"name", "mos"} <= set(doc["images"][0])
    by_path = {r["artifact"]: r for r in doc["rows"]}
    damaged = by_path[str(artifacts["damaged"])]
    assert damaged["status"] == "FAIL" and damaged["max_abs_dscore_crop"] > 1e-4
    assert len(damaged["image_scores"]) == N_IMAGES
    assert by_path[str(artifacts["missing"])]["image_scores"] is None
    assert "image_scores" not in json.loads(report.format("json"))["rows"][0]


# --------------------------------------------------------------------------------------------
# The comparator and the selection alone (no model)
# --------------------------------------------------------------------------------------------


def _fake_rows(delta: np.ndarray, precision: str) -> ParityRow:
    mos = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    crops = np.repeat(mos[:, None] / 10, 3, axis=1)
    ref = reference_row(BackendRun("ref", "torch", "fp32", crop_scores=crops, seconds=1.0), mos)
    assert ref.srcc == pytest.approx(1.0) and ref.images_per_s == 5.0
    run = BackendRun("a.onnx", "onnxruntime", precision, crop_scores=crops + delta[:, None])
    return compare(ref, run, mos)


def test_comparator_uses_the_tolerance_of_the_precision():
    assert tolerance_for("fp16-autocast") is TOLERANCES["fp16"]
    assert tolerance_for("bf16-autocast") is None
    small = np.array([0, 5e-5, 0, 0, 0])
    assert _fake_rows(small, "fp32").status == "PASS"
    big = np.array([0, 2e-4, 0, 0, 0])  # ranks unchanged, scores off
    row = _fake_rows(big, "fp32")
    assert row.status == "FAIL" and row.reason == "fp32: max|d| 0.0002 not <= 0.0001"
    assert row.needed["max_abs_dscore"] == pytest.approx(2e-4)
    assert _fake_rows(big, "fp16").status == "PASS"  # fp16: dSRCC only
    swap = np.array([0.15, 0, 0, 0, 0])  # image 0 overtakes image 1: SRCC drops
    row = _fake_rows(swap, "int8")
    assert row.status == "FAIL" and row.needed["abs_dsrcc"] == pytest.approx(0.1)
    assert _fake_rows(small, "bf16").reason.startswith("no tolerance for precision 'bf16'")
    nan = _fake_rows(np.array([np.nan, 0, 0, 0, 0]), "fp32")
    assert nan.status == "FAIL" and "non-finite" in nan.reason


def test_selection_spreads_and_needs_enough_images(dataset):
    assert spread_indices(10, 4) == [0, 3, 6, 9] and spread_indices(3, 5) == [0, 1, 2]
    chosen, what = select_samples(dataset, limit=4)
    assert [s.name for s in chosen] == [dataset.samples[i].name for i in [0, 26, 53, 79]]
    assert what == "all images, 4 spread evenly"
    with pytest.raises(DatasetError, match="at least 4 images"):
        select_samples(dataset, limit=3)
    with pytest.raises(DatasetError, match="needs a split file"):
        select_samples(dataset, subset="test")
    splits = make_splits(dataset, k=2, train_fraction=0.5)
    test, what = select_samples(dataset, splits=splits, split_index=1, subset="test")
    assert {s.name for s in test} == set(splits.splits[1][1])
    assert what == "test images of split 1"


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["loda-parity", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.mark.slow
@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: a fake plan is a FAIL there")
def test_cli_skip_is_no_failure_and_split_selection(
    monkeypatch, capsys, micro, dataset, artifacts, tmp_path
):
    split_file = make_splits(dataset, k=1, train_fraction=0.5).save(tmp_path / "splits.json")
    code, out, err = _main(
        monkeypatch,
        capsys,
        micro.checkpoint,
        artifacts["engine"],
        "--data",
        micro.demo_dir / "demo.csv",
        "--split-file",
        split_file,
        "--split",
        "0",
        "--limit",
        "4",
        "--crops",
        "2",
        "--format",
        "json",
        "--per-image",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["passed"] is True and doc["counts"] == {"PASS": 0, "FAIL": 0, "SKIP": 1}
    assert "test images of split 0" in doc["data"] and doc["n_images"] == 4
    test_names = set(json.loads(split_file.read_text())["splits"][0]["test"])
    assert {i["name"] for i in doc["images"]} <= test_names
    assert doc["rows"][1]["status"] == "SKIP" and doc["rows"][1]["reason"]
    assert "1 SKIP" in err
    # run_parity's progress lines, under the command's name
    assert f"loda-parity: {artifacts['engine']}: SKIP (" in err
    assert "loda-parity: scoring 4 images x 2 grid crops: reference torch fp32 on " in err


def test_cli_user_and_usage_errors(monkeypatch, capsys, micro, tmp_path):
    code, _, err = _main(monkeypatch, capsys, micro.checkpoint, "--data", "x.csv")
    assert code == 2 and "ARTIFACTS" in err
    code, _, err = _main(monkeypatch, capsys, tmp_path / "no.safetensors", "a.onnx", "--data", "x")
    assert code == 1 and err.strip().splitlines() == [
        f"loda-parity: error: no checkpoint at {tmp_path / 'no.safetensors'}"
    ]
    code, _, err = _main(
        monkeypatch, capsys, micro.checkpoint, "a.onnx", "--data", "x.csv", "--subset", "test"
    )
    assert code == 2 and "--subset test needs --split-file" in err
    code, _, err = _main(
        monkeypatch, capsys, micro.checkpoint, "a.onnx", "--data", "x.csv", "--per-image"
    )
    assert code == 2 and "--per-image needs --format json" in err


@pytest.mark.slow
def test_installed_command_exits_1_on_a_damaged_artifact(micro, artifacts):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loda.parity_cli",
            micro.checkpoint,
            artifacts["fp32"],
            artifacts["damaged"],
            "--data",
            micro.demo_dir / "demo.csv",
            "--limit",
            "4",
            "--crops",
            "2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    status = {line.split()[0]: line.split()[4] for line in proc.stdout.splitlines()[3:6]}
    assert status == {
        str(micro.checkpoint): "REF",
        str(artifacts["fp32"]): "PASS",
        str(artifacts["damaged"]): "FAIL",
    }, proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        f"loda-parity: error: 1 of 2 artifact(s) FAIL parity: {artifacts['damaged']}"
    )
    assert "Traceback" not in proc.stderr
