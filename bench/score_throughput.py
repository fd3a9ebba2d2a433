"""bench_score.py's throughput part: every way on the same images, in interleaved rounds.

Ways (``score_ways.WAYS``): ONNX Runtime inference alone on crops made beforehand, the
in-process pipeline, ``loda-score`` as a subprocess (start-up measured on an empty tar and
excluded) and a PyTorch loop in the authors' style. Each way's per-image scores are compared
with the PyTorch loop's.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
import numpy as np
from _common import BenchError, log
from score_setup import SCORED_FORMAT, Model, make_images, make_tar
from score_ways import (
    WAYS,
    CliRun,
    infer_runner,
    loda_score_args,
    max_abs_vs,
    overhead,
    pipeline_runner,
    run_loda_score,
    torch_loop_runner,
)

# The goals of issue 5, judged on the medians.
GOAL_MAX_OVERHEAD = 0.05
GOAL_X_TORCH_LOOP = 1.4


def _runners(args, model, scorer, eager, files, crops, tar, scratch, own_seconds) -> dict:
    """The timed ways (plus ``loda-score-startup``: ``loda-score`` on an empty tar)."""
    empty = make_tar(args.out / "empty.tar", [], 0)
    cfg = scorer.config()

    def cli(tar_path: Path, record: bool = False) -> Callable[[], CliRun]:
        def run() -> CliRun:
            result = run_loda_score(
                model.onnx,
                tar_path,
                scratch / "loda_score.csv",
                threads=args.threads,
                jobs=args.score_jobs,
            )
            if record:
                own_seconds.append(result.own_seconds)
            return result

        return run

    return {
        "inference": infer_runner(scorer, crops, scorer.batch_size),
        "pipeline": pipeline_runner(scorer, tar, cfg, args.score_jobs, scratch / "pipeline.csv"),
        "loda-score": cli(tar, record=True),
        "loda-score-startup": cli(empty),
        "torch-loop": torch_loop_runner(eager, files, cfg),
    }


def _warm_up(args, runners, scorer, eager, files, crops, scratch) -> None:
    """Every way once at the timed shapes: one full batch of crops (ONNX Runtime plans per
    shape); ``loda-score`` once on the empty archive."""
    import torch

    cfg = scorer.config()
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


def _startup_excluded(med: dict[str, float], own_seconds: list[float | None]) -> tuple:
    """``loda-score``'s seconds without its start-up, and how they were found."""
    cli_excl = med["loda-score"] - med["loda-score-startup"]
    excluded_by = "wall time minus the start-up median"
    own = [x for x in own_seconds if x is not None]
    if cli_excl <= 0 and own:
        # Start-up noise larger than the run itself (tiny --quick runs): fall back on the
        # command's own timer around its pipeline (0.1 s resolution).
        cli_excl = statistics.median(own)
        excluded_by = "loda-score's own timer (start-up median exceeded the run)"
    if cli_excl <= 0:
        raise BenchError("loda-score start-up took longer than the run: score more --images")
    return cli_excl, excluded_by


def _rows(seconds, results, cli_excl, n: int, num_crops: int) -> list[dict[str, Any]]:
    med = {name: statistics.median(s) for name, s in seconds.items()}
    cli_scores = results["loda-score"].scores
    per_way = {
        "inference": (med["inference"], seconds["inference"], results["inference"]),
        "pipeline": (med["pipeline"], seconds["pipeline"], results["pipeline"]),
        "loda-score": (cli_excl, None, cli_scores),
        "loda-score-total": (med["loda-score"], seconds["loda-score"], cli_scores),
        "torch-loop": (med["torch-loop"], seconds["torch-loop"], results["torch-loop"]),
    }
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
                "spread_pct": None if rounds is None else _common.spread_pct(rounds),
                "images_per_s": rate,
                "crops_per_s": rate * num_crops,
                "overhead_vs_inference": overhead(sec, med["inference"]),
                "overhead_seconds": sec - med["inference"],
                "x_torch_loop": rate / torch_rate,
                "max_abs_vs_torch_loop": max_abs_vs(scores, results["torch-loop"]),
            }
        )
    return rows


def _goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {r["name"]: r for r in rows}
    cli, total = by_name["loda-score"], by_name["loda-score-total"]
    return [
        _common.goal(
            f"pipeline overhead <= {GOAL_MAX_OVERHEAD:.0%} (loda-score end to end, start-up "
            "excluded, vs inference alone)",
            cli["overhead_vs_inference"],
            GOAL_MAX_OVERHEAD,
            f"{100 * cli['overhead_vs_inference']:.1f}% (in-process "
            f"pipeline {100 * by_name['pipeline']['overhead_vs_inference']:.1f}%, with "
            f"start-up {100 * total['overhead_vs_inference']:.1f}%)",
            higher_is_better=False,
        ),
        _common.goal(
            f"loda-score >= {GOAL_X_TORCH_LOOP}x the PyTorch loop (images/s, start-up excluded)",
            cli["x_torch_loop"],
            GOAL_X_TORCH_LOOP,
            f"{cli['x_torch_loop']:.2f}x (with start-up {total['x_torch_loop']:.2f}x)",
        ),
    ]


def run_throughput(args: argparse.Namespace, model: Model, out: Path) -> dict[str, Any]:
    import torch

    from loda.checkpoint import load_checkpoint
    from loda.runtime.pipeline import PipelineOptions
    from loda.runtime.scorer import Scorer, prepare_image

    threads = args.threads
    torch.set_num_threads(threads)
    files = make_images(out / "images" / SCORED_FORMAT.name, SCORED_FORMAT, args.images)
    tar = make_tar(out / f"images_{args.images}.tar", files, args.images)
    scratch = out / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    log(f"opening {model.onnx} in ONNX Runtime (CPU, {threads} threads)")
    scorer = Scorer.open(model.onnx, device="cpu", threads=threads)
    cfg = scorer.config()
    log(f"loading {model.checkpoint} in PyTorch (eager fp32, {threads} threads)")
    eager, _ = load_checkpoint(model.checkpoint)
    crops = {f.name: prepare_image(f, cfg, name=f.name).crops for f in files}
    own_seconds: list[float | None] = []  # loda-score's own timer, per timed run on the tar
    runners = _runners(args, model, scorer, eager, files, crops, tar, scratch, own_seconds)
    _warm_up(args, runners, scorer, eager, files, crops, scratch)
    n_crops = sum(len(c) for c in crops.values())
    log(
        f"timing {len(runners)} ways on {len(files)} images ({n_crops} crops), {args.repeats} rounds"
    )
    seconds, results = _common.interleaved_rounds(runners, args.repeats, args.settle)
    scorer.close()

    cli_excl, excluded_by = _startup_excluded(
        {name: statistics.median(s) for name, s in seconds.items()}, own_seconds
    )
    rows = _rows(seconds, results, cli_excl, len(files), cfg.num_crops)
    return {
        "images": len(files),
        "format": SCORED_FORMAT.label,
        "crops_per_image": cfg.num_crops,
        "batch_crops": scorer.batch_size,
        "threads": threads,
        "score_jobs": args.score_jobs,
        "queue_images": PipelineOptions(cfg=cfg, jobs=args.score_jobs).queue_size(
            scorer.batch_size
        ),
        "tar": str(tar),
        "tar_mb": tar.stat().st_size / 1e6,
        "command": " ".join(
            loda_score_args(model.onnx, tar, Path("OUT.csv"), threads, args.score_jobs)
        ),
        "startup": {
            "median_seconds": statistics.median(seconds["loda-score-startup"]),
            "seconds_per_round": seconds["loda-score-startup"],
            "what": "loda-score on an empty tar: interpreter, imports, ONNX Runtime session",
        },
        "loda_score_own_seconds_per_round": own_seconds,
        "start_up_excluded_by": excluded_by,
        "ways": rows,
        "goals": _goals(rows),
    }
