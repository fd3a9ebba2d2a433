"""The scoring job as a library (runtime/job.py) and the option declarations the two scoring
commands share (runtime/options.py). The command's behaviour end to end (exit codes, signals,
--resume after kill -9) is in test_runtime_score.py; here the job runs in this process.

Real model (loda_micro exported to ONNX), real demo images.
"""

from __future__ import annotations

import csv
import logging
import threading
from pathlib import Path

import pytest

from loda.runtime.job import ScoreSettings, SettingsError, run_score_job


@pytest.fixture(scope="module")
def images(micro) -> list[Path]:
    return sorted((micro.demo_dir / "images").glob("*.png"))[:6]


def _settings(micro, images, out: Path, **kw) -> ScoreSettings:
    return ScoreSettings(
        inputs=tuple(map(str, images)),
        model=str(micro.onnx_path),
        output=str(out),
        jobs=0,
        progress=False,
        **kw,
    )


def _sources(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row["source"] for row in csv.DictReader(f)]


def test_job_scores_logs_and_reports(micro, images, tmp_path, caplog, monkeypatch):
    for name in ("loda", "loda.runtime.job"):  # as a command may have left them: to caplog too
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    out = tmp_path / "scores.csv"
    with caplog.at_level(logging.INFO, logger="loda.runtime.job"):
        result = run_score_job(_settings(micro, images, out))
    assert result.outcome == "ok"
    assert result.rows == len(images) and result.failed_rows == 0
    assert _sources(out) == [str(p) for p in images]
    assert (tmp_path / "scores.csv.json").is_file()  # the run record beside the rows
    started = [r.getMessage() for r in caplog.records if r.name == "loda.runtime.job"]
    assert len(started) == 1 and started[0].startswith(f"model {micro.onnx_path.name} ")
    first = result.report()[0]
    assert first.startswith(f"scored {len(images)} of {len(images)} image(s), 0 failed in ")
    assert first.endswith(f"-> {out}")


def test_job_shards_then_resumes_to_the_whole(micro, images, tmp_path):
    out = tmp_path / "scores.csv"
    first = run_score_job(_settings(micro, images, out, shard=(0, 2)))
    assert first.outcome == "ok"
    assert first.rows + first.other_shards == len(images)
    rest = run_score_job(_settings(micro, images, out, resume=True))
    assert rest.outcome == "ok"
    assert rest.already == rest.resumed == first.rows
    assert rest.rows == len(images) - first.rows
    assert sorted(_sources(out)) == sorted(str(p) for p in images)
    assert f"{first.rows} already done, 0 of them failed" in rest.report()[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"resume": True, "overwrite": True}, "--resume and --overwrite exclude each other"),
        ({}, "exists: pass --resume"),
        ({"overwrite": True, "precision": "fp16"}, "--precision applies to the torch backend"),
    ],
)
def test_settings_errors_leave_the_output_as_it_was(micro, images, tmp_path, extra, message):
    out = tmp_path / "scores.csv"
    out.write_text("keep me\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=message):
        run_score_job(_settings(micro, images, out, **extra))
    assert out.read_text(encoding="utf-8") == "keep me\n"
    assert not (tmp_path / "scores.csv.json").exists()


def test_job_runs_outside_the_main_thread(micro, images, tmp_path):
    """Signal handlers can only be set in the main thread: elsewhere the job runs without its
    SIGTERM handler instead of failing."""
    out = tmp_path / "scores.csv"
    results, errors = [], []

    def work() -> None:
        try:
            results.append(run_score_job(_settings(micro, images[:2], out)))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not errors and len(results) == 1 and results[0].outcome == "ok"
    assert len(_sources(out)) == 2


# --------------------------------------------------------------------------------------------
# The two commands' options
# --------------------------------------------------------------------------------------------

SHARED = [
    "inputs",
    "model",
    "device",
    "threads",
    "crops",
    "layout",
    "seed",
    "batch_size",
    "max_pixels",
    "max_member_bytes",
]


def _params(command) -> dict:
    return {p.name: p for p in command.params}


def test_both_commands_list_their_options_and_share_the_common_ones():
    from loda.runtime.cli import score_command
    from loda.runtime.ray_cli import score_ray_command

    score, ray = _params(score_command), _params(score_ray_command)
    assert list(score) == [
        "inputs", "model", "output", "fmt", "backend", "cache_dir", "cuda_graph", "device",
        "threads", "precision", "crops", "layout", "decode", "seed", "jobs", "batch_size",
        "queue_size", "resume", "overwrite", "shard", "max_pixels", "max_member_bytes",
        "no_progress",
    ]  # fmt: skip
    assert list(ray) == [
        "inputs", "model", "output", "fmt", "backend", "device", "threads", "crops", "layout",
        "seed", "batch_size", "resume", "overwrite", "max_pixels", "max_member_bytes",
        "ray_address", "num_cpus", "actors", "gpus_per_actor", "cpus_per_actor",
        "files_per_task", "max_retries", "rows_per_file", "no_progress",
    ]  # fmt: skip
    for name in SHARED:
        a, b = score[name], ray[name]
        assert (a.opts, a.default, a.required, str(a.type)) == (
            b.opts,
            b.default,
            b.required,
            str(b.type),
        ), name
        assert getattr(a, "help", None) == getattr(b, "help", None), name
