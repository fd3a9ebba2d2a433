"""loda-score-ray (runtime/ray_job.py, runtime/ray_cli.py): the Ray Data run gives loda-score's rows.

One local Ray (2 CPUs) for the module; the runs call ``score_to_directory`` in-process, and one
test runs the command in a subprocess (it starts its own Ray). The reference is ``loda-score``
itself, run on the same inputs with the same ONNX model.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="needs the 'ray' extra (pip install 'loda[ray]')")

from badinputs import make_bad_corpus  # noqa: E402

from loda.runtime.ray_job import (  # noqa: E402
    KILL_HOOK_ENV,
    SUCCESS_NAME,
    RayJobError,
    RayScoreOptions,
    read_output,
    score_to_directory,
)

pytestmark = pytest.mark.slow
CROPS = "5"  # fewer crops than the default 15 keep the runs short; both engines use the same


@pytest.fixture(scope="module")
def local_ray():
    """Ray's start-up, paid once for the module."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def shards(micro, tmp_path_factory) -> tuple[Path, list[Path]]:
    """Twelve demo images as two WebDataset-style tar shards, plus a folder of four more."""
    root = tmp_path_factory.mktemp("ray_inputs")
    paths = sorted((micro.demo_dir / "images").glob("*.png"))
    assert len(paths) >= 16
    for i in range(2):
        with tarfile.open(root / f"shard-{i:06d}.tar", "w") as tar:
            for p in paths[i * 6 : i * 6 + 6]:
                tar.add(p, arcname=f"{p.stem}.png")
    loose = root / "loose"
    loose.mkdir()
    for p in paths[12:16]:
        (loose / p.name).write_bytes(p.read_bytes())
    return root, [root / "shard-000000.tar", root / "shard-000001.tar", loose]


def loda_score(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loda.runtime.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        for row in csv.DictReader(f):
            assert row["source"] not in out, f"loda-score duplicated {row['source']}"
            out[row["source"]] = row
    return out


def parquet_rows(directory: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for part in sorted(directory.glob("part-*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def options(micro, **kw) -> RayScoreOptions:
    return RayScoreOptions(model=str(micro.onnx_path), crops=int(CROPS), progress=False, **kw)


@pytest.fixture(scope="module")
def reference(micro, shards, tmp_path_factory) -> dict[str, dict[str, str]]:
    """loda-score's rows for the shards and the folder."""
    _root, inputs = shards
    out = tmp_path_factory.mktemp("ref") / "ref.csv"
    r = loda_score(*inputs, "-m", micro.onnx_path, "-o", out, "--crops", CROPS, "-j", "2")
    assert r.returncode == 0, r.stderr
    return read_csv(out)


def assert_same_scores(rows: list[dict], reference: dict[str, dict[str, str]]) -> None:
    sources = [r["source"] for r in rows]
    assert len(sources) == len(set(sources)), "a row was written twice"
    assert sorted(sources) == sorted(reference), "missing or extra rows"
    worst = 0.0
    for row in rows:
        ref = reference[row["source"]]
        assert row["status"] == ref["status"] == "ok"
        assert (row["width"], row["height"]) == (int(ref["width"]), int(ref["height"]))
        for column in ("score", "spread"):
            worst = max(worst, abs(row[column] - float(ref[column])))
    assert worst <= 1e-6, worst


def test_ray_rows_equal_loda_score(local_ray, micro, shards, reference, tmp_path):
    _root, inputs = shards
    out = tmp_path / "out"
    stats = score_to_directory(inputs, out, options(micro, files_per_task=2))
    assert (out / SUCCESS_NAME).exists()
    assert not list(out.glob(".part-*")), "a temporary part was left behind"
    rows = parquet_rows(out)
    assert_same_scores(rows, reference)
    assert (stats.images, stats.ok, stats.failed) == (len(reference), len(reference), 0)
    assert stats.summary(str(out)).startswith(f"scored {len(reference)} of {len(reference)} image")
    # Input order is kept, as loda-score keeps it.
    assert [r["source"] for r in rows] == list(reference)


def test_killed_actor_is_replaced_and_every_row_written_once(
    local_ray, micro, shards, reference, tmp_path, monkeypatch
):
    _root, inputs = shards
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_HOOK_ENV, str(marker))
    out = tmp_path / "out"
    stats = score_to_directory(inputs, out, options(micro, max_retries=2))
    assert marker.exists(), "the test hook did not kill an actor"
    pid = int(marker.read_text())
    assert pid != os.getpid()  # an actor process died, not this one
    assert (out / SUCCESS_NAME).exists()
    assert_same_scores(parquet_rows(out), reference)
    assert stats.images == len(reference)


def fd_free(error: str) -> str:
    """An error naming an open file names its descriptor number (``<_io.BufferedReader
    name=6>``), which depends on the process, in loda-score as here: compared without it."""
    return re.sub(r"name=\d+>", "name=N>", error)


def test_bad_input_corpus_gives_loda_score_error_rows(local_ray, micro, tmp_path):
    root = tmp_path / "corpus"
    expected = make_bad_corpus(root)
    ref_out = tmp_path / "ref.csv"
    r = loda_score(".", "-m", micro.onnx_path, "-o", ref_out, "--crops", CROPS, "-j", "2", cwd=root)
    assert r.returncode == 1, r.stderr
    ref = read_csv(ref_out)
    assert {s for s, row in ref.items() if row["status"] == "error"}  # the corpus has errors
    out = tmp_path / "out"
    old = os.getcwd()
    os.chdir(root)  # the same relative sources as loda-score's
    try:
        stats = score_to_directory(["."], out, options(micro, fmt="csv", files_per_task=4))
    finally:
        os.chdir(old)
    got = {s: row for s, (_status, row) in read_output(out).items()}
    assert sorted(got) == sorted(ref)
    for source, row in ref.items():
        mine = got[source]
        assert (mine["status"], fd_free(mine["error"])) == (row["status"], fd_free(row["error"]))
        assert (mine["width"], mine["height"]) == (row["width"], row["height"]), source
        if row["status"] == "ok":
            assert abs(float(mine["score"]) - float(row["score"])) <= 1e-6
    assert stats.failed == sum(row["status"] == "error" for row in ref.values())
    skipped = {source.removeprefix("./") for source, _why in stats.skipped}
    assert skipped >= {n for n, e in expected.items() if e == "skip"}


def test_resume_scores_only_what_is_missing(local_ray, micro, shards, reference, tmp_path):
    _root, inputs = shards
    out = tmp_path / "out"
    score_to_directory(inputs, out, options(micro, rows_per_file=5))
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 4  # 16 rows, 5 per file
    with pytest.raises(RayJobError, match="--resume"):
        score_to_directory(inputs, out, options(micro))
    # A run that died: its last part never got its final name, no _SUCCESS.
    lost = parts[-1]
    n_lost = len(parquet_rows_of(lost))
    lost.rename(out / (".part-" + lost.name.removeprefix("part-") + ".tmp"))
    (out / SUCCESS_NAME).unlink()
    stats = score_to_directory(inputs, out, options(micro, resume=True))
    assert stats.resumed == len(reference) - n_lost
    assert stats.images == n_lost
    assert not list(out.glob(".part-*"))
    assert (out / SUCCESS_NAME).exists()
    assert_same_scores(parquet_rows(out), reference)


def parquet_rows_of(part: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(part).to_pylist()


def test_cli_subprocess_jsonl_and_usage_errors(micro, shards, tmp_path):
    _root, inputs = shards
    out = tmp_path / "out"
    command = [sys.executable, "-m", "loda.runtime.ray_cli"]
    shard_uri = inputs[0].as_uri()  # the command takes URIs beside local paths
    r = subprocess.run(
        [*command, inputs[2], shard_uri, "-m", micro.onnx_path, "-o", out, "--format", "jsonl",
         "--crops", CROPS, "--num-cpus", "2", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "loda-score-ray: scored 10 of 10 image(s), 0 failed" in r.stderr
    assert (out / SUCCESS_NAME).exists()
    rows = read_output(out)
    assert len(rows) == 10
    assert sum(source.startswith(shard_uri + "::") for source in rows) == 6
    gone = subprocess.run(
        [*command, (tmp_path / "gone.tar").as_uri(), "-m", micro.onnx_path, "-o", tmp_path / "o3"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert gone.returncode == 2 and "input not found" in gone.stderr, gone.stderr
    missing = subprocess.run(
        [*command, tmp_path / "nope", "-m", micro.onnx_path, "-o", tmp_path / "o2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "input not found" in missing.stderr
    assert len([line for line in missing.stderr.splitlines() if line.strip()]) <= 3


def test_tar_member_bytes_survive_the_round_trip(local_ray, micro, tmp_path):
    """A member that is not an image decodes to loda-score's error, inside a shard."""
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("bad.jpg")
        data = b"not a jpeg"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    ref_out = tmp_path / "ref.csv"
    r = loda_score(shard, "-m", micro.onnx_path, "-o", ref_out, "-j", "0")
    assert r.returncode == 1
    stats = score_to_directory([str(shard)], tmp_path / "o", options(micro))
    rows = parquet_rows(tmp_path / "o")
    assert stats.failed == 1 and len(rows) == 1
    assert rows[0]["error"] == read_csv(ref_out)[f"{shard}::bad.jpg"]["error"]
    assert rows[0]["score"] is None


# -- INPUTs named by URI (runtime/ray_fs.py): file:// and a local S3 server ---------------------


def test_file_uris_give_the_rows_of_the_local_paths(local_ray, micro, shards, reference, tmp_path):
    _root, inputs = shards
    uris = [p.as_uri() for p in inputs]  # file:///tmp/...: pyarrow's LocalFileSystem
    out = tmp_path / "out"
    stats = score_to_directory(uris, out, options(micro, files_per_task=2))
    rows = parquet_rows(out)
    for row in rows:  # the key is the URI as given, extended as loda-score extends the path
        assert row["source"].startswith("file:///")
        row["source"] = row["source"].removeprefix("file://")
    assert_same_scores(rows, reference)
    assert stats.images == len(reference)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 server (moto's server mode) and a pyarrow S3FileSystem pointed at it."""
    pytest.importorskip("moto", reason="needs moto[server] (the dev extra)")
    import logging
    import socket

    from moto.server import ThreadedMotoServer
    from pyarrow.fs import S3FileSystem

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    fs = S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir("bkt")
    yield fs
    server.stop()


def upload(fs, local: Path, key: str) -> None:
    with fs.open_output_stream(key) as f:
        f.write(local.read_bytes())


def test_s3_shards_and_prefix_give_loda_score_rows(
    local_ray, micro, shards, reference, s3, tmp_path
):
    root, inputs = shards
    for p in [*inputs[:2], *sorted(inputs[2].iterdir())]:
        upload(s3, p, f"bkt/set/{p.relative_to(root).as_posix()}")
    uris = ["s3://bkt/set/shard-000000.tar", "s3://bkt/set/shard-000001.tar", "s3://bkt/set/loose"]
    out = tmp_path / "out"
    stats = score_to_directory(uris, out, options(micro, files_per_task=2, filesystem=s3))
    rows = parquet_rows(out)
    local = str(root)
    for row in rows:
        assert row["source"].startswith("s3://bkt/set/")
        row["source"] = local + "/" + row["source"].removeprefix("s3://bkt/set/")
    assert_same_scores(rows, reference)
    assert [r["source"] for r in rows] == list(reference)  # input order, as loda-score's
    assert stats.images == len(reference)


def test_s3_bad_input_corpus_and_uri_list_give_loda_score_error_rows(
    local_ray, micro, s3, tmp_path
):
    root = tmp_path / "corpus"
    make_bad_corpus(root)
    uploaded = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():  # an object store holds no links
            upload(s3, p, f"bkt/corpus/{p.relative_to(root).as_posix()}")
            uploaded.append(p.relative_to(root).as_posix())
    listing = tmp_path / "list.txt"
    listing.write_text(f"{root}/plain.jpg\n{root}/nope.jpg\n")
    upload(s3, listing, "bkt/list.txt")
    s3.create_dir("bkt/lists")
    with s3.open_output_stream("bkt/lists/l.txt") as f:
        f.write(b"s3://bkt/corpus/grey.jpg\ns3://bkt/gone.jpg\n")
    ref_out = tmp_path / "ref.csv"
    r = loda_score(root, f"@{listing}", "-m", micro.onnx_path, "-o", ref_out, "--crops", CROPS)
    assert r.returncode == 1, r.stderr
    ref = {s.removeprefix(f"{root}/"): row for s, row in read_csv(ref_out).items()}
    del ref["broken.jpg"]  # a symlink: not uploaded
    out = tmp_path / "out"
    stats = score_to_directory(
        ["s3://bkt/corpus", "@s3://bkt/lists/l.txt"], out, options(micro, fmt="csv", filesystem=s3)
    )
    got = {s.removeprefix("s3://bkt/corpus/"): row for s, (_st, row) in read_output(out).items()}
    assert (
        got.pop("s3://bkt/gone.jpg")["error"] == ref.pop("nope.jpg")["error"] == "input not found"
    )
    assert sorted(got) == sorted(ref)
    assert any(row["status"] == "error" for row in ref.values())
    for source, row in ref.items():
        mine = got[source]
        # messages name the row's source: the object's URI where loda-score names the file
        want = fd_free(row["error"]).replace(f"{root}/", "s3://bkt/corpus/")
        assert (mine["status"], fd_free(mine["error"])) == (row["status"], want), source
        assert (mine["width"], mine["height"]) == (row["width"], row["height"]), source
        if row["status"] == "ok":
            assert abs(float(mine["score"]) - float(row["score"])) <= 1e-6
    assert stats.failed == sum(row["status"] == "error" for row in ref.values()) + 1


def test_missing_uri_is_an_input_error(local_ray, micro, s3, tmp_path):
    from loda.runtime.inputs import InputError

    with pytest.raises(InputError, match=r"input not found: s3://bkt/no/such\.tar"):
        score_to_directory(["s3://bkt/no/such.tar"], tmp_path / "o", options(micro, filesystem=s3))


def s3_names(fs, prefix: str) -> list[str]:
    from pyarrow.fs import FileSelector

    infos = fs.get_file_info(FileSelector(prefix, allow_not_found=True, recursive=True))
    return sorted(i.path.removeprefix(prefix + "/") for i in infos if i.is_file)


def test_s3_output_parts_success_and_resume(local_ray, micro, shards, reference, s3, tmp_path):
    from loda.runtime.ray_fs import UriFiles

    _root, inputs = shards
    out = "s3://bkt/scores/run"
    score_to_directory(inputs, out, options(micro, rows_per_file=5, filesystem=s3))
    names = s3_names(s3, "bkt/scores/run")
    parts = [n for n in names if n.startswith("part-")]
    assert len(parts) == 4 and all(n.endswith(".parquet") for n in parts)  # 16 rows, 5 per part
    assert names == sorted([*parts, SUCCESS_NAME])  # nothing hidden left behind
    rows = [row for _s, (_st, row) in read_output(out, UriFiles(s3)).items()]
    assert_same_scores(rows, reference)
    with pytest.raises(RayJobError, match="--resume"):
        score_to_directory(inputs, out, options(micro, filesystem=s3))
    # A run that died: one part never published, a stale hidden upload, no _SUCCESS.
    lost = f"bkt/scores/run/{parts[-1]}"
    with s3.open_input_stream(lost) as f:
        data = f.read()
    s3.delete_file(lost)
    with s3.open_output_stream("bkt/scores/run/.part-99999-dead.parquet.tmp") as f:
        f.write(data[:100])
    s3.delete_file(f"bkt/scores/run/{SUCCESS_NAME}")
    stats = score_to_directory(inputs, out, options(micro, resume=True, filesystem=s3))
    import pyarrow.parquet as pq

    n_lost = pq.read_table(io.BytesIO(data)).num_rows
    assert stats.resumed == len(reference) - n_lost and stats.images == n_lost
    names = s3_names(s3, "bkt/scores/run")
    assert SUCCESS_NAME in names and not [n for n in names if n.startswith(".")]
    assert stats.parts == [f"{out}/{n}" for n in names if n.startswith("part-")][-1:]
    rows = [row for _s, (_st, row) in read_output(out, UriFiles(s3)).items()]
    assert_same_scores(rows, reference)


def test_s3_output_that_is_an_object_is_refused(local_ray, micro, shards, s3):
    _root, inputs = shards
    with s3.open_output_stream("bkt/taken") as f:
        f.write(b"x")
    with pytest.raises(RayJobError, match="is an object, not a folder"):
        score_to_directory(inputs, "s3://bkt/taken", options(micro, filesystem=s3))


def test_cpu_pool_defaults_and_limits():
    from loda.runtime.ray_job import MAX_CPU_ACTORS, cpu_pool

    # (actors, ONNX Runtime threads each, Ray CPUs each, Ray CPUs per read task)
    assert cpu_pool(2, None, None, None) == (2, 1, 0.5, 1.0)
    assert cpu_pool(16, None, None, None) == (MAX_CPU_ACTORS, 16 // MAX_CPU_ACTORS, 1.0, 1.0)
    assert cpu_pool(1, None, None, None) == (1, 1, 0.5, 0.5)
    assert cpu_pool(2, 1, None, None) == (1, 2, 1.0, 1.0)  # one actor: every core in it
    assert cpu_pool(4, 2, 3, 0.25) == (2, 3, 0.25, 1.0)  # given values are kept
    with pytest.raises(RayJobError, match="leave the read tasks"):
        cpu_pool(2, 2, None, 1.0)  # 2 x 1 CPU + a read task's 1 > 2: Ray would wait for ever
