"""bench_score.py's decode and memory parts.

Decode: images/s of :func:`loda.runtime.scorer.prepare_image` per worker (in this process) and
through ``loda-score``'s own decode workers (``DecodePool``) with each ``--jobs`` count.
Memory: ``loda-score`` on tars of 1, M and 4M images while :class:`proctree.TreeMemory` polls
the whole process tree.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
from _common import BenchError, log
from proctree import DEFAULT_INTERVAL as POLL_SECONDS
from score_setup import FORMATS, SCORED_FORMAT, Model, make_images, make_tar
from score_ways import run_loda_score

DEFAULT_MEMORY_IMAGES = 40  # and 4x as many; at least MEMORY_MIN_QUEUES queues
MEMORY_MIN_QUEUES = 2  # the smaller archive must fill the queue and then run at steady state
MEMORY_CONFIG = "loda_micro"
MEMORY_FACTOR = 4
GOAL_MEMORY_FLAT = 0.10  # peak of the 4x archive at most 10% above the 1x one


def _rounds(run: Callable[[], Any], repeats: int, settle: float) -> list[float]:
    return _common.interleaved_rounds({"run": run}, repeats, settle, quiet=True)[0]["run"]


def _pooled(args, cfg, sets: dict[str, list[Path]]) -> dict[str, dict[int, list[float]]]:
    """Seconds per round of each format through ``loda-score``'s decode workers, per ``-j``."""
    from loda.preprocess import DEFAULT_MAX_PIXELS
    from loda.runtime.pipeline import DecodePool

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
    return pooled


def _decode_row(fmt, files: list[Path], inline: list[float], pooled: dict) -> dict[str, Any]:
    n = len(files)
    scaling = [
        {"jobs": jobs, "seconds_per_round": runs, "images_per_s": n / statistics.median(runs)}
        for jobs, runs in pooled.items()
    ]
    one = next((s["images_per_s"] for s in scaling if s["jobs"] == 1), None)
    for s in scaling:
        s["x_one_worker"] = None if one is None else s["images_per_s"] / one
        s["efficiency"] = None if one is None else s["images_per_s"] / (one * s["jobs"])
    return {
        "format": fmt.name,
        "label": fmt.label,
        "images": n,
        "mean_file_kb": sum(f.stat().st_size for f in files) / n / 1e3,
        "per_worker_images_per_s": n / statistics.median(inline),
        "per_worker_seconds_per_round": inline,
        "scaling": scaling,
    }


def run_decode(args: argparse.Namespace, model: Model, out: Path) -> dict[str, Any]:
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
    pooled = _pooled(args, cfg, sets)
    return {
        "what": "loda.runtime.scorer.prepare_image: decode + resize (short side 384) + "
        f"{cfg.num_crops} {cfg.layout} crops; per worker in this process, -j N through "
        "loda-score's decode workers (loda.runtime.pipeline.DecodePool, forkserver) reading "
        "files and returning the crops",
        "formats": [
            _decode_row(fmt, sets[fmt.name], inline[fmt.name], pooled[fmt.name]) for fmt in FORMATS
        ],
    }


def _memory_run(args, model: Model, out: Path, files: list[Path], n: int) -> dict[str, Any]:
    tar = make_tar(out / f"memory_{n}.tar", files, n)
    log(f"memory: loda-score ({model.config}) on {tar} ({n} images)")
    run = run_loda_score(
        model.onnx,
        tar,
        out / "scratch" / "memory.csv",
        threads=args.threads,
        jobs=args.score_jobs,
        monitor=True,
    )
    if len(run.scores) != n:
        raise BenchError(f"loda-score scored {len(run.scores)} of the {n} images in {tar}")
    assert run.memory is not None
    log(
        f"memory: {n} images: peak RSS {run.memory['peak_rss_sum_mb']:.0f} MB summed over "
        f"{run.memory['processes']} processes (PSS {run.memory['peak_pss_sum_mb']:.0f} MB)"
    )
    return {"images": n, "archive_mb": tar.stat().st_size / 1e6, "seconds": run.seconds,
            **run.memory}  # fmt: skip


def _memory_goal(model: Model, runs: list[dict], queue: int, crop_bytes: int) -> dict[str, Any]:
    _, small, large = runs
    growth = {
        kind: large[f"peak_{kind}_sum_mb"] / small[f"peak_{kind}_sum_mb"] - 1
        for kind in ("rss", "pss")
    }
    return _common.goal(
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
    # 1 image: the baseline (interpreter, model, started workers, next to nothing queued).
    runs = [_memory_run(args, model, out, files, n) for n in (1, m, MEMORY_FACTOR * m)]
    for run in runs:
        run["above_1_image_rss_mb"] = run["peak_rss_sum_mb"] - runs[0]["peak_rss_sum_mb"]
        run["above_1_image_pss_mb"] = run["peak_pss_sum_mb"] - runs[0]["peak_pss_sum_mb"]
    crop_bytes = cfg.num_crops * cfg.crop_size * cfg.crop_size * 3
    goal = _memory_goal(model, runs, queue, crop_bytes)
    if m < steady:
        # Memory ramps up while the first `queue` images are read and the first batches run;
        # an archive that ends inside that ramp says nothing about flatness.
        _common.not_judged(
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
        "poll_seconds": POLL_SECONDS,
        "runs": runs,
        "steady_state_images": steady,
        "goals": [goal],
    }
