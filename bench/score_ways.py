"""bench_score.py's ways of scoring the benchmark images; each returns per-image scores keyed
by file name, so every way can be compared with the PyTorch loop's."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import BenchError
from proctree import TreeMemory
from score_setup import member_key


@dataclass(frozen=True)
class Way:
    """One way of scoring the benchmark images (a row of the throughput table)."""

    name: str
    label: str


WAYS: tuple[Way, ...] = (
    Way("inference", "ORT inference alone (pre-made crops)"),
    Way("pipeline", "pipeline in-process (score_items)"),
    Way("loda-score", "loda-score, start-up excluded"),
    Way("loda-score-total", "loda-score, start to exit"),
    Way("torch-loop", "PyTorch loop (authors' style)"),
)


def infer_runner(scorer: Any, crops: dict[str, np.ndarray], batch: int) -> Callable:
    names = list(crops)
    flat = np.ascontiguousarray(np.concatenate([crops[n] for n in names]))
    batches = [flat[i : i + batch] for i in range(0, len(flat), batch)]
    counts = [len(crops[n]) for n in names]

    def run() -> dict[str, float]:
        scores = np.concatenate([scorer.backend.infer(b) for b in batches]).astype(np.float64)
        out, at = {}, 0
        for name, k in zip(names, counts, strict=True):
            out[name] = float(scores[at : at + k].mean())
            at += k
        return out

    return run


def pipeline_runner(scorer: Any, tar: Path, cfg: Any, jobs: int, csv_path: Path) -> Callable:
    from loda.runtime.inputs import iter_inputs
    from loda.runtime.output import ResultRow, ResultWriter
    from loda.runtime.pipeline import PipelineOptions, score_items

    options = PipelineOptions(cfg=cfg, jobs=jobs)

    def run() -> dict[str, float]:
        out: dict[str, float] = {}
        writer = ResultWriter(csv_path, "csv")

        def on_result(r: Any) -> None:
            writer.write(ResultRow.from_result(r))
            if not r.ok:
                raise BenchError(f"pipeline: {r.source}: {r.error}")
            out[member_key(r.source)] = r.score

        try:
            score_items(scorer, iter_inputs([str(tar)]), options, on_result)
        finally:
            writer.close()
        return out

    return run


def loda_score_command() -> list[str]:
    script = Path(sys.executable).with_name("loda-score")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "loda.runtime.cli"]


def loda_score_args(onnx_path: Path, tar: Path, csv_path: Path, threads: int, jobs: int):
    return [
        *loda_score_command(),
        "-m", str(onnx_path),
        str(tar),
        "-o", str(csv_path),
        "--overwrite",
        "--no-progress",
        "--device", "cpu",
        "--threads", str(threads),
        "-j", str(jobs),
    ]  # fmt: skip


_SUMMARY = re.compile(r"scored \d+ of \d+ image\(s\).* in ([0-9.]+)s:")


@dataclass
class CliRun:
    seconds: float  # wall, start to exit
    own_seconds: float | None  # loda-score's own timer (its summary line, 0.1 s resolution)
    scores: dict[str, float]
    memory: dict[str, Any] | None = None


def run_loda_score(
    onnx_path: Path,
    tar: Path,
    csv_path: Path,
    *,
    threads: int,
    jobs: int,
    monitor: bool = False,
) -> CliRun:
    cmd = loda_score_args(onnx_path, tar, csv_path, threads, jobs)
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        watcher = TreeMemory(proc.pid) if monitor else None
        if watcher is not None:
            watcher.start()
        code = proc.wait()
        seconds = time.perf_counter() - t0
        if watcher is not None:
            watcher.stop()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if code != 0:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise BenchError(f"loda-score exited {code} on {tar}: {tail}")
    match = _SUMMARY.search(stderr)
    scores: dict[str, float] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["status"] != "ok":
                raise BenchError(f"loda-score: {row['source']}: {row['error']}")
            scores[member_key(row["source"])] = float(row["score"])
    return CliRun(
        seconds=seconds,
        own_seconds=float(match.group(1)) if match else None,
        scores=scores,
        memory=None if watcher is None else watcher.result(),
    )


def torch_loop_runner(model: Any, files: Sequence[Path], cfg: Any) -> Callable:
    """The authors' evaluation style: one image at a time through
    :func:`loda.inference.score_image` (Pillow decode, the Resize(384) rule, 15 crops,
    normalise, eager FP32 without autograd, the mean of the crop scores)."""
    from loda.inference import score_image

    def run() -> dict[str, float]:
        return {path.name: score_image(model, path, cfg).score for path in files}

    return run


def overhead(seconds: float, inference_seconds: float) -> float:
    """The extra time over inference alone on the same crops, as a share of inference alone's
    time (0.05: 5% longer)."""
    return seconds / inference_seconds - 1


def max_abs_vs(scores: dict[str, float], reference: dict[str, float]) -> float:
    """Max per-image |score - reference| (:func:`loda.compare.compare_scores`, one score per
    image)."""
    from loda.compare import compare_scores

    if set(scores) != set(reference):
        raise BenchError(
            f"scored {len(scores)} images, the PyTorch loop {len(reference)}: the sets differ"
        )
    keys = sorted(reference)
    stats = compare_scores(
        [scores[k] for k in keys], [reference[k] for k in keys], crops_per_image=1
    )
    return stats.max_abs_image
