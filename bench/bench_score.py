"""Images per second of ``loda-score`` end to end, beside inference alone and a PyTorch loop.

Measures, in ONE run, on the same images, with the same inference thread count for everybody
(issue 5, "Performance"):

1. Throughput, after warm-up, in interleaved rounds (the order rotates from round to round, so
   machine noise hits every way alike; medians are reported):

   - ``inference``: ``Scorer.open(onnx).backend.infer`` (ONNX Runtime FP32, CPU) on the crops of
     the benchmark images, made beforehand, in batches of 60 crops: the ceiling of the pipeline;
   - ``pipeline``: :func:`loda.runtime.pipeline.score_items` in this process on the tar (worker
     processes decode, the main thread infers, rows go to a CSV): ``loda-score`` without the
     interpreter start-up;
   - ``loda-score``: the command as a subprocess on the tar (``-o`` a CSV), wall time from start
     to exit; its start-up (interpreter, imports, model load) is measured on its own as
     ``loda-score`` on an empty archive and reported, and subtracted for the goal;
   - ``torch-loop``: the authors' evaluation style: one image at a time, decode with Pillow and
     resize / cut 15 crops with :mod:`loda.preprocess` (the torchvision rule, bit-exact),
     normalise, ``model(x)`` in eager FP32 under ``torch.no_grad()``.

   Every way's per-image scores are compared with the PyTorch loop's (max |dscore|), so a fast
   but wrong way shows.
2. Decode: images/s of :func:`loda.runtime.scorer.prepare_image` (decode + resize + 15 crops)
   for a 1024x768 JPEG and a 512x384 PNG, per worker (in this process) and with ``-j`` worker
   processes (``loda-score``'s own ``DecodePool`` running ``prepare_image``, the crops returned to
   the parent).
3. Memory: peak resident memory of ``loda-score`` and all its processes (the worker pool and
   the fork server; polled from ``/proc``) for a tar of M and of 4M images, with ``loda_micro``
   so this part is quick; the pipeline's queue bounds what is in flight, so both should match.

Images: the demo set's reference photographs (scikit-image and scikit-learn, see
:mod:`loda.data.demo`) fitted to 1024x768 (saved as JPEG, quality 90) and 512x384 (PNG), in
``--out``. Models: a random-init checkpoint of ``--config`` and its FP32 ONNX export, made in
``--out`` and reused while their inputs are unchanged (``artifacts.json``). Random weights do
not change the speed. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/*.py, run as a script

import _common
from _common import Artifacts, BenchError, log

SCHEMA = 1
DEFAULT_OUT = Path("out/bench/score")
DEFAULT_IMAGES = 8  # loda_b16 infers ~2-3 crops/s on 2 cores: 8 x 15 crops is ~1 min a pass
DEFAULT_REPEATS = 3
DEFAULT_DECODE_IMAGES = 24
DEFAULT_MEMORY_IMAGES = 40  # and 4x as many; at least MEMORY_MIN_QUEUES queues
MEMORY_MIN_QUEUES = 2  # the smaller archive must fill the queue and then run at steady state
MEMORY_CONFIG = "loda_micro"
MEMORY_FACTOR = 4
MEMORY_POLL_SECONDS = 0.05
SETTLE_SECONDS = 0.3  # idle gap before each timed pass: spinning threads of the last one sleep
QUICK = {"images": 2, "repeats": 1, "decode_images": 4, "memory_images": 4}
SECTIONS = ("throughput", "decode", "memory")

# The goals of issue 5, judged on the medians.
GOAL_MAX_OVERHEAD = 0.05
GOAL_X_TORCH_LOOP = 1.4
GOAL_MEMORY_FLAT = 0.10  # peak of the 4x archive at most 10% above the 1x one


@dataclass(frozen=True)
class ImageFormat:
    """One benchmark image format; this table drives the image sets and the decode table."""

    name: str
    label: str
    size: tuple[int, int]  # width, height
    suffix: str
    save: tuple[tuple[str, Any], ...]


FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("jpeg", "JPEG 1024x768", (1024, 768), ".jpg", (("quality", 90),)),
    ImageFormat("png", "PNG 512x384", (512, 384), ".png", ()),
)
SCORED_FORMAT = FORMATS[0]  # what the throughput and memory parts score (KonIQ's size)


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


# --------------------------------------------------------------------------------------------
# Models (made once, reused while their inputs are unchanged: _common.Artifacts)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    config: str
    checkpoint: Path | None  # None: only the ONNX file was given (memory part)
    onnx: Path
    source: str  # provenance of the weights
    preprocess: Any  # loda.preprocess.PreprocessConfig
    precision: str = "fp32"  # of the ONNX graph (loda.precision)


def model_from_onnx(path: Path) -> Model:
    """A model known only by its ONNX file (its LoDa record travels in the metadata)."""
    import onnx

    from loda.artifacts import read_onnx_metadata
    from loda.metadata import CheckpointMeta

    if not path.is_file():
        raise BenchError(f"no ONNX file at {path}")
    record = read_onnx_metadata(onnx.load(str(path), load_external_data=False)).get("loda")
    if not record:
        raise BenchError(f"{path} carries no LoDa metadata: not a loda-export file")
    meta = CheckpointMeta.from_json(record)
    return Model(meta.model.name, None, path, meta.provenance.get("source", "?"), meta.preprocess)


def _export(checkpoint: Path, onnx_path: Path) -> None:
    from loda.export.onnx import export_onnx

    # Not verified against PyTorch here: the throughput part compares every way's scores with
    # the PyTorch loop's on the benchmark images instead.
    export_onnx(checkpoint, onnx_path, verify=False, log=log)


def ensure_model(
    artifacts: Artifacts,
    folder: Path,
    config: str,
    seed: int,
    checkpoint: Path | None = None,
    onnx_path: Path | None = None,
    precisions: Sequence[str] = ("fp32",),
) -> Model:
    """A checkpoint and its FP32 ONNX export (or, given, a graph of one of ``precisions``):
    given, or made (random init) in ``folder``."""
    from loda.export.onnx import DEFAULT_OPSET, sha256_file
    from loda.metadata import read_safetensors_metadata

    if checkpoint is not None:
        if not checkpoint.is_file():
            raise BenchError(f"no checkpoint at {checkpoint}")
        ckpt_sha = sha256_file(checkpoint)
    else:
        checkpoint = folder / f"{config}.safetensors"
        ckpt_sha = artifacts.ensure(
            checkpoint,
            {"config": config, "seed": seed, "kind": "random-init"},
            lambda: _common.make_checkpoint(config, seed, checkpoint),
        )
    meta, _ = read_safetensors_metadata(checkpoint)
    precision = "fp32"
    if onnx_path is not None:
        precision = _common.check_onnx_source(onnx_path, ckpt_sha, precisions=precisions)
    else:
        onnx_path = folder / f"{checkpoint.stem}.onnx"
        artifacts.ensure(
            onnx_path,
            {"checkpoint_sha256": ckpt_sha, "opset": DEFAULT_OPSET, "precision": "fp32"},
            lambda: _export(checkpoint, onnx_path),
        )
    return Model(
        meta.model.name,
        checkpoint,
        onnx_path,
        meta.provenance.get("source", "?"),
        meta.preprocess,
        precision,
    )


# --------------------------------------------------------------------------------------------
# Images and archives
# --------------------------------------------------------------------------------------------


def make_images(folder: Path, fmt: ImageFormat, n: int) -> list[Path]:
    """``n`` reference photographs fitted to ``fmt.size`` (cycling through the references)."""
    from PIL import Image

    from loda.data.demo import list_references, load_reference

    refs = list_references()
    if not refs:
        raise BenchError("no reference photographs: pip install 'loda[demo]' (scikit-image)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ref = refs[i % len(refs)]
        path = folder / f"{i:04d}_{ref}{fmt.suffix}"
        if not path.is_file():
            Image.fromarray(load_reference(ref, fmt.size)).save(path, **dict(fmt.save))
        paths.append(path)
    return paths


def make_tar(path: Path, files: Sequence[Path], n: int) -> Path:
    """An uncompressed tar of ``n`` members cycling through ``files`` (unique member names)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            f = files[i % len(files)]
            tar.add(f, arcname=f.name if n <= len(files) else f"{i:05d}_{f.name}")
    return path


def member_key(source: str) -> str:
    """``archive.tar::0001_x.jpg`` and ``dir/0001_x.jpg`` -> ``0001_x.jpg``."""
    return Path(source.rpartition("::")[2]).name


# --------------------------------------------------------------------------------------------
# The ways of scoring (each returns per-image scores keyed by file name)
# --------------------------------------------------------------------------------------------


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
    import torch

    from loda.preprocess import normalize, preprocess_image

    def run() -> dict[str, float]:
        out = {}
        for path in files:
            crops = preprocess_image(path, cfg)  # Pillow decode, Resize(384) rule, 15 crops
            x = torch.from_numpy(normalize(crops, cfg.mean, cfg.std))
            with torch.no_grad():
                out[path.name] = float(model(x).double().mean())
        return out

    return run


def time_ways(
    runners: dict[str, Callable[[], Any]], repeats: int, settle: float
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds of each runner per round, rounds in rotating order; each runner's last result."""
    names = list(runners)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, Any] = {}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            time.sleep(settle)
            t0 = time.perf_counter()
            results[name] = runners[name]()
            seconds[name].append(time.perf_counter() - t0)
        log(f"round {r + 1}/{repeats}: " + ", ".join(f"{n} {seconds[n][-1]:.2f}s" for n in names))
    return seconds, results


def overhead(seconds: float, inference_seconds: float) -> float:
    """The extra time over inference alone on the same crops, as a share of inference alone's
    time (0.05: 5% longer)."""
    return seconds / inference_seconds - 1


def _max_abs(scores: dict[str, float], reference: dict[str, float]) -> float:
    if set(scores) != set(reference):
        raise BenchError(
            f"scored {len(scores)} images, the PyTorch loop {len(reference)}: the sets differ"
        )
    return max(abs(scores[k] - reference[k]) for k in reference)


def run_throughput(args: argparse.Namespace, model: Model, out: Path) -> dict[str, Any]:
    import torch

    from loda.checkpoint import load_checkpoint
    from loda.runtime.pipeline import PipelineOptions
    from loda.runtime.scorer import Scorer, prepare_image

    threads = args.threads
    torch.set_num_threads(threads)
    files = make_images(out / "images" / SCORED_FORMAT.name, SCORED_FORMAT, args.images)
    tar = make_tar(out / f"images_{args.images}.tar", files, args.images)
    empty = make_tar(out / "empty.tar", [], 0)
    scratch = out / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)

    log(f"opening {model.onnx} in ONNX Runtime (CPU, {threads} threads)")
    scorer = Scorer.open(model.onnx, device="cpu", threads=threads)
    cfg = scorer.config()
    log(f"loading {model.checkpoint} in PyTorch (eager fp32, {threads} threads)")
    eager, _ = load_checkpoint(model.checkpoint)
    crops = {f.name: prepare_image(f, cfg, name=f.name).crops for f in files}

    own_seconds: list[float | None] = []  # loda-score's own timer, per timed run on the tar

    def cli(tar_path: Path, record: bool = False) -> Callable[[], CliRun]:
        def run() -> CliRun:
            result = run_loda_score(
                model.onnx,
                tar_path,
                scratch / "loda_score.csv",
                threads=threads,
                jobs=args.score_jobs,
            )
            if record:
                own_seconds.append(result.own_seconds)
            return result

        return run

    runners: dict[str, Callable[[], Any]] = {
        "inference": infer_runner(scorer, crops, scorer.batch_size),
        "pipeline": pipeline_runner(scorer, tar, cfg, args.score_jobs, scratch / "pipeline.csv"),
        "loda-score": cli(tar, record=True),
        "loda-score-startup": cli(empty),
        "torch-loop": torch_loop_runner(eager, files, cfg),
    }

    # Warm-up at the timed shapes: one full batch of crops (ONNX Runtime plans per shape).
    per_batch = max(1, -(-scorer.batch_size // cfg.num_crops))  # images per full batch
    log(
        f"warm-up: every way once on {per_batch} image(s) (a full batch of "
        f"{scorer.batch_size} crops; loda-score: once on the empty archive)"
    )
    some = make_tar(scratch / "warmup.tar", files[:per_batch], per_batch)
    with torch.no_grad():
        eager(torch.zeros(1, 3, cfg.crop_size, cfg.crop_size))
    warm = np.concatenate([crops[f.name] for f in files[:per_batch]])[: scorer.batch_size]
    scorer.backend.infer(warm)
    pipeline_runner(scorer, some, cfg, args.score_jobs, scratch / "warmup.csv")()
    runners["loda-score-startup"]()
    torch_loop_runner(eager, files[:1], cfg)()

    n_crops = sum(len(c) for c in crops.values())
    log(
        f"timing {len(runners)} ways on {len(files)} images ({n_crops} crops), {args.repeats} rounds"
    )
    seconds, results = time_ways(runners, args.repeats, args.settle)
    scorer.close()

    med = {name: statistics.median(s) for name, s in seconds.items()}
    startup = med["loda-score-startup"]
    cli_excl = med["loda-score"] - startup
    excluded_by = "wall time minus the start-up median"
    own = [x for x in own_seconds if x is not None]
    if cli_excl <= 0 and own:
        # Start-up noise larger than the run itself (tiny --quick runs): fall back on the
        # command's own timer around its pipeline (0.1 s resolution).
        cli_excl = statistics.median(own)
        excluded_by = "loda-score's own timer (start-up median exceeded the run)"
    if cli_excl <= 0:
        raise BenchError("loda-score start-up took longer than the run: score more --images")
    per_way = {
        "inference": (med["inference"], seconds["inference"], results["inference"]),
        "pipeline": (med["pipeline"], seconds["pipeline"], results["pipeline"]),
        "loda-score": (cli_excl, None, results["loda-score"].scores),
        "loda-score-total": (
            med["loda-score"],
            seconds["loda-score"],
            results["loda-score"].scores,
        ),
        "torch-loop": (med["torch-loop"], seconds["torch-loop"], results["torch-loop"]),
    }
    n = len(files)
    torch_rate = n / med["torch-loop"]
    rows = []
    for way in WAYS:
        sec, rounds, scores = per_way[way.name]
        rate = n / sec if sec > 0 else float("inf")
        rows.append(
            {
                "name": way.name,
                "label": way.label,
                "median_seconds": sec,
                "seconds_per_round": rounds,
                "spread_pct": None
                if rounds is None
                else 100 * (max(rounds) - min(rounds)) / statistics.median(rounds),
                "images_per_s": rate,
                "crops_per_s": rate * cfg.num_crops,
                "overhead_vs_inference": overhead(sec, med["inference"]),
                "overhead_seconds": sec - med["inference"],
                "x_torch_loop": rate / torch_rate,
                "max_abs_vs_torch_loop": _max_abs(scores, results["torch-loop"]),
            }
        )
    by_name = {r["name"]: r for r in rows}
    queue = PipelineOptions(cfg=cfg, jobs=args.score_jobs).queue_size(scorer.batch_size)
    return {
        "images": n,
        "format": SCORED_FORMAT.label,
        "crops_per_image": cfg.num_crops,
        "batch_crops": scorer.batch_size,
        "threads": threads,
        "score_jobs": args.score_jobs,
        "queue_images": queue,
        "tar": str(tar),
        "tar_mb": tar.stat().st_size / 1e6,
        "command": " ".join(
            loda_score_args(model.onnx, tar, Path("OUT.csv"), threads, args.score_jobs)
        ),
        "startup": {
            "median_seconds": startup,
            "seconds_per_round": seconds["loda-score-startup"],
            "what": "loda-score on an empty tar: interpreter, imports, ONNX Runtime session",
        },
        "loda_score_own_seconds_per_round": own_seconds,
        "start_up_excluded_by": excluded_by,
        "ways": rows,
        "goals": [
            _goal(
                f"pipeline overhead <= {GOAL_MAX_OVERHEAD:.0%} (loda-score end to end, start-up "
                "excluded, vs inference alone)",
                by_name["loda-score"]["overhead_vs_inference"],
                GOAL_MAX_OVERHEAD,
                f"{100 * by_name['loda-score']['overhead_vs_inference']:.1f}% (in-process "
                f"pipeline {100 * by_name['pipeline']['overhead_vs_inference']:.1f}%, with "
                f"start-up {100 * by_name['loda-score-total']['overhead_vs_inference']:.1f}%)",
                higher_is_better=False,
            ),
            _goal(
                f"loda-score >= {GOAL_X_TORCH_LOOP}x the PyTorch loop (images/s, start-up "
                "excluded)",
                by_name["loda-score"]["x_torch_loop"],
                GOAL_X_TORCH_LOOP,
                f"{by_name['loda-score']['x_torch_loop']:.2f}x (with start-up "
                f"{by_name['loda-score-total']['x_torch_loop']:.2f}x)",
            ),
        ],
    }


def _not_judged(goal: dict[str, Any], why: str) -> None:
    """Report ``goal``'s measurement without a verdict; ``why`` is appended to it."""
    goal["passed"] = None
    goal["measured"] += why


def _goal(
    goal: str, value: float, threshold: float, measured: str, *, higher_is_better: bool = True
) -> dict[str, Any]:
    passed = value >= threshold if higher_is_better else value <= threshold
    return {
        "goal": goal,
        "value": value,
        "threshold": threshold,
        "measured": measured,
        "passed": bool(passed),
    }


# --------------------------------------------------------------------------------------------
# Decode
# --------------------------------------------------------------------------------------------


def _rounds(run: Callable[[], Any], repeats: int, settle: float) -> list[float]:
    seconds = []
    for _ in range(repeats):
        time.sleep(settle)
        t0 = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - t0)
    return seconds


def run_decode(args: argparse.Namespace, model: Model, out: Path) -> dict[str, Any]:
    from loda.preprocess import DEFAULT_MAX_PIXELS
    from loda.runtime.pipeline import DecodePool
    from loda.runtime.scorer import prepare_image

    cfg = model.preprocess
    prepare = functools.partial(prepare_image, cfg=cfg, name="bench")
    sets = {f.name: make_images(out / "images" / f.name, f, args.decode_images) for f in FORMATS}
    inline: dict[str, list[float]] = {}
    for fmt in FORMATS:
        files = sets[fmt.name]
        prepare(files[0])  # warm-up
        inline[fmt.name] = _rounds(
            lambda f=files: [prepare(x) for x in f], args.repeats, args.settle
        )
        rate = len(files) / statistics.median(inline[fmt.name])
        log(f"decode {fmt.label}: {rate:.1f} images/s in one process")

    def through(pool: DecodePool, files: list[Path]) -> None:
        futures = [pool.submit(str(f), str(f), None) for f in files]
        for future in futures:
            crops, _, _, error, _cpu_seconds = future.result()
            assert error is None and crops.shape[0] == cfg.num_crops, error

    pooled: dict[str, dict[int, list[float]]] = {f.name: {} for f in FORMATS}
    for jobs in args.jobs:
        # loda-score's own decode workers (round-robin, one private pipe per process)
        with DecodePool(jobs, (cfg.to_dict(), None, DEFAULT_MAX_PIXELS)) as pool:
            through(pool, sets[FORMATS[0].name][:1] * jobs)  # start and warm them
            for fmt in FORMATS:
                files = sets[fmt.name]
                runs = _rounds(lambda f=files: through(pool, f), args.repeats, args.settle)
                pooled[fmt.name][jobs] = runs
                log(f"decode {fmt.label}: {len(files) / statistics.median(runs):.1f} images/s "
                    f"with -j {jobs}")  # fmt: skip

    rows = []
    for fmt in FORMATS:
        files = sets[fmt.name]
        n = len(files)
        scaling = [
            {"jobs": jobs, "seconds_per_round": runs, "images_per_s": n / statistics.median(runs)}
            for jobs, runs in pooled[fmt.name].items()
        ]
        one = next((s["images_per_s"] for s in scaling if s["jobs"] == 1), None)
        for s in scaling:
            s["x_one_worker"] = None if one is None else s["images_per_s"] / one
            s["efficiency"] = None if one is None else s["images_per_s"] / (one * s["jobs"])
        rows.append(
            {
                "format": fmt.name,
                "label": fmt.label,
                "images": n,
                "mean_file_kb": sum(f.stat().st_size for f in files) / n / 1e3,
                "per_worker_images_per_s": n / statistics.median(inline[fmt.name]),
                "per_worker_seconds_per_round": inline[fmt.name],
                "scaling": scaling,
            }
        )
    return {
        "what": "loda.runtime.scorer.prepare_image: decode + resize (short side 384) + "
        f"{cfg.num_crops} {cfg.layout} crops; per worker in this process, -j N through "
        "loda-score's decode workers (loda.runtime.pipeline.DecodePool, forkserver) reading "
        "files and returning the crops",
        "formats": rows,
    }


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        kids[int(stat.rsplit(b")", 1)[1].split()[1])].append(int(entry.name))
    return kids


def _kb(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    found[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return found


class TreeMemory:
    """Polls a process and all its descendants from ``/proc``: the peak of their summed
    resident memory (RSS, and PSS which counts shared pages once) and each one's own
    high-water mark (``VmHWM``)."""

    def __init__(self, root: int, interval: float = MEMORY_POLL_SECONDS) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.hwm_kb: dict[int, int] = {}
        self.max_processes = 0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        kids = _children()
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(kids.get(pid, ()))
        rss = pss = 0
        alive = 0
        for pid in tree:
            status = _kb(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))
            if "VmRSS" not in status:
                continue  # gone, or a zombie
            alive += 1
            rss += status["VmRSS"]
            pss += _kb(f"/proc/{pid}/smaps_rollup", ("Pss",)).get("Pss", 0)
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), status.get("VmHWM", 0))
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.max_processes = max(self.max_processes, alive)
        self.polls += 1

    def result(self) -> dict[str, Any]:
        return {
            "peak_rss_sum_mb": self.peak_rss_kb / 1024,
            "peak_pss_sum_mb": self.peak_pss_kb / 1024,
            "sum_of_process_hwm_mb": sum(self.hwm_kb.values()) / 1024,
            "largest_process_hwm_mb": max(self.hwm_kb.values(), default=0) / 1024,
            "processes": len(self.hwm_kb),
            "max_processes_at_once": self.max_processes,
            "polls": self.polls,
        }


def run_memory(args: argparse.Namespace, model: Model, out: Path) -> dict[str, Any]:
    from loda.runtime.pipeline import PipelineOptions
    from loda.runtime.scorer import DEFAULT_BATCH_CROPS

    if not Path("/proc/self/status").is_file():
        raise BenchError("the memory part reads /proc (Linux); skip it with --sections")
    cfg = model.preprocess
    queue = PipelineOptions(cfg=cfg, jobs=args.score_jobs).queue_size(DEFAULT_BATCH_CROPS)
    steady = MEMORY_MIN_QUEUES * queue
    m = args.memory_images or max(DEFAULT_MEMORY_IMAGES, steady)
    files = make_images(out / "images" / SCORED_FORMAT.name, SCORED_FORMAT, min(m, 15))
    scratch = out / "scratch"
    runs = []
    # 1 image: the baseline (interpreter, model, started workers, next to nothing queued).
    for n in (1, m, MEMORY_FACTOR * m):
        tar = make_tar(out / f"memory_{n}.tar", files, n)
        log(f"memory: loda-score ({model.config}) on {tar} ({n} images)")
        run = run_loda_score(
            model.onnx,
            tar,
            scratch / "memory.csv",
            threads=args.threads,
            jobs=args.score_jobs,
            monitor=True,
        )
        if len(run.scores) != n:
            raise BenchError(f"loda-score scored {len(run.scores)} of the {n} images in {tar}")
        assert run.memory is not None
        runs.append(
            {
                "images": n,
                "archive_mb": tar.stat().st_size / 1e6,
                "seconds": run.seconds,
                **run.memory,
            }
        )
        log(
            f"memory: {n} images: peak RSS {run.memory['peak_rss_sum_mb']:.0f} MB summed over "
            f"{run.memory['processes']} processes (PSS {run.memory['peak_pss_sum_mb']:.0f} MB)"
        )
    crop_bytes = cfg.num_crops * cfg.crop_size * cfg.crop_size * 3
    base, small, large = runs
    for run in runs:
        run["above_1_image_rss_mb"] = run["peak_rss_sum_mb"] - base["peak_rss_sum_mb"]
        run["above_1_image_pss_mb"] = run["peak_pss_sum_mb"] - base["peak_pss_sum_mb"]
    growth = {
        kind: large[f"peak_{kind}_sum_mb"] / small[f"peak_{kind}_sum_mb"] - 1
        for kind in ("rss", "pss")
    }
    goal = _goal(
        f"peak memory flat in archive size (loda-score + workers, {model.config}, "
        f"{small['images']} vs {large['images']} images: peak RSS and PSS each at most "
        f"{GOAL_MEMORY_FLAT:.0%} higher)",
        max(growth.values()),
        GOAL_MEMORY_FLAT,
        f"RSS {100 * growth['rss']:+.1f}% ({small['peak_rss_sum_mb']:.0f} -> "
        f"{large['peak_rss_sum_mb']:.0f} MB), PSS {100 * growth['pss']:+.1f}% "
        f"({small['peak_pss_sum_mb']:.0f} -> {large['peak_pss_sum_mb']:.0f} MB) for an archive "
        f"{large['archive_mb'] / small['archive_mb']:.1f}x larger; above the 1-image run "
        f"{small['above_1_image_rss_mb']:.0f} and {large['above_1_image_rss_mb']:.0f} MB RSS "
        f"(queue: {queue} images, {queue * crop_bytes / 1e6:.0f} MB of crops in flight)",
        higher_is_better=False,
    )
    if m < steady:
        # Memory ramps up while the first `queue` images are read and the first batches run;
        # an archive that ends inside that ramp says nothing about flatness.
        _not_judged(
            goal,
            f"; not judged: {m} images < {MEMORY_MIN_QUEUES} x the queue ({queue}), the "
            "smaller run ends before memory reaches its steady state",
        )
    return {
        "config": model.config,
        "onnx": str(model.onnx),
        "jobs": args.score_jobs,
        "threads": args.threads,
        "queue_images": queue,
        "in_flight_crops_mb": queue * crop_bytes / 1e6,
        "poll_seconds": MEMORY_POLL_SECONDS,
        "runs": runs,
        "steady_state_images": steady,
        "goals": [goal],
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    v = m["versions"]
    lines = [
        f"LoDa {result['config']} scoring benchmark on {m['cpu_model']} ({m['usable_cpus']} "
        f"usable CPUs); {result['settings']['threads']} inference threads for ORT and torch",
        f"python {m['python']}, torch {v.get('torch', '?')}, onnxruntime "
        f"{v.get('onnxruntime', v.get('onnxruntime-gpu', '?'))}, numpy {v.get('numpy', '?')}, "
        f"pillow {v.get('pillow', '?')}; git {str(m.get('git_commit'))[:12]}",
        f"weights: {result['model']['source']}; ONNX graph "
        f"{result['model'].get('onnx_precision', 'fp32')}; median of "
        f"{result['settings']['repeats']} interleaved round(s) after warm-up; load average "
        f"{result['load_average']['before']} "
        f"-> {result['load_average']['after']}",
    ]
    t = result.get("throughput")
    if t:
        lines += [
            "",
            f"throughput: {t['images']} images ({t['format']}, reference photos; tar "
            f"{t['tar_mb']:.1f} MB), {t['crops_per_image']} crops each, batches of "
            f"{t['batch_crops']} crops, {t['score_jobs']} decode worker(s), queue "
            f"{t['queue_images']} images",
        ]
        header = (
            f"{'way':<40} {'images/s':>9} {'crops/s':>8} {'median s':>9} {'spread':>7} "
            f"{'overhead':>9} {'+ s':>7} {'x torch':>8} {'max |d|':>9}"
        )
        lines += [header, "-" * len(header)]
        for r in t["ways"]:
            spread = "-" if r["spread_pct"] is None else f"{r['spread_pct']:.1f}%"
            lines.append(
                f"{r['label']:<40} {r['images_per_s']:9.3f} {r['crops_per_s']:8.2f} "
                f"{r['median_seconds']:9.2f} {spread:>7} "
                f"{100 * r['overhead_vs_inference']:8.1f}% {r['overhead_seconds']:7.2f} "
                f"{r['x_torch_loop']:8.2f} "
                + (
                    f"{'reference':>9}"
                    if r["name"] == "torch-loop"
                    else f"{r['max_abs_vs_torch_loop']:9.2e}"
                )
            )
        s = t["startup"]
        lines.append(
            "overhead: time over inference alone's, as a share of it; + s: seconds over it "
            "(fixed costs such as starting the workers do not grow with the images); max |d|: "
            "per-image score vs the PyTorch loop"
        )
        lines.append(
            f"loda-score start-up (empty tar: interpreter, imports, model load): "
            f"{s['median_seconds']:.2f} s, excluded by {t['start_up_excluded_by']}; "
            f"loda-score's own timer per round (0.1 s): {t['loda_score_own_seconds_per_round']} s"
        )
    d = result.get("decode")
    if d:
        jobs = [s["jobs"] for s in d["formats"][0]["scaling"]]
        lines += ["", "decode (prepare_image: decode + resize + crops), images/s"]
        header = f"{'format':<16} {'KB/file':>8} {'1 worker':>9} " + " ".join(
            f"{f'-j {j}':>8}" for j in jobs
        )
        lines += [header, "-" * len(header)]
        for row in d["formats"]:
            cells = " ".join(
                f"{s['images_per_s']:8.1f}"
                + ("" if s["x_one_worker"] is None else f" ({s['x_one_worker']:.2f}x)")
                for s in row["scaling"]
            )
            lines.append(
                f"{row['label']:<16} {row['mean_file_kb']:8.0f} "
                f"{row['per_worker_images_per_s']:9.1f} {cells}"
            )
        lines.append("(1 worker: in-process; -j N: worker processes, crops sent back; (x -j 1))")
    mem = result.get("memory")
    if mem:
        lines += [
            "",
            f"memory: loda-score with {mem['config']} (a tiny model, so this part is quick), "
            f"-j {mem['jobs']}, queue {mem['queue_images']} images "
            f"(<= {mem['in_flight_crops_mb']:.0f} MB of crops in flight), /proc polled every "
            f"{mem['poll_seconds']} s",
        ]
        header = (
            f"{'images':>7} {'tar MB':>8} {'peak RSS sum':>13} {'peak PSS sum':>13} "
            f"{'RSS over 1 img':>15} {'largest proc':>13} {'procs':>6} {'seconds':>8}"
        )
        lines += [header, "-" * len(header)]
        for r in mem["runs"]:
            lines.append(
                f"{r['images']:7d} {r['archive_mb']:8.1f} {r['peak_rss_sum_mb']:10.0f} MB "
                f"{r['peak_pss_sum_mb']:10.0f} MB {r['above_1_image_rss_mb']:12.0f} MB "
                f"{r['largest_process_hwm_mb']:10.0f} MB {r['processes']:6d} {r['seconds']:8.1f}"
            )
    lines += ["", "goals"]
    for g in result["goals"]:
        status = "n/a " if g["passed"] is None else ("PASS" if g["passed"] else "MISS")
        lines.append(f"  {status}  {g['goal']}: {g['measured']}")
    if not result["goals"]:
        lines.append("  (no section with a goal was run)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/bench_score.py",
        description="loda-score end to end vs inference alone vs a PyTorch loop; decode "
        "throughput; peak memory.",
    )
    _common.add_model_arguments(
        parser,
        default_out=DEFAULT_OUT,
        onnx_help="its FP32 export (recorded source sha256 must match); default: exported in --out",
        seed_help="seed of random-init checkpoints",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help=f"images scored per pass (default {DEFAULT_IMAGES}; keep it small for loda_b16)",
    )
    parser.add_argument("--threads", type=int, default=None, help="default: all usable CPUs")
    parser.add_argument(
        "--jobs",
        type=int,
        nargs="+",
        default=None,
        help="worker counts of the decode scaling table (default 1..usable CPUs)",
    )
    parser.add_argument(
        "--score-jobs",
        type=int,
        default=None,
        help="loda-score -j for the throughput and memory parts (default: its own, all CPUs)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"rounds, median reported ({DEFAULT_REPEATS})"
    )
    parser.add_argument(
        "--decode-images",
        type=int,
        default=None,
        help=f"images per format in the decode part ({DEFAULT_DECODE_IMAGES})",
    )
    parser.add_argument(
        "--memory-images",
        type=int,
        default=None,
        help=f"M: the memory part scores tars of M and {MEMORY_FACTOR}M images (default "
        f"{DEFAULT_MEMORY_IMAGES}, at least {MEMORY_MIN_QUEUES} x the pipeline's queue)",
    )
    parser.add_argument(
        "--memory-onnx",
        type=Path,
        help=f"FP32 ONNX of {MEMORY_CONFIG} for the memory part (default: the benchmarked model "
        f"if it is {MEMORY_CONFIG}, else a random-init one made in --out)",
    )
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to run"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny counts for a smoke test: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
        + " (explicit options win)",
    )
    parser.add_argument(
        "--any-precision",
        action="store_true",
        help="accept an FP16 or INT8 graph of the checkpoint as --onnx (measured and reported; "
        "the goals, set for FP32, are not judged)",
    )
    parser.add_argument("--json", type=Path, help="default: OUT/bench_score.json")
    args = parser.parse_args(argv)
    defaults = {
        "images": DEFAULT_IMAGES,
        "repeats": DEFAULT_REPEATS,
        "decode_images": DEFAULT_DECODE_IMAGES,
        "memory_images": 0,  # 0: chosen by the memory part (see --memory-images)
    }
    for key, value in (QUICK if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.memory_images < 0:
        parser.error("--memory-images must be >= 1")
    if args.onnx is not None and args.checkpoint is None:
        parser.error("--onnx needs the --checkpoint it was exported from")
    for name in ("images", "repeats", "decode_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    # Quick mode checks plumbing, not speed: no idle gaps between timed passes.
    args.settle = 0.0 if args.quick else SETTLE_SECONDS
    cpus = _common.usable_cpus()
    args.threads = args.threads or cpus
    args.jobs = args.jobs or list(range(1, cpus + 1))
    if args.score_jobs is None:
        from loda.runtime.pipeline import default_jobs

        args.score_jobs = default_jobs()
    if args.threads < 1 or args.score_jobs < 1 or min(args.jobs) < 1:
        parser.error("--threads, --jobs and --score-jobs must be >= 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = _common.load_average()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    artifacts = Artifacts(out)
    precisions = ("fp32", "fp16", "int8") if args.any_precision else ("fp32",)
    model = ensure_model(
        artifacts, out, args.config, args.seed, args.checkpoint, args.onnx, precisions
    )
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "config": model.config,
        "settings": {
            "images": args.images,
            "repeats": args.repeats,
            "threads": args.threads,
            "score_jobs": args.score_jobs,
            "decode_jobs": args.jobs,
            "decode_images": args.decode_images,
            "quick": args.quick,
            "sections": args.sections,
            "settle_seconds": args.settle,
        },
        "machine": _common.machine_description(),
        "model": {
            "checkpoint": str(model.checkpoint),
            "onnx": str(model.onnx),
            "onnx_precision": model.precision,
            "source": model.source,
        },
        "images": "scikit-image / scikit-learn reference photographs (loda.data.demo), fitted "
        "(centre crop, bicubic) to 1024x768 JPEG q90 and 512x384 PNG",
    }
    goals = []
    if "throughput" in args.sections:
        result["throughput"] = run_throughput(args, model, out)
        if model.precision != "fp32":  # the goals are set for the FP32 graph
            for goal in result["throughput"]["goals"]:
                _not_judged(goal, f" (not judged: a {model.precision} graph; goals are for FP32)")
        goals += result["throughput"]["goals"]
    if "decode" in args.sections:
        result["decode"] = run_decode(args, model, out)
    if "memory" in args.sections:
        if args.memory_onnx is not None:
            mem_model = model_from_onnx(args.memory_onnx)
        elif model.config == MEMORY_CONFIG:
            mem_model = model
        else:
            mem_model = ensure_model(artifacts, out / "memory_model", MEMORY_CONFIG, args.seed)
        result["memory"] = run_memory(args, mem_model, out)
        goals += result["memory"]["goals"]
    result["goals"] = goals
    result["artifacts"] = artifacts.events
    result["load_average"] = {"before": load_before, "after": _common.load_average()}
    result["seconds"] = time.perf_counter() - started
    shutil.rmtree(out / "scratch", ignore_errors=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return _common.bench_main(argv, parse_args, run, render, "bench_score.json")


if __name__ == "__main__":
    sys.exit(main())
