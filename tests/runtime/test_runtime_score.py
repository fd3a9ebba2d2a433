"""loda-score end to end (runtime/cli.py, runtime/pipeline.py) and the Scorer API.

Real model (loda_micro exported to ONNX), real files: the bad-input corpus of
tests/badinputs.py, archives, kill -9 / SIGTERM and --resume, shards, -j equality.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from badinputs import _png_chunk, make_bad_corpus
from PIL import Image

from loda.runtime import Scorer

ATOL = 1e-4


@pytest.fixture(scope="module")
def images(micro) -> list[Path]:
    """Ten real demo images (96 x 64 distortions of two photos)."""
    paths = sorted((micro.demo_dir / "images").glob("*.png"))
    assert len(paths) >= 10
    return paths[:: max(1, len(paths) // 10)][:10]


def loda_score(*args, cwd=None, stdin=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loda.runtime.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        input=stdin,
        timeout=timeout,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def by_source(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    out = {}
    for row in rows:
        assert row["source"] not in out, f"duplicated row {row['source']}"
        out[row["source"]] = row
    return out


# --------------------------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------------------------


def test_scorer_api_matches_torch_reference_and_reports_errors(micro, images, tmp_path):
    from loda.checkpoint import load_checkpoint
    from loda.inference import score_image

    model, meta = load_checkpoint(micro.checkpoint)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with Scorer.open(micro.onnx_path, device="cpu") as scorer:
        assert scorer.preprocess == meta.preprocess
        results = scorer.score_paths([*images[:3], bad])
        arrays = scorer.score_images([np.asarray(Image.open(images[0]))])
    for path, result in zip(images[:3], results[:3], strict=True):
        ref = score_image(model, path, meta.preprocess)
        assert result.ok and result.source == os.fspath(path)
        assert abs(result.score - ref.score) <= ATOL
        assert abs(result.spread - ref.spread) <= ATOL
        assert (result.width, result.height) == (96, 64)
        assert (result.mos is None) == (meta.calibration is None)
    assert not results[3].ok and "bad.jpg" in results[3].error
    assert arrays[0].source == "image[0]" and abs(arrays[0].score - results[0].score) <= ATOL


def test_grid_scores_identical_across_backends(micro, images):
    with Scorer.open(micro.onnx_path, device="cpu") as ort_scorer:
        ort = ort_scorer.score_paths(images)
    with Scorer.open(micro.checkpoint, device="cpu") as torch_scorer:
        ref = torch_scorer.score_paths(images)
    for a, b in zip(ort, ref, strict=True):
        assert a.ok and b.ok
        assert abs(a.score - b.score) <= ATOL
        np.testing.assert_allclose(a.crop_scores, b.crop_scores, atol=ATOL, rtol=0)


def _huge_png_header(side: int = 13_400) -> bytes:
    """A PNG whose header says ``side`` x ``side`` (179.6 Mpx for 13400, just over Pillow's
    own error limit of 2 x 89.5 Mpx) and whose pixel data is broken: decoding fails at once,
    so neither test memory nor time goes into a real image of that size."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"not zlib data")
        + _png_chunk(b"IEND", b"")
    )


def test_max_pixels_is_the_only_pixel_limit(micro, images, tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(_huge_png_header())
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with Scorer.open(micro.onnx_path, device="cpu") as scorer:
        small, _ = scorer.score_paths([images[0], huge], max_pixels=1000)
        ok, unlimited = scorer.score_paths([images[0], huge], max_pixels=None)
    assert not small.ok and "96x64 = 6144 pixels exceeds the limit of 1000" in small.error
    assert ok.ok
    # No limit: Pillow's own limit (an error at 2 x 89.5 Mpx) is lifted too, so the decoder
    # gets to the (broken) pixel data, and the process-wide limit is restored afterwards.
    assert not unlimited.ok and "DecompressionBomb" not in unlimited.error, unlimited.error
    assert "broken data stream" in unlimited.error
    assert pillow_limit == Image.MAX_IMAGE_PIXELS
    out = tmp_path / "zero.csv"  # --max-pixels 0 in the decode workers
    r = loda_score(
        images[0], huge, "-m", micro.onnx_path, "-o", out, "--max-pixels", "0", "-j", "1"
    )
    assert r.returncode == 1, r.stderr
    rows = read_csv(out)
    assert rows[0]["status"] == "ok" and "broken data stream" in rows[1]["error"], rows


def test_crop_packer_straddles_batches_in_order():
    from loda.runtime import CropPacker

    calls = []

    def infer(crops):
        calls.append(len(crops))
        return crops[:, 0, 0, 0].astype(np.float32)

    packer = CropPacker(infer, batch_size=4)
    done = []
    sizes = [3, 0, 5, 1, 2]
    for key, n in enumerate(sizes):
        crops = np.zeros((n, 2, 2, 3), np.uint8)
        crops[:, 0, 0, 0] = np.arange(n) + 10 * key
        done += packer.add(key, crops)
    done += packer.finish()
    assert [k for k, _ in done] == list(range(len(sizes)))
    for key, scores in done:
        np.testing.assert_array_equal(scores, np.arange(sizes[key]) + 10 * key)
    assert calls == [4, 4, 3]


# --------------------------------------------------------------------------------------------
# loda-score
# --------------------------------------------------------------------------------------------


DUPLICATE = "duplicate member name; the first one is scored"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The bad-input corpus plus a tar and a zip holding two members named ``same.jpg``."""
    root = tmp_path_factory.mktemp("corpus")
    expected = make_bad_corpus(root)
    first, second = (root / "plain.jpg").read_bytes(), b"not an image: must not be scored"
    with tarfile.open(root / "dups.tar", "w") as tar:
        for data in (first, second):
            info = tarfile.TarInfo("same.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with warnings.catch_warnings(), zipfile.ZipFile(root / "dups.zip", "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": written all the same
        for data in (first, second):
            zf.writestr("same.jpg", data)
    expected.update({"dups.tar::same.jpg": "ok", "dups.zip::same.jpg": "ok"})
    return root, expected


def test_bad_input_corpus_never_stops_a_run(micro, corpus, tmp_path):
    root, expected = corpus
    out = tmp_path / "scores.csv"
    r = loda_score(root, "-m", micro.onnx_path, "-o", out, "-j", "2", cwd=root)
    assert r.returncode == 1, r.stderr  # some inputs failed

    def rel(source: str) -> str:
        archive, sep, member = source.partition("::")
        return os.path.relpath(archive, root) + sep + member

    got = {rel(source): row for source, row in by_source(read_csv(out)).items()}
    assert sorted(got) == sorted(n for n, e in expected.items() if e != "skip")  # no extra row
    prefix = "loda-score:   skipped "  # the summary lists every skip (up to 20) with its reason
    skips = sorted(
        (rel(source), why)
        for source, why in (
            line.removeprefix(prefix).rsplit(": ", 1)
            for line in r.stderr.splitlines()
            if line.startswith(prefix)
        )
    )
    duplicates = [("dups.tar::same.jpg", DUPLICATE), ("dups.zip::same.jpg", DUPLICATE)]
    assert [n for n, _ in skips] == sorted(
        [n for n, e in expected.items() if e == "skip"] + [n for n, _ in duplicates]
    )
    assert set(duplicates) <= set(skips)
    for name, expectation in expected.items():
        if expectation == "skip":
            continue
        row = got[name]
        assert row["status"] == expectation, f"{name}: {row}"
        if expectation == "ok":
            assert np.isfinite(float(row["score"])) and row["error"] == ""
            assert int(row["width"]) > 0 and int(row["height"]) > 0
        else:
            assert row["score"] == "" and row["error"] and "\n" not in row["error"]
    assert any(line.startswith("loda-score: scored") for line in r.stderr.splitlines())


def test_jobs_do_not_change_scores_and_jsonl(micro, images, tmp_path):
    outs = {}
    for jobs in ("0", "1", "2"):
        out = tmp_path / f"j{jobs}.csv"
        r = loda_score(*images, "-m", micro.onnx_path, "-o", out, "-j", jobs)
        assert r.returncode == 0, r.stderr
        outs[jobs] = out.read_bytes()
    assert outs["0"] == outs["1"] == outs["2"]
    rows = read_csv(tmp_path / "j1.csv")
    assert [r["source"] for r in rows] == [str(p) for p in images]  # input order
    out = tmp_path / "s.jsonl"
    r = loda_score(*images[:3], "-m", micro.onnx_path, "-o", out, "-j", "1")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["source"] for d in lines] == [str(p) for p in images[:3]]
    for d, row in zip(lines, rows, strict=False):
        assert d["score"] == float(row["score"]) and d["status"] == "ok"


def test_random_layout_is_seeded_per_image(micro, images, tmp_path):
    def run(seed, jobs, order):
        out = tmp_path / f"r{seed}_{jobs}_{len(order)}.csv"
        r = loda_score(
            *order, "-m", micro.onnx_path, "-o", out, "--layout", "random", "--seed", seed,
            "-j", jobs,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return {row["source"]: float(row["score"]) for row in read_csv(out)}

    a = run(1, 1, images[:4])
    b = run(1, 2, images[:4][::-1])  # other order, other worker count
    c = run(2, 1, images[:4])
    for key in a:
        assert abs(a[key] - b[key]) <= ATOL
    assert any(abs(a[k] - c[k]) > 1e-6 for k in a)


def test_archives_lists_and_stdin(micro, images, tmp_path):
    tgz = tmp_path / "imgs.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        for p in images[:3]:
            tf.add(p, arcname=f"sub/{p.name}")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in images[3:5]))
    out = tmp_path / "a.csv"
    r = loda_score(
        tgz, f"@{listing}", "-", "-m", micro.onnx_path, "-o", out, "-j", "1",
        stdin=f"{images[5]}\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = read_csv(out)
    assert [row["source"] for row in rows] == [
        *(f"{tgz}::sub/{p.name}" for p in images[:3]),
        *map(str, images[3:6]),
    ]
    direct = {row["source"]: row for row in read_csv(_score(micro, images[:3], tmp_path / "d.csv"))}
    for p, row in zip(images[:3], rows, strict=False):
        assert abs(float(row["score"]) - float(direct[str(p)]["score"])) <= ATOL


def test_calibrated_model_writes_mos(micro, images, tmp_path):
    import dataclasses

    import onnx

    from loda.metadata import METADATA_KEY, Calibration
    from loda.metrics import LogisticFit

    b1, b2, b3, b4 = 5.0, 1.0, 0.1, 0.4
    with Scorer.open(micro.onnx_path, device="cpu") as scorer:
        meta = scorer.meta
    calibration = Calibration(LogisticFit((b1, b2, b3, b4)), "test", (1.0, 5.0))
    record = dataclasses.replace(meta, calibration=calibration).to_json()
    model = onnx.load(micro.onnx_path)
    (prop,) = [p for p in model.metadata_props if p.key == METADATA_KEY]
    prop.value = record  # the record loda-export writes, now with a calibration
    calibrated = tmp_path / "calibrated.onnx"
    onnx.save(model, calibrated)
    out = tmp_path / "mos.csv"
    r = loda_score(*images[:3], "-m", calibrated, "-o", out, "-j", "0")
    assert r.returncode == 0, r.stderr
    rows = read_csv(out)
    plain = read_csv(_score(micro, images[:3], tmp_path / "plain.csv"))
    for row, plain_row in zip(rows, plain, strict=True):
        score = float(row["score"])
        assert score == float(plain_row["score"]) and plain_row["mos"] == ""
        want = (b1 - b2) / (1 + math.exp(-(score - b3) / abs(b4))) + b2  # VQEG 4-parameter
        assert abs(float(row["mos"]) - want) <= 1e-9, (row, want)
        assert 1.0 < want < 5.0


def test_random_crops_are_reproducible_across_shards_and_resume(micro, images, tmp_path):
    random5 = ("--crops", "5", "--layout", "random", "--seed", "1")
    whole = by_source(read_csv(_score(micro, images, tmp_path / "whole.csv", *random5)))
    parts = []
    for i in range(2):
        part = _score(micro, images, tmp_path / f"s{i}.csv", *random5, "--shard", f"{i}/2")
        parts += read_csv(part)
    resumed = tmp_path / "resumed.csv"
    shutil.copy(tmp_path / "s0.csv", resumed)  # shard 0 done, then the rest with --resume
    _score(micro, images, resumed, *random5, "--resume")
    with Scorer.open(micro.onnx_path, device="cpu") as scorer:
        api = scorer.score_paths(images, num_crops=5, layout="random", seed=1)
        grid = scorer.score_paths(images)
    for rows in (by_source(parts), by_source(read_csv(resumed))):
        assert rows.keys() == whole.keys()
        for key, row in rows.items():
            assert abs(float(row["score"]) - float(whole[key]["score"])) <= ATOL
    for result, g in zip(api, grid, strict=True):
        assert len(result.crop_scores) == 5 and len(g.crop_scores) == 15
        assert abs(result.score - float(whole[result.source]["score"])) <= ATOL
    assert any(abs(a.score - g.score) > 1e-6 for a, g in zip(api, grid, strict=True))


def test_resume_exit_code_counts_error_rows_from_before(micro, images, tmp_path):
    junk = "x" * 140_000  # a junk line of an @list: an error row with a 140,000-character source
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images[0]}\n{junk}\n")
    out = tmp_path / "r.csv"
    r = loda_score(f"@{listing}", "-m", micro.onnx_path, "-o", out, "-j", "0")
    assert r.returncode == 1, r.stderr
    r = loda_score(
        f"@{listing}", images[1], "-m", micro.onnx_path, "-o", out, "-j", "0", "--resume"
    )
    assert r.returncode == 1, r.stderr  # every new input scored, but one failed before
    assert "scored 1 of 1 image(s), 0 failed (2 already done, 1 of them failed)" in r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and lines[2] == f"{junk},,,,,,error,input not found"


def _score(micro, inputs, out, *extra) -> Path:
    r = loda_score(*inputs, "-m", micro.onnx_path, "-o", out, "-j", "1", *extra)
    assert r.returncode == 0, r.stderr
    return out


def test_shards_partition_and_concatenate_to_the_whole(micro, images, tmp_path):
    whole = by_source(read_csv(_score(micro, images, tmp_path / "whole.csv")))
    parts = []
    for i in range(3):
        parts += read_csv(_score(micro, images, tmp_path / f"s{i}.csv", "--shard", f"{i}/3"))
    merged = by_source(parts)  # asserts no duplicates
    assert merged.keys() == whole.keys()
    for key, row in merged.items():
        assert abs(float(row["score"]) - float(whole[key]["score"])) <= ATOL


def test_usage_errors_exit_2_and_user_errors_exit_1(micro, images, tmp_path):
    r = loda_score(tmp_path / "missing", "-m", micro.onnx_path)
    assert r.returncode == 2 and "missing" in r.stderr
    r = loda_score(images[0], "-m", micro.onnx_path, "--shard", "3/3")
    assert r.returncode == 2 and "shard" in r.stderr.lower()
    existing = tmp_path / "exists.csv"
    existing.write_text("source\n")
    r = loda_score(images[0], "-m", micro.onnx_path, "-o", existing)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = loda_score(images[0], "-m", tmp_path / "nope.onnx")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"loda-score: error: no ONNX model at {tmp_path / 'nope.onnx'}"
    ]


def test_no_images_is_a_warning_not_a_silent_success(micro, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = loda_score(empty, "-m", micro.onnx_path, "-o", tmp_path / "e.csv", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"warning: no images found in {empty}" in r.stderr
    assert read_csv(tmp_path / "e.csv") == []
    (empty / "notes.txt").write_text("not an image")  # skipped with a reason: no warning
    r = loda_score(empty, "-m", micro.onnx_path, "-o", tmp_path / "f.csv", "--no-progress")
    assert r.returncode == 0 and "skipped" in r.stderr and "no images found" not in r.stderr


# --------------------------------------------------------------------------------------------
# Interruptions: kill -9, SIGTERM, --resume
# --------------------------------------------------------------------------------------------


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C as a foreground job in a terminal gets it. A shell
    without job control starts background jobs (``make test &``) with SIGINT ignored, and an
    ignored signal stays ignored across exec: loda-score would then rightly not react."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(micro, inputs, out, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "loda.runtime.cli", *map(str, inputs), "-m", str(micro.onnx_path),
         "-o", str(out), "-j", "1", "--batch-size", "15", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip


def _wait_rows(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= n + 1:  # header + n rows
            return
        if proc.poll() is not None:
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_then_resume_loses_and_duplicates_nothing(micro, images, tmp_path):
    inputs = images * 2  # 20 inputs (duplicates are scored once: 10 rows)
    reference = by_source(
        read_csv(_score(micro, images, tmp_path / "ref.csv", "--batch-size", "15"))
    )
    for kill_after in (0, 3, 7):
        out = tmp_path / f"k{kill_after}.csv"
        proc = _start(micro, inputs, out, "--resume")
        if kill_after:
            _wait_rows(out, kill_after, proc)
        else:
            time.sleep(1.0)  # during start-up
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r = loda_score(
            *inputs, "-m", micro.onnx_path, "-o", out, "-j", "1", "--batch-size", "15", "--resume"
        )
        assert r.returncode == 0, r.stderr
        rows = by_source(read_csv(out))  # no duplicates, every line parses
        assert rows.keys() == reference.keys(), kill_after
        for key, row in rows.items():
            assert row["score"] == reference[key]["score"], (kill_after, key)
            assert row["status"] == "ok"


def _long_tar(images: list[Path], tmp_path: Path, members: int = 60) -> tuple[Path, list[str]]:
    """A tar of ``members`` distinct members (the images, repeated): a run long enough that a
    signal sent after its first rows always lands mid-run (10 images take ~1 s on an idle
    machine), and the sources its rows carry."""
    tar = tmp_path / "long.tar"
    with tarfile.open(tar, "w") as tf:
        for i in range(members):
            tf.add(images[i % len(images)], arcname=f"{i:03d}.png")
    return tar, [f"{tar}::{i:03d}.png" for i in range(members)]


@pytest.mark.slow
def test_sigterm_flushes_a_consistent_file_and_exits_143(micro, images, tmp_path):
    out = tmp_path / "t.csv"
    tar, sources = _long_tar(images, tmp_path)
    proc = _start(micro, [tar], out)
    _wait_rows(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "--resume" in err
    data = out.read_bytes()
    assert data.endswith(b"\n")
    partial = read_csv(out)
    assert 2 <= len(partial) < len(sources)
    r = loda_score(
        tar, "-m", micro.onnx_path, "-o", out, "-j", "1", "--batch-size", "15", "--resume"
    )
    assert r.returncode == 0, r.stderr
    assert [row["source"] for row in read_csv(out)] == sources


@pytest.mark.slow
def test_sigint_exits_130_and_counts_the_rows_written(micro, images, tmp_path):
    out = tmp_path / "i.csv"
    tar, _ = _long_tar(images, tmp_path)
    proc = _start(micro, [tar], out, "--no-progress")
    _wait_rows(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    (count,) = re.findall(r"interrupted after (\d+) row\(s\)", err)
    assert int(count) == len(read_csv(out)) >= 2


def test_closed_stdout_pipe_stops_with_one_line(micro, images, tmp_path):
    tar, _ = _long_tar(images, tmp_path, members=40)  # still scoring when the reader goes
    proc = subprocess.Popen(
        [sys.executable, "-m", "loda.runtime.cli", str(tar), "-m", str(micro.onnx_path),
         "-j", "0", "--batch-size", "15"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout.readline().startswith("source,")  # like `| head -1`
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 141, err
    lines = [x for x in err.splitlines() if "pipe" in x or "Error" in x or "Traceback" in x]
    assert len(lines) == 1 and "broken pipe" in lines[0], err


def test_stdout_output_and_score_progress_summary(micro, images):
    r = loda_score(images[0], "-m", micro.onnx_path, "-j", "0", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    assert json.loads(line)["source"] == str(images[0])
    assert "scored 1 of 1 image(s), 0 failed" in r.stderr  # the summary goes to stderr


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_dead_worker_is_one_line_and_resume_finishes(micro, images, tmp_path):
    out = tmp_path / "w.csv"
    proc = _start(micro, images, out)
    _wait_rows(out, 2, proc)
    for pid in _descendants(proc.pid):  # the forkserver and its workers, not the tracker
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before its workers could be killed")
    assert proc.returncode == 1, err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert "decode worker died" in line and "--resume" in line
    r = loda_score(
        *images, "-m", micro.onnx_path, "-o", out, "-j", "1", "--batch-size", "15", "--resume"
    )
    assert r.returncode == 0, r.stderr
    assert [row["source"] for row in read_csv(out)] == [str(p) for p in images]
