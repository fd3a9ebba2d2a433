"""loda.runtime.inputs: what loda-score enumerates, on real files, directories and archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest
from badinputs import make_bad_corpus

from loda.preprocess import ImageDecodeError, decode_image
from loda.runtime.inputs import (
    InputError,
    InputItem,
    is_archive_name,
    iter_inputs,
    parse_shard,
    shard_of,
)


def touch(path: Path, data: bytes = b"img") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def collect(specs, **kwargs) -> tuple[list[InputItem], list[tuple[str, str]]]:
    skips: list[tuple[str, str]] = []
    items = list(iter_inputs(specs, skipped=lambda s, r: skips.append((s, r)), **kwargs))
    return items, skips


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_module_does_not_import_torch():
    code = (
        "import loda.runtime.inputs, loda.runtime.output, sys; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# -- directories -------------------------------------------------------------------------------


def test_directory_walk_is_sorted_depth_first_and_filtered(tmp_path):
    for name in ["b.jpg", "a.PNG", "aa.jpeg", "c.txt", ".hidden.jpg", "A_dir/x.bmp"]:
        touch(tmp_path / name)
    for name in ["sub/z.jpg", "sub/a.webp", "sub/.git/objects/o.png", "sub/deeper/q.TIFF"]:
        touch(tmp_path / name)
    items, skips = collect([str(tmp_path)])
    rel = [os.path.relpath(item.source, tmp_path) for item in items]
    assert rel == [
        "A_dir/x.bmp",
        "a.PNG",
        "aa.jpeg",
        "b.jpg",
        "sub/a.webp",
        "sub/deeper/q.TIFF",
        "sub/z.jpg",
    ]
    assert all(item.path == item.source and item.data is None and not item.error for item in items)
    assert dict(skips) == {
        str(tmp_path / ".hidden.jpg"): "hidden",
        str(tmp_path / "c.txt"): "not an image suffix",
        str(tmp_path / "sub/.git"): "hidden",
    }
    assert collect([str(tmp_path)]) == (items, skips)  # deterministic

    flat, flat_skips = collect([str(tmp_path)], recursive=False)
    assert [os.path.relpath(i.source, tmp_path) for i in flat] == ["a.PNG", "aa.jpeg", "b.jpg"]
    assert (str(tmp_path / "sub"), "subdirectory (not recursive)") in flat_skips


def test_symlinks_loop_is_skipped_file_links_followed_broken_links_error(tmp_path):
    touch(tmp_path / "a.jpg", b"A")
    os.symlink(".", tmp_path / "loop")
    os.symlink("..", tmp_path / "up")
    os.symlink("a.jpg", tmp_path / "link.jpg")
    os.symlink("gone.jpg", tmp_path / "broken.jpg")
    os.symlink("gone.txt", tmp_path / "broken.txt")
    items, skips = collect([str(tmp_path)])
    by_source = {os.path.relpath(i.source, tmp_path): i for i in items}
    assert list(by_source) == ["a.jpg", "broken.jpg", "link.jpg"]
    assert by_source["link.jpg"].read_bytes() == b"A"
    assert by_source["broken.jpg"].error == "broken symlink: No such file or directory"
    assert (str(tmp_path / "loop"), "directory symlink not followed") in skips
    assert (str(tmp_path / "up"), "directory symlink not followed") in skips
    assert (str(tmp_path / "broken.txt"), "broken symlink") in skips


def test_explicit_files_are_items_whatever_the_suffix_and_duplicates_come_once(tmp_path):
    touch(tmp_path / "d/a.jpg")
    touch(tmp_path / "notes.txt")
    os.symlink("d", tmp_path / "dirlink")
    specs = [str(tmp_path / "notes.txt"), str(tmp_path / "d"), str(tmp_path / "d/a.jpg")]
    items, _ = collect([*specs, str(tmp_path / "notes.txt"), str(tmp_path / "dirlink")])
    # A directory link named explicitly is walked; a.jpg found by the walk is not repeated.
    assert [i.source for i in items] == [
        str(tmp_path / "notes.txt"),
        str(tmp_path / "d/a.jpg"),
        str(tmp_path / "dirlink/a.jpg"),
    ]


# -- lists -------------------------------------------------------------------------------------


def test_at_list_and_stdin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "sub/b.png")
    touch(tmp_path / "#odd.jpg")
    (tmp_path / "list.txt").write_text("# a comment\n\na.jpg\r\n./#odd.jpg\nsub\nmissing.jpg\n")
    items, _ = collect(["@list.txt"])
    assert [(i.source, i.error) for i in items] == [
        ("a.jpg", None),
        ("./#odd.jpg", None),
        (os.path.join("sub", "b.png"), None),
        ("missing.jpg", "input not found"),  # a listed path is a row, not a usage error
    ]
    items, _ = collect(["-"], stdin=io.StringIO("sub/b.png\n\n#x\na.jpg"))
    assert [i.source for i in items] == ["sub/b.png", "a.jpg"]


def test_stdin_bytes_keep_non_utf8_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw_name = b"caf\xe9.jpg"
    with open(os.path.join(os.fsencode(tmp_path), raw_name), "wb") as f:
        f.write(b"latin-1 name")
    stdin = io.TextIOWrapper(io.BytesIO(raw_name + b"\n"), encoding="ascii")
    items, _ = collect(["-"], stdin=stdin)
    assert [i.source for i in items] == [os.fsdecode(raw_name)]
    assert items[0].read_bytes() == b"latin-1 name"


def test_missing_inputs_are_usage_errors_before_anything_is_enumerated(tmp_path):
    touch(tmp_path / "a.jpg")
    with pytest.raises(InputError, match=r"input not found: .*nope"):
        iter_inputs([str(tmp_path / "a.jpg"), str(tmp_path / "nope")])  # raises at the call
    with pytest.raises(InputError, match="input list not found"):
        iter_inputs([f"@{tmp_path / 'nolist.txt'}"])
    with pytest.raises(InputError, match="input list not found"):
        iter_inputs([f"@{tmp_path}"])  # a directory is not a list
    assert "\n" not in str(InputError("x"))


# -- archives ----------------------------------------------------------------------------------

MEMBERS = {
    "one.jpg": b"\xff\xd8 first",
    "dir/two.PNG": os.urandom(3000),
    "three.webp": b"",
}


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name,mode", [("a.tar", "w"), ("a.TAR.GZ", "w:gz"), ("a.txz", "w:xz")])
def test_tar_members_are_streamed_with_their_bytes(tmp_path, name, mode):
    archive = write_tar(tmp_path / name, {**MEMBERS, "README.txt": b"hi"}, mode)
    items, skips = collect([str(archive)])
    assert [(i.source, i.data, i.path, i.error) for i in items] == [
        (f"{archive}::{n}", d, None, None) for n, d in MEMBERS.items()
    ]
    assert items[1].read_bytes() == MEMBERS["dir/two.PNG"]
    assert skips == [(f"{archive}::README.txt", "not an image suffix")]


def test_zip_members_in_order_with_their_bytes(tmp_path):
    archive = write_zip(tmp_path / "a.zip", {**MEMBERS, "sub/": b"", "x.txt": b"t"})
    items, skips = collect([str(archive)])
    assert [(i.source, i.data) for i in items] == [
        (f"{archive}::{n}", d) for n, d in MEMBERS.items()
    ]
    assert [r for _, r in skips] == ["directory member", "not an image suffix"]


def test_duplicate_member_names_are_skipped_after_the_first(tmp_path):
    members = [("a.jpg", b"first"), ("b.jpg", b"b"), ("a.jpg", b"second"), ("n.zip", b"z")] * 2
    tar = tmp_path / "dup.tar"
    with tarfile.open(tar, "w") as tf:  # tar appends a new version of a file under its name
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    zf = tmp_path / "dup.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(zf, "w") as z:
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns "Duplicate name" and writes
        for name, data in members:
            z.writestr(name, data)
    for archive in (tar, zf):
        items, skips = collect([str(archive)])
        assert [(i.source, i.data, i.error is None) for i in items] == [
            (f"{archive}::a.jpg", b"first", True),
            (f"{archive}::b.jpg", b"b", True),
            (f"{archive}::n.zip", None, False),  # a nested archive: an error row, once too
        ]
        reason = "duplicate member name; the first one is scored"
        assert skips == [
            (f"{archive}::{n}", reason) for n in ("a.jpg", "a.jpg", "b.jpg", "a.jpg", "n.zip")
        ]


def test_archives_inside_directories_are_expanded_in_walk_order(tmp_path):
    touch(tmp_path / "a.jpg")
    write_tar(tmp_path / "b.tgz", {"m.jpg": b"m"}, "w:gz")
    touch(tmp_path / "c.jpg")
    items, _ = collect([str(tmp_path)])
    assert [os.path.relpath(i.source, tmp_path) for i in items] == [
        "a.jpg",
        "b.tgz::m.jpg",
        "c.jpg",
    ]


def test_escaping_member_names_are_read_and_nothing_is_written(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    evil = {"../escape.jpg": b"E", "/abs/abs.jpg": b"A", "C:\\z.jpg": b"Z", "a/../../up.jpg": b"U"}
    tar = write_tar(work / "evil.tar", evil)
    zf = write_zip(work / "evil.zip", evil)
    before = snapshot(tmp_path)
    items, _ = collect([str(tar), str(zf)])
    assert [(i.source, i.data) for i in items] == [
        *((f"{tar}::{n}", d) for n, d in evil.items()),
        *((f"{zf}::{n}", d) for n, d in evil.items()),
    ]
    assert snapshot(tmp_path) == before
    assert not Path("/abs/abs.jpg").exists()


def test_nested_archives_are_error_items(tmp_path):
    inner_zip = io.BytesIO()
    with zipfile.ZipFile(inner_zip, "w") as zf:
        zf.writestr("x.jpg", b"x")
    archive = write_tar(
        tmp_path / "outer.tar", {"a.jpg": b"a", "inner.ZIP": inner_zip.getvalue(), "b.jpg": b"b"}
    )
    items, _ = collect([str(archive)])
    assert [i.source for i in items] == [f"{archive}::{n}" for n in ("a.jpg", "inner.ZIP", "b.jpg")]
    assert items[1].data is None
    assert items[1].error.startswith("nested archive skipped: 'inner.ZIP'")
    assert "\n" not in items[1].error


def test_corrupt_archives_yield_members_so_far_then_one_error_and_go_on(tmp_path):
    big = os.urandom(20_000)  # incompressible, so a cut .tar.gz is cut inside this member
    good = {"a.jpg": b"a" * 700, "b.jpg": big, "c.jpg": b"c"}
    cut_tar = tmp_path / "cut.tar"
    data = write_tar(tmp_path / "full.tar", good).read_bytes()
    cut_tar.write_bytes(data[: 512 + 1024 + 512 + 5000])  # inside b.jpg's data
    gz = gzip.compress(data)
    cut_gz = tmp_path / "cut.tar.gz"
    cut_gz.write_bytes(gz[: len(gz) // 2])
    zero_zip = touch(tmp_path / "zero.zip", b"")
    cut_zip_data = write_zip(tmp_path / "full.zip", good).read_bytes()
    cut_zip = touch(tmp_path / "cut.zip", cut_zip_data[: len(cut_zip_data) // 2])
    header_cut = tmp_path / "header_cut.tar"
    header_cut.write_bytes(data[: 512 + 1024 + 200])  # inside b.jpg's header
    after = touch(tmp_path / "after.jpg")
    specs = [cut_tar, cut_gz, zero_zip, cut_zip, header_cut, after]
    items, _ = collect([str(s) for s in specs])
    summary = [
        (os.path.relpath(i.source, tmp_path), i.error and i.error.split(":")[0]) for i in items
    ]
    assert summary == [
        ("cut.tar::a.jpg", None),
        ("cut.tar", "cannot read archive"),
        ("cut.tar.gz::a.jpg", None),
        ("cut.tar.gz", "cannot read archive"),
        ("zero.zip", "cannot read archive"),
        ("cut.zip::a.jpg", None),  # recovered from its local header (issue 16)
        ("cut.zip", "cannot read archive"),
        ("header_cut.tar::a.jpg", None),
        ("header_cut.tar", "cannot read archive"),
        ("after.jpg", None),
    ]
    assert all("\n" not in (i.error or "") for i in items)


def test_damaged_zip_member_is_an_error_item_and_the_rest_is_read(tmp_path):
    archive = tmp_path / "crc.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.jpg", b"AAAA-original")
        zf.writestr("b.jpg", b"BBBB")
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b"AAAA-original", b"XXXX-original"))  # bad CRC
    items, _ = collect([str(archive)])
    assert items[0].error.startswith("cannot read member: Bad CRC-32")
    assert (items[1].source, items[1].data) == (f"{archive}::b.jpg", b"BBBB")


def test_is_archive_name():
    assert all(map(is_archive_name, ["a.zip", "a.TAR", "b.tar.gz", "c.TGZ", "d.tbz2", "e.txz"]))
    assert not any(map(is_archive_name, ["a.gz", "a.jpg", "tar", "a.tar.zst"]))


# -- the bad-input corpus ----------------------------------------------------------------------


def test_bad_corpus_enumerates_as_labelled(tmp_path):
    root = tmp_path / "corpus"
    expect = make_bad_corpus(root)
    items, skips = collect([str(root)])
    prefix = f"{root}{os.sep}"
    got = {item.source.removeprefix(prefix): item for item in items}
    skipped = {source.removeprefix(prefix) for source, _ in skips}
    assert set(got) == {name for name, e in expect.items() if e in ("ok", "error")}
    assert skipped == {name for name, e in expect.items() if e == "skip"}
    assert len(got) == len(items)
    for name, item in got.items():
        if expect[name] == "ok":
            assert item.error is None, name


def test_bad_corpus_decodes_as_labelled(tmp_path):
    expect = make_bad_corpus(tmp_path)
    items, _ = collect([str(tmp_path)])
    prefix = f"{tmp_path}{os.sep}"
    for item in items:
        name = item.source.removeprefix(prefix)
        if item.error is not None:
            assert expect[name] == "error", name
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about the bomb's header size
            try:
                decode_image(item.read_bytes())
                decoded = True
            except ImageDecodeError:
                decoded = False
        if name == "wide_20000x8.png":
            continue  # decodes; it is refused once resized (over max_pixels), not here
        assert decoded == (expect[name] == "ok"), name


# -- shards ------------------------------------------------------------------------------------


def expected_shard(source: str, n: int) -> int:
    digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n


def test_shards_partition_and_are_stable():
    sources = [f"dir{i % 7}/img_{i:04d}.jpg" for i in range(300)]
    sources += [f"a.tar::m{i}.png" for i in range(50)] + ["caf\udce9.jpg", "é.png"]
    for n in (1, 2, 3, 7):
        shards = [[s for s in sources if shard_of(s, n) == i] for i in range(n)]
        assert sorted(s for shard in shards for s in shard) == sorted(sources)
        for s in sources:
            assert shard_of(s, n) == expected_shard(s, n) == shard_of(s, n)
    # Pinned (sha256sum of the UTF-8 bytes, first 8 bytes big-endian): never change these.
    assert [shard_of("a.jpg", n) for n in (2, 3, 7)] == [0, 1, 4]
    assert [shard_of("photos/cat.png", n) for n in (2, 3, 7)] == [1, 0, 0]
    assert [shard_of("caf\udce9.jpg", n) for n in (2, 3, 7)] == [1, 0, 5]


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 3/7 ") == (3, 7)
    for bad in ["", "1", "3/3", "-1/2", "1/0", "a/b", "1/2/3", "1.0/2"]:
        with pytest.raises(ValueError, match="shard must be I/N") as info:
            parse_shard(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        shard_of("x", 0)
