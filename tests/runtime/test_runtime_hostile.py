"""Hostile archives and inputs (issue 16): nothing hangs, memory is capped, no input is ever
written, every key gets one row. Cases that could hang run in a subprocess with a timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from badinputs import _jpeg_bytes
from hostile import (
    bad_crc_tar_gz,
    collision_folder,
    corrupt_tar_gz,
    forged_size_tar,
    list_file,
    make_fifo,
    tar_bytes,
    truncated_zip,
    zero_bomb,
)

from loda.runtime.inputs import (
    DEFAULT_MAX_MEMBER_BYTES,
    InputError,
    iter_input_files,
    iter_inputs,
    member_cap,
    normalise_key,
    split_key,
)

TESTS = Path(__file__).resolve().parents[1]


def collect(specs, **kwargs):
    skips: list[tuple[str, str]] = []
    items = list(iter_inputs([str(s) for s in specs], skipped=lambda s, r: skips.append((s, r)),
                             **kwargs))  # fmt: skip
    return items, skips


def enumerate_in_subprocess(specs, cwd, timeout=60, **kwargs) -> list[list]:
    """``[source, error, data length]`` per item, from a child that a hang cannot outlive."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from loda.runtime.inputs import iter_inputs
        out = [[i.source, i.error, None if i.data is None else len(i.data)]
               for i in iter_inputs({[str(s) for s in specs]!r}, **{kwargs!r})]
        print(json.dumps(out))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, cwd=cwd)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# -- 1. forged sizes ---------------------------------------------------------------------------


def test_forged_member_sizes_end_in_seconds_and_the_next_inputs_are_read(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(b"after")
    specs = []
    for how in ("pax", "base256"):
        for gz in (False, True):
            for member in ("x.png", "notes.txt"):
                name = f"{how}-{member}.tar" + (".gz" if gz else "")
                specs.append(forged_size_tar(tmp_path / name, how=how, member=member, gz=gz))
    assert (tmp_path / "pax-x.png.tar").stat().st_size == 2560
    items = enumerate_in_subprocess([*specs, good], tmp_path, timeout=60)
    rows = {os.path.basename(s): (e, n) for s, e, n in items}
    assert rows.pop("good.png") == (None, None)  # enumerated after all of them
    for spec in specs:
        name = spec.name
        if name.endswith(".gz"):
            member = f"{name}::x.png"
            if "x.png" in name:  # refused on its declared size, never read
                assert "member limit" in rows.pop(member)[0]
            error = rows.pop(name)[0]
            assert error.startswith("cannot read archive: unexpected end of data"), name
        else:
            error = rows.pop(name)[0]
            size = spec.stat().st_size
            assert f"past the end of the {size}-byte archive" in error, name
            assert "100000000000000000000 bytes" in error
    assert rows == {}


def test_forged_extended_header_size_is_refused(tmp_path):
    import tarfile

    from hostile import _header

    for gz in (False, True):
        data = _header("././@PaxHeader", 1 << 40, tarfile.XHDTYPE, tarfile.GNU_FORMAT)
        data += b"\0" * 2048
        path = tmp_path / ("pax.tar.gz" if gz else "pax.tar")
        path.write_bytes(__import__("gzip").compress(data) if gz else data)
        items = enumerate_in_subprocess([path], tmp_path, timeout=60)
        assert len(items) == 1 and "extended header" in items[0][1], items


# -- 2. non-regular files ----------------------------------------------------------------------


def test_fifos_named_listed_or_walked_are_never_opened(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(b"g")
    make_fifo(tmp_path / "named.png")
    make_fifo(tmp_path / "listed.jpg")
    make_fifo(tmp_path / "named.tar")
    folder = tmp_path / "folder"
    folder.mkdir()
    make_fifo(folder / "walked.png")
    list_file(tmp_path / "l.txt", ["listed.jpg", "/dev/zero", "good.png"])
    specs = ["named.png", "named.tar", "@l.txt", "folder", "good.png"]
    items = enumerate_in_subprocess(specs, tmp_path, timeout=30)
    assert items == [
        ["named.png", "not a regular file", None],
        ["named.tar", "not a regular file", None],
        ["listed.jpg", "not a regular file", None],
        ["/dev/zero", "not a regular file", None],
        ["good.png", None, None],
    ]


def test_a_file_swapped_for_a_fifo_is_refused_by_the_worker(tmp_path):
    # What the decode worker does with a path that became a FIFO after it was listed.
    make_fifo(tmp_path / "late.png")
    code = textwrap.dedent(
        f"""
        from loda.preprocess import PreprocessConfig
        from loda.runtime import pipeline
        pipeline._set_worker_state(PreprocessConfig(), None, None)
        print(pipeline._prepare("late.png", {str(tmp_path / "late.png")!r}, None)[3])
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("not a regular file")


# -- 3. the member cap -------------------------------------------------------------------------


def test_member_cap_follows_the_pixel_limit():
    assert member_cap(1000) < member_cap(2000)
    assert member_cap(100_000_000) - member_cap(50_000_000) == 3 * 50_000_000
    assert member_cap(None) == member_cap(0) == 1 << 30
    assert DEFAULT_MAX_MEMBER_BYTES < 300_000_000  # was 1 GiB: 4x any image under the limit


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_bombs_over_the_cap_are_error_rows_without_being_read(tmp_path, suffix):
    cap = 1 << 20
    bomb = zero_bomb(tmp_path / f"bomb{suffix}", 3 * cap, count=3)
    assert bomb.stat().st_size < 64 << 10
    at_cap = zero_bomb(tmp_path / f"fits{suffix}", cap, count=1, name="fits.png")
    items, _ = collect([bomb, at_cap], max_member_bytes=cap)
    assert [(os.path.basename(i.source), i.error) for i in items] == [
        *(
            (
                f"bomb{suffix}::bomb{k}.png",
                f"cannot read member: {3 * cap} bytes is over the {cap}-byte member limit "
                "(--max-member-bytes)",
            )
            for k in range(3)
        ),
        (f"fits{suffix}::fits.png", None),
    ]
    assert items[3].data == bytes(cap)


def test_a_zip_member_larger_than_its_header_says_is_not_read_past_it(tmp_path):
    # Central directory says 10 bytes; the data inflates to 2 MiB: the read stops at the
    # declared size and the CRC check fails (never 2 MiB in memory).
    import zipfile

    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.png", bytes(2 << 20))
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")  # uncompressed size in the directory
    path.write_bytes(bytes(data))
    items, _ = collect([path], max_member_bytes=1 << 20)
    assert len(items) == 1 and items[0].data is None
    assert items[0].error.startswith("cannot read member:"), items[0].error


# -- 5. keys -----------------------------------------------------------------------------------


def test_a_file_named_like_a_member_is_one_error_row_whichever_comes_first(tmp_path):
    folder = collision_folder(tmp_path / "c", b"png bytes")
    items, _ = collect([folder])
    assert [(os.path.relpath(i.source, tmp_path), i.error is not None) for i in items] == [
        ("c/a.tar::g1.png", True)
    ]
    assert items[0].error.startswith("key collision:") and items[0].data is None
    items, _ = collect([folder / "a.tar::g1.png", folder / "a.tar"])  # the file first
    assert len(items) == 1 and items[0].error.startswith("key collision:")


def test_keys_split_at_the_first_separator_after_an_archive_suffix():
    assert split_key("d/a.tar::x/y.png") == ("d/a.tar", "x/y.png")
    assert split_key("d::e/a.zip::m::n.png") == ("d::e/a.zip", "m::n.png")
    assert split_key("plain::name.png") == ("plain::name.png", None)
    assert (
        normalise_key("./img/a.png") == normalise_key("img/a.png") == os.path.abspath("img/a.png")
    )
    assert normalise_key("./a.tar::./m.png") == os.path.abspath("a.tar") + "::./m.png"


# -- 6. truncated zips, damaged gzip -----------------------------------------------------------

MEMBERS = {f"m{k}.png": os.urandom(3000 + 500 * k) for k in range(5)}


@pytest.mark.parametrize("descriptor", [False, True])
def test_a_truncated_zip_keeps_every_intact_member(tmp_path, descriptor):
    cut = truncated_zip(tmp_path / "cut.zip", MEMBERS, keep=0.6, descriptor=descriptor)
    end = truncated_zip(tmp_path / "end.zip", MEMBERS, cut_end=10, descriptor=descriptor)
    items, _ = collect([cut, end])
    by = {os.path.basename(i.source): i for i in items}
    recovered = [n for n in MEMBERS if f"cut.zip::{n}" in by]
    assert 1 <= len(recovered) < len(MEMBERS)
    for name in recovered:
        assert by[f"cut.zip::{name}"].data == MEMBERS[name]
    assert "truncated or damaged zip" in by["cut.zip"].error
    for name, data in MEMBERS.items():  # only the end record is gone: everything is there
        assert by[f"end.zip::{name}"].data == data
    assert f"{len(MEMBERS)} member(s) recovered" in by["end.zip"].error


def test_bad_gzip_crc_and_corrupt_data_are_archive_errors(tmp_path):
    members = {"a.png": os.urandom(5000), "b.png": os.urandom(5000)}
    crc = bad_crc_tar_gz(tmp_path / "crc.tar.gz", members)
    bad = corrupt_tar_gz(tmp_path / "bad.tar.gz", members)
    items, _ = collect([crc, bad])
    rows = [(os.path.basename(i.source), i.error) for i in items]
    assert rows[:2] == [("crc.tar.gz::a.png", None), ("crc.tar.gz::b.png", None)]
    assert rows[2][0] == "crc.tar.gz" and "CRC check failed" in rows[2][1]
    assert rows[-1][0] == "bad.tar.gz" and rows[-1][1].startswith("cannot read archive:")


# -- 7. lists ----------------------------------------------------------------------------------


def test_lists_bom_encodings_and_spellings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.png").write_bytes(b"x")
    bom = list_file(tmp_path / "bom.txt", ["x.png", "./x.png", str(tmp_path / "x.png")], bom=True)
    items, _ = collect([f"@{bom}"])
    assert [(i.source, i.error) for i in items] == [("x.png", None)]  # first spelling kept
    utf16 = list_file(tmp_path / "u16.txt", ["x.png"], encoding="utf-16")
    with pytest.raises(InputError, match="is not UTF-8: it is UTF-16"):
        iter_inputs([f"@{utf16}"])
    nobom = list_file(tmp_path / "u16le.txt", ["x.png"], encoding="utf-16-le")
    with pytest.raises(InputError, match="NUL bytes"):
        iter_inputs([f"@{nobom}"])


def test_input_files_lists_every_file_the_run_opens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a.png").write_bytes(b"a")
    (tmp_path / "d/b.tar").write_bytes(tar_bytes({"m.png": b"m"}))
    (tmp_path / "d/notes.txt").write_bytes(b"n")
    list_file(tmp_path / "l.txt", ["d/a.png", "c.jpg"])
    (tmp_path / "c.jpg").write_bytes(b"c")
    assert list(iter_input_files(["d", "@l.txt"])) == [
        os.path.join("d", "a.png"),
        os.path.join("d", "b.tar"),
        "l.txt",
        "c.jpg",
    ]


# -- 8. messages -------------------------------------------------------------------------------


def test_error_rows_hold_no_object_reprs():
    from loda.preprocess import PreprocessConfig
    from loda.runtime import pipeline

    pipeline._set_worker_state(PreprocessConfig(), None, None)
    for data in (b"not an image", bytearray(b"\x89PNG\r\n\x1a\n broken")):
        error = pipeline._prepare("a.tar::x.png", None, data)[3]
        assert error and " at 0x" not in error and "object" not in error, error


def test_jpeg_member_decodes(tmp_path):
    # A control for the cases above: a real image member read through the new tar reader.
    (tmp_path / "ok.tar.gz").write_bytes(
        __import__("gzip").compress(tar_bytes({"ok.jpg": _jpeg_bytes()}))
    )
    from loda.preprocess import decode_image

    items, _ = collect([tmp_path / "ok.tar.gz"])
    assert decode_image(bytes(items[0].data)).shape == (48, 64, 3)


# -- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(micro) -> list[Path]:
    return sorted((micro.demo_dir / "images").glob("*.png"))[:3]


def loda_score(*args, cwd=None, stdin=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loda.runtime.cli", *map(str, args), "--no-progress"],
        capture_output=True, text=True, cwd=cwd, input=stdin, timeout=timeout,
    )  # fmt: skip


def rows_of(path: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    by = {r["source"]: r for r in rows}
    assert len(by) == len(rows), "a source has two rows"
    return by


def test_a_hostile_corpus_finishes_with_one_row_per_key(micro, good, tmp_path):
    import shutil

    w = tmp_path / "w"
    w.mkdir()
    for k, image in enumerate(good):
        shutil.copy(image, w / f"g{k}.png")
    png = (w / "g0.png").read_bytes()
    forged_size_tar(w / "hang.tar")
    forged_size_tar(w / "hang.tar.gz", member="notes.txt", gz=True)
    make_fifo(w / "fifo.png")
    collision_folder(w / "coll", png)
    truncated_zip(w / "cut.zip", {"z0.png": png, "z1.png": os.urandom(40_000)}, keep=0.5)
    bad_crc_tar_gz(w / "crc.tar.gz", {"c.png": png})
    zero_bomb(w / "bomb.zip", 3 << 20, count=3)
    list_file(w / "l.txt", ["g1.png", "./g1.png", str(w / "g1.png"), "fifo.png"], bom=True)
    specs = ["hang.tar", "hang.tar.gz", "fifo.png", "coll", "cut.zip", "crc.tar.gz", "bomb.zip",
             "@l.txt", "g0.png", "g2.png"]  # fmt: skip
    r = loda_score(*specs, "-m", micro.onnx_path, "-o", "out.csv", "-j", "2",
                   "--max-member-bytes", 1 << 20, cwd=w)  # fmt: skip
    assert r.returncode == 1, r.stderr
    rows = rows_of(w / "out.csv")
    status = {k: v["status"] for k, v in rows.items()}
    assert status == {
        "hang.tar": "error",
        "hang.tar.gz": "error",
        "fifo.png": "error",
        "coll/a.tar::g1.png": "error",
        "cut.zip::z0.png": "ok",
        "cut.zip": "error",
        "crc.tar.gz::c.png": "ok",
        "crc.tar.gz": "error",
        **{f"bomb.zip::bomb{k}.png": "error" for k in range(3)},
        "g1.png": "ok",  # listed three ways, scored once
        "g0.png": "ok",
        "g2.png": "ok",
    }
    assert rows["fifo.png"]["error"] == "not a regular file"
    assert rows["coll/a.tar::g1.png"]["error"].startswith("key collision")
    assert "truncated" in rows["cut.zip"]["error"] and "CRC" in rows["crc.tar.gz"]["error"]
    assert all(" at 0x" not in row["error"] for row in rows.values())


def test_the_output_is_never_an_input_even_with_overwrite(micro, good, tmp_path):
    import shutil

    folder = tmp_path / "ow"
    folder.mkdir()
    shutil.copy(good[0], folder / "j0.png")
    before = (folder / "j0.png").read_bytes()
    list_path = list_file(tmp_path / "list.txt", [str(folder / "j0.png")])
    listed = list_path.read_bytes()
    cases = [
        (["ow", "-o", "ow/j0.png"], "would overwrite an input"),
        ([f"@{list_path}", "-o", list_path], "would overwrite an input"),
        (["-", "-o", "ow/j0.png"], "would overwrite an input"),
        (["ow", "-o", "ow/new.png"], "inside the input folder"),
    ]
    for args, message in cases:
        r = loda_score(*args, "-m", micro.onnx_path, "--overwrite", cwd=tmp_path,
                       stdin="ow/j0.png\n")  # fmt: skip
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (folder / "j0.png").read_bytes() == before and list_path.read_bytes() == listed
    assert not (folder / "new.png").exists()
    r = loda_score("ow", "-m", micro.onnx_path, "-o", "ow/j0.png/out.csv", cwd=tmp_path)
    assert r.returncode == 2 and "ow/j0.png is not a directory" in r.stderr, r.stderr


def test_resume_matches_other_spellings_and_warns_when_nothing_matches(micro, good, tmp_path):
    import shutil

    (tmp_path / "img").mkdir()
    for k, image in enumerate(good[:2]):
        shutil.copy(image, tmp_path / "img" / f"i{k}.png")
    out = tmp_path / "r.csv"
    r = loda_score("./img/i0.png", "-m", micro.onnx_path, "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = loda_score("img/i0.png", "img/i1.png", "-m", micro.onnx_path, "-o", out, "--resume",
                   cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0 and "1 already done" in r.stderr, r.stderr
    assert sorted(rows_of(out)) == ["./img/i0.png", "img/i1.png"]
    other = tmp_path / "other.png"
    shutil.copy(good[2], other)
    r = loda_score(other, "-m", micro.onnx_path, "-o", out, "--resume", cwd=tmp_path)
    assert r.returncode == 0 and "none of the 2 row(s)" in r.stderr, r.stderr


def test_a_worker_whose_parent_died_exits_quietly(micro, good, tmp_path):
    import signal
    import time

    inputs = [str(p) for p in good] * 1
    many = tmp_path / "many"
    many.mkdir()
    for k in range(30):
        os.symlink(good[k % len(good)], many / f"i{k:02d}.png")
    out = tmp_path / "k.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loda.runtime.cli", "many", *inputs, "-m", str(micro.onnx_path),
         "-o", str(out), "-j", "1", "--batch-size", "15", "--no-progress"],
        stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # the main process only, as the OOM killer does
    stderr = proc.communicate(timeout=60)[1]  # EOF: the worker has exited too
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


# -- 9. hostile models -------------------------------------------------------------------------


def _external_model(folder: Path, location: str) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.bin").write_bytes(bytes(8))
    t = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", location
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [], [y], [t])
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    return path


def test_check_onnx_file_refuses_what_leaves_the_folder(tmp_path, micro):
    from loda.onnx_files import ModelFileError, check_onnx_file

    assert check_onnx_file(micro.onnx_path) is None
    assert check_onnx_file(_external_model(tmp_path / "ok", "data.bin")) is None
    os.symlink("/etc/hostname", tmp_path / "link.bin")
    cases = {
        "../../etc/passwd": "not a plain path",
        "/etc/passwd": "absolute path",
        "C:\\\\x.bin": "absolute path",
        "sub/../data.bin": "not a plain path",
        "missing.bin": "missing",
        "../link.bin": "not a plain path",
    }
    for k, (location, reason) in enumerate(cases.items()):
        with pytest.raises(ModelFileError, match=reason):
            check_onnx_file(_external_model(tmp_path / f"m{k}", location))
    inside_link = tmp_path / "m9"
    model = _external_model(inside_link, "out.bin")
    os.symlink("/etc/hostname", inside_link / "out.bin")
    with pytest.raises(ModelFileError, match="leads outside the model's folder"):
        check_onnx_file(model)
    data = micro.onnx_path.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="damaged or not an ONNX model"):
        check_onnx_file(tmp_path / "cut.onnx")


def test_every_command_that_opens_a_model_answers_one_line(micro, good, tmp_path):
    model = _external_model(tmp_path / "evil", "../../etc/passwd")
    folder = good[0].parent
    commands = [
        ["loda.runtime.cli", str(folder), "-m", model, "-o", tmp_path / "o.csv"],
        ["loda.cli", "info", model],
        ["loda.export.cli", "verify", micro.checkpoint, model],
        ["loda.calib.cli", "int8", model, "--images", folder],
        ["loda.export.trt_cli", "build", model],
        # loda-parity scores every artifact it can: this one is a FAIL row with the reason
        [
            "loda.parity_cli",
            micro.checkpoint,
            model,
            "--data",
            micro.demo_dir / "demo.csv",
            "--limit",
            "4",
            "--crops",
            "1",
        ],
    ]
    for args in commands:
        r = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        lines = r.stderr.strip().splitlines()  # progress lines may come before the error
        errors = [line for line in lines if ": error: " in line]
        assert r.returncode == 1 and errors == lines[-1:], (args, r.stderr)
        assert "Traceback" not in r.stderr
        reason = [line for line in lines if "'../../etc/passwd'" in line and "refused" in line]
        assert reason, lines
