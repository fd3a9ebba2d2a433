"""loda.runtime.output: results round-trip, survive a kill and resume without duplicates."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest

from loda.runtime.output import (
    COLUMNS,
    OutputError,
    ResultRow,
    ResultWriter,
    format_for,
    read_done,
    read_statuses,
    repair_tail,
)

TRICKY = [
    "plain.jpg",
    "comma,name.jpg",
    'quo"te".jpg',
    "new\nline.jpg",
    "carriage\rreturn.jpg",
    "ünïcødé 画像 🙂.png",
    "caf\udce9.jpg",  # os.fsdecode(b"caf\xe9.jpg"): not UTF-8 on disk
    "a.tar::../escape.jpg",
    " spaces .jpg ",
]


def rows_for(names: list[str]) -> list[ResultRow]:
    rows = []
    for i, name in enumerate(names):
        if i % 3 == 2:
            rows.append(ResultRow(name, status="error", error=f"cannot decode {name!r}: boom"))
        else:
            score = float(np.float32(0.1 + i / 7))  # a float32-derived double
            rows.append(ResultRow(name, score, score / 3, None if i % 2 else 4.25, 640 + i, 480))
    return rows


def parse(path, fmt) -> list[dict]:
    """Read a result file back with the standard library only."""
    if fmt == "csv":
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return list(csv.DictReader(f))
    with open(path, encoding="utf-8") as f:  # strict: a JSONL result is valid UTF-8
        return [json.loads(line) for line in f]


def as_text(value) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_round_trip_of_tricky_names(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    rows = rows_for(TRICKY)
    with ResultWriter(path, fmt) as writer:
        for row in rows:
            writer.write(row)
    assert read_done(path, fmt) == set(TRICKY)
    back = parse(path, fmt)
    assert len(back) == len(rows)
    for got, row in zip(back, rows, strict=True):
        assert list(got) == list(COLUMNS)
        for column in COLUMNS:
            want = getattr(row, column)
            assert got[column] == (as_text(want) if fmt == "csv" else want), column
        if row.score is not None:
            assert float(got["score"]) == row.score  # exact, not 9 digits


def test_non_utf8_names_are_raw_bytes_in_csv_and_escapes_in_jsonl(tmp_path):
    for fmt in ("csv", "jsonl"):
        with ResultWriter(tmp_path / f"o.{fmt}", fmt) as writer:
            writer.write(ResultRow("caf\udce9.jpg", 1.0))
    assert b"caf\xe9.jpg" in (tmp_path / "o.csv").read_bytes()
    jsonl = (tmp_path / "o.jsonl").read_bytes()
    assert b"caf\\udce9.jpg" in jsonl
    jsonl.decode("utf-8")  # valid UTF-8


def test_jsonl_nulls_and_one_line_errors(tmp_path):
    path = tmp_path / "o.jsonl"
    with ResultWriter(path, "jsonl") as writer:
        writer.write(ResultRow("a.jpg", float("nan"), width=3, height=2))
        writer.write(ResultRow("b.jpg", status="error", error="line one\nline two"))
    a, b = parse(path, "jsonl")
    assert a == dict(
        source="a.jpg", score=None, spread=None, mos=None, width=3, height=2, status="ok", error=""
    )
    assert b["error"] == "line one line two"
    with pytest.raises(ValueError, match="status"), ResultWriter(tmp_path / "x.csv") as writer:
        writer.write(ResultRow("c.jpg", status="maybe"))


def test_header_written_once_across_appends(tmp_path):
    path = tmp_path / "deep" / "er" / "out.csv"  # parents are created
    with ResultWriter(path) as writer:
        writer.write(ResultRow("a.jpg", 1.0))
    for name in ("b.jpg", "c.jpg"):
        with ResultWriter(path, append=True) as writer:
            writer.write(ResultRow(name, 2.0))
    text = path.read_text()
    assert text.count("source,score") == 1
    assert [r["source"] for r in parse(path, "csv")] == ["a.jpg", "b.jpg", "c.jpg"]
    # Append to a missing or empty file writes the header too; a plain writer overwrites.
    for fresh in (tmp_path / "new.csv", tmp_path / "empty.csv"):
        if fresh.name == "empty.csv":
            fresh.write_bytes(b"")
        with ResultWriter(fresh, append=True) as writer:
            writer.write(ResultRow("z.jpg", 0.5))
        assert [r["source"] for r in parse(fresh, "csv")] == ["z.jpg"]
    with ResultWriter(path) as writer:
        writer.write(ResultRow("only.jpg", 1.0))
    assert [r["source"] for r in parse(path, "csv")] == ["only.jpg"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_truncated_tail_is_ignored_then_repaired_without_duplicates(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # hundreds of repairs; fsync is tested below
    path = tmp_path / f"out.{fmt}"
    names = ["one.jpg", "two,2.jpg", 'three\n"3".jpg']  # the last record spans two lines in CSV
    rows = rows_for(names)
    with ResultWriter(path, fmt) as writer:
        for row in rows:
            writer.write(row)
    full = path.read_bytes()
    with ResultWriter(tmp_path / "two.tmp", fmt) as writer:
        for row in rows[:2]:
            writer.write(row)
    complete_two = (tmp_path / "two.tmp").read_bytes()
    assert full.startswith(complete_two)
    for cut in range(len(complete_two), len(full)):  # every kill point inside the last row
        path.write_bytes(full[:cut])
        assert read_done(path, fmt) == set(names[:2]), cut
        assert repair_tail(path, fmt) == cut - len(complete_two), cut
        assert path.read_bytes() == complete_two

    path.write_bytes(full[: len(complete_two) + 7])  # killed mid-row
    with ResultWriter(path, fmt, append=True) as writer:  # --resume: repair, then go on
        for row in rows[2:] + rows_for(["four.jpg"]):
            writer.write(row)
    assert [r["source"] for r in parse(path, fmt)] == [*names, "four.jpg"]
    assert path.read_bytes().startswith(complete_two)
    assert repair_tail(path, fmt) == 0


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_fields_over_the_csv_module_limit_are_read_back(tmp_path, fmt):
    long_name = "x" * (csv.field_size_limit() + 10_000)  # e.g. a junk line of an @list
    path = tmp_path / f"out.{fmt}"
    with ResultWriter(path, fmt) as writer:
        writer.write(ResultRow("a.jpg", 1.0))
        writer.write(ResultRow(long_name, status="error", error="input not found"))
    limit = csv.field_size_limit()
    assert read_statuses(path, fmt) == {"a.jpg": "ok", long_name: "error"}
    assert read_done(path, fmt) == {"a.jpg", long_name}
    assert csv.field_size_limit() == limit  # restored for other readers


def test_repair_tail_cuts_only_the_last_incomplete_record(tmp_path):
    path = tmp_path / "out.jsonl"
    with ResultWriter(path, "jsonl") as writer:
        writer.write(ResultRow("a.jpg", 1.0))
        writer.write(ResultRow("b.jpg", 2.0))
    good = path.read_bytes()
    path.write_bytes(good + b'{"source": "c.jpg", "sco\n' + b"\x00" * 300)  # power-loss garbage
    assert repair_tail(path, "jsonl") == 25 + 300
    assert path.read_bytes() == good
    # A line that does not parse in the middle is not a result (resume rescores it).
    lines = good.splitlines(keepends=True)
    path.write_bytes(lines[0] + b"garbage\n" + lines[1])
    assert read_done(path, "jsonl") == {"a.jpg", "b.jpg"}
    # Only a partial header: cut to nothing, and the writer starts over with a header.
    csv_path = tmp_path / "out.csv"
    csv_path.write_bytes(b"source,sc")
    assert read_done(csv_path, "csv") == set()
    with ResultWriter(csv_path, append=True) as writer:
        writer.write(ResultRow("a.jpg", 1.0))
    assert [r["source"] for r in parse(csv_path, "csv")] == ["a.jpg"]


def test_foreign_files_are_refused_and_left_untouched(tmp_path):
    cases = {
        "other.csv": ("csv", b"path,quality\nx.jpg,3\npartial"),
        "one_line.csv": ("csv", b"my precious notes without newline"),
        "other.jsonl": ("jsonl", b'{"path": "x.jpg"}\n{"pa'),
        "text.jsonl": ("jsonl", b"hello\n"),
    }
    for name, (fmt, content) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        for attempt in (
            lambda: ResultWriter(path, fmt, append=True),  # noqa: B023
            lambda: read_done(path, fmt),  # noqa: B023
            lambda: repair_tail(path, fmt),  # noqa: B023
        ):
            with pytest.raises(OutputError) as info:
                attempt()
            assert "\n" not in str(info.value)
        assert path.read_bytes() == content, name


def test_fsync_cadence(tmp_path, monkeypatch):
    path = tmp_path / "out.csv"
    synced_rows: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd):
        real_fsync(fd)
        if path.exists() and os.fstat(fd).st_ino == path.stat().st_ino:
            data = path.read_bytes()  # what a crash right now would leave
            assert data.endswith(b"\n")
            synced_rows.append(data.count(b"\n") - 1)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    writer = ResultWriter(path, fsync_every=3, fsync_seconds=1e9)
    for i in range(7):
        writer.write(ResultRow(f"{i}.jpg", float(i)))
    assert synced_rows == [3, 6]
    writer.close()
    assert synced_rows == [3, 6, 7]
    writer.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        writer.write(ResultRow("late.jpg"))

    synced_rows.clear()
    with ResultWriter(path, fsync_every=1000, fsync_seconds=0) as writer:  # time-based
        writer.write(ResultRow("a.jpg", 1.0))
        writer.write(ResultRow("b.jpg", 1.0))
        assert synced_rows == [1, 2]


def test_stdout_writer(capsysbinary):
    with ResultWriter("-") as writer:
        writer.write(ResultRow("a,b.jpg", 0.5, 0.25, None, 2, 1))
        writer.write(ResultRow("caf\udce9.jpg", status="error", error="bad"))
    print("still open")
    out = capsysbinary.readouterr().out
    assert out == (
        b"source,score,spread,mos,width,height,status,error\r\n"
        b'"a,b.jpg",0.5,0.25,,2,1,ok,\r\n'
        b"caf\xe9.jpg,,,,,,error,bad\r\n"
        b"still open\n"
    )
    with ResultWriter(None, "jsonl") as writer:
        writer.write(ResultRow("a.jpg", 1.0))
    assert json.loads(capsysbinary.readouterr().out)["source"] == "a.jpg"
    with pytest.raises(OutputError, match="stdout"):
        ResultWriter("-", append=True)
    with pytest.raises(OutputError, match="stdout"):
        read_done("-", "csv")


def test_stdout_without_bytes_underneath(monkeypatch):
    fake = io.StringIO()
    monkeypatch.setattr("sys.stdout", fake)
    with ResultWriter(None) as writer:
        writer.write(ResultRow("a.jpg", 1.0))
    assert fake.getvalue().splitlines()[1] == "a.jpg,1.0,,,,,ok,"


def test_format_for_and_missing_files(tmp_path):
    assert format_for("out.jsonl", None) == "jsonl"
    assert format_for("OUT.NDJSON", None) == "jsonl"
    assert format_for("out.csv", None) == "csv"
    assert format_for("out.txt", None) == "csv"
    assert format_for(None, None) == format_for("-", None) == "csv"
    assert format_for("out.csv", "jsonl") == "jsonl"
    with pytest.raises(OutputError, match="unknown output format"):
        format_for("out.csv", "xml")
    assert read_done(tmp_path / "none.csv", "csv") == set()
    assert repair_tail(tmp_path / "none.csv", "csv") == 0
