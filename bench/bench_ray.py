"""loda-score-ray vs loda-score on the same images and model, side by side (issue 18).

Goals: Ray's overhead <= 15% at 2 CPUs (images/s of ``loda-score-ray --num-cpus 2`` against
``loda-score -j 2``, same ONNX model, same tar); memory flat in archive size (the peak memory of
the whole process tree, Ray's daemons and workers included, for a tar and one 4x larger).

Both commands run as subprocesses, as a user runs them, interleaved: every round runs
loda-score and loda-score-ray on the small tar, then both on the 4x tar (the order flips every
round), so a change in the machine's load hits both alike; the overheads are the medians of the
per-round ratios. images/s is taken from each command's own summary line (each command's
process start, imports and ``ray.init`` excluded; the run itself, Ray's actor start and model
load included) and from the wall clock (everything included: Ray's start is paid once per run).
``first_row_seconds`` (the Ray run's own log line) is the part of a Ray run before its first
row: the fixed cost that a longer run spreads. Memory: ``TreeMemory`` of the score benchmark
(summed RSS, and PSS, which counts pages shared by several processes, such as Ray's object
store, once), in a pass of its own after the timed rounds: polling ``/proc`` costs CPU on the
cores being timed, and more for Ray's tree of ~13 processes than for loda-score's few, so a
watched run is never a timed one.

Fixed cost and per-image cost: with the two archive sizes a command's own time is fitted as
``T(N) = fixed + N x per_image`` (per round, then the median). The per-image ratio is the
overhead a long run tends to (``ray_overhead_marginal``), ``break_even_images`` the archive size
from which the overhead is <= 15%, and ``bare_ray_data_first_row_seconds`` what Ray Data alone
takes to its first row with a do-nothing read function and a do-nothing actor (``--bare``: the
part of the fixed cost that is Ray Data starting its own processes, not loda's work).

    python bench/bench_ray.py --onnx model.onnx --images 96 --rounds 3 --out out/bench/ray
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from _common import BenchError, log
from bench_score import FORMATS, TreeMemory, make_images, make_tar

_SUMMARY = re.compile(r"scored (\d+) of (\d+) image\(s\), (\d+) failed.* in ([0-9.]+)s:")
_FIRST_ROW = re.compile(r"first row after ([0-9.]+)s")
RUNS = ("loda_score", "ray_small", "loda_score_large", "ray_large")
POLL_SECONDS = 0.5
GOAL = 0.15  # issue 18: Ray's overhead <= 15% at 2 CPUs


def _command(name: str, module: str) -> list[str]:
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


def run(cmd: list[str], *, watch: bool = False) -> dict[str, Any]:
    """One command as a subprocess: its own and wall-clock rates; with ``watch`` (a memory run,
    not a timed one) also the peak memory of its process tree."""
    load_before = _common.load_average()
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        # 0.5 s, not the default 0.05 s: fewer reads of Ray's smaps; VmHWM keeps every peak
        watcher = TreeMemory(proc.pid, interval=POLL_SECONDS) if watch else None
        if watcher is not None:
            watcher.start()
        code = proc.wait()
        wall = time.perf_counter() - t0
        if watcher is not None:
            watcher.stop()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    matches = list(_SUMMARY.finditer(stderr))
    match = matches[-1] if matches else None
    if code != 0 or match is None:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise BenchError(f"{cmd[0]} exited {code}: {tail}")
    images, own = int(match.group(2)), float(match.group(4))
    if int(match.group(3)):
        raise BenchError(f"{cmd[0]}: {match.group(3)} image(s) failed")
    first_row = _FIRST_ROW.search(stderr)
    return {
        "images": images,
        "own_seconds": own,
        "wall_seconds": wall,
        "images_per_s": images / own,
        "images_per_s_wall": images / wall,
        "first_row_seconds": float(first_row.group(1)) if first_row else None,
        "load_average_before": load_before,
        "memory": watcher.result() if watcher is not None else None,
    }


def _noop(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


class _NoopActor:
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return batch


def bare_probe(cpus: int) -> float:
    """Seconds from building a do-nothing Ray Data pipeline (a read-task stage and a one-actor
    pool, as loda-score-ray's) to its first row, after ``ray.init`` and ``import ray.data``."""
    import ray
    import ray.data

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="warning")
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    ds = ray.data.from_items([{"x": 0}]).map_batches(_noop, batch_size=1, num_cpus=1)
    ds = ds.map_batches(
        _NoopActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1
    )
    for _ in ds.iter_batches(batch_size=None):
        return time.perf_counter() - t0
    raise BenchError("the do-nothing pipeline gave no row")


def _bare_run(cpus: int) -> float:
    """``bare_probe`` in a fresh process (a fresh local Ray, as each loda-score-ray run)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--bare-probe", str(cpus)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"--bare-probe exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def _commands(args: argparse.Namespace, small: Path, large: Path) -> dict[str, list[str]]:
    loda_score = _command("loda-score", "loda.runtime.cli")
    ray_score = _command("loda-score-ray", "loda.runtime.ray_cli")
    common = ["-m", str(args.onnx), "--device", "cpu"]
    out = args.out
    plain = ["--overwrite", "--no-progress", "-j", str(args.cpus)]
    ray = ["--overwrite", "--no-progress", "--num-cpus", str(args.cpus)]
    return {
        "loda_score": [*loda_score, str(small), *common, "-o", str(out / "ls.csv"), *plain],
        "ray_small": [*ray_score, str(small), *common, "-o", str(out / "ray_small"), *ray],
        "loda_score_large": [*loda_score, str(large), *common, "-o", str(out / "ll.csv"), *plain],
        "ray_large": [*ray_score, str(large), *common, "-o", str(out / "ray_large"), *ray],
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median images/s (the upper one of an even count)."""
    ranked = sorted(runs, key=lambda r: r["images_per_s"])
    return ranked[len(ranked) // 2]


def _fit(small: dict[str, Any], large: dict[str, Any], key: str) -> tuple[float, float]:
    """``(fixed seconds, seconds per image)`` of ``T(N) = fixed + N x per_image`` through the
    two runs' times (``key``: own_seconds or wall_seconds)."""
    per_image = (large[key] - small[key]) / (large["images"] - small["images"])
    return small[key] - small["images"] * per_image, per_image


def break_even(ray: tuple[float, float], base: tuple[float, float], goal: float) -> float | None:
    """The archive size from which ``1 - T_base(N) / T_ray(N) <= goal``; None if never."""
    (f_ray, p_ray), (f_base, p_base) = ray, base
    if p_base <= (1 - goal) * p_ray:
        return None  # the per-image cost alone is over the goal
    return max(0.0, ((1 - goal) * f_ray - f_base) / (p_base - (1 - goal) * p_ray))


def fixed_and_marginal(rounds: list[dict[str, dict[str, Any]]], goal: float = GOAL) -> dict:
    """Per round: both commands' fixed and per-image costs from the two archive sizes; medians."""
    out: dict[str, Any] = {}
    for key, suffix in (("own_seconds", ""), ("wall_seconds", "_wall")):
        fits = [
            (_fit(r["ray_small"], r["ray_large"], key), _fit(r["loda_score"], r["loda_score_large"], key))
            for r in rounds
        ]  # fmt: skip
        evens = [break_even(ray, base, goal) for ray, base in fits]
        out[f"ray_fixed_seconds{suffix}"] = statistics.median(ray[0] for ray, _ in fits)
        out[f"loda_score_fixed_seconds{suffix}"] = statistics.median(base[0] for _, base in fits)
        out[f"ray_seconds_per_image{suffix}"] = statistics.median(ray[1] for ray, _ in fits)
        out[f"loda_score_seconds_per_image{suffix}"] = statistics.median(b[1] for _, b in fits)
        out[f"ray_overhead_marginal{suffix}"] = statistics.median(
            1 - base[1] / ray[1] for ray, base in fits
        )
        # None (never) sorts last: the median of the per-round sizes, "never" where most are
        known = sorted(e for e in evens if e is not None)
        out[f"break_even_images{suffix}"] = (
            known[len(evens) // 2] if len(known) > len(evens) // 2 else None
        )
    out["overhead_goal"] = goal
    return out


def summarise(
    rounds: list[dict[str, dict[str, Any]]], memory: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The medians of the per-round ratios (paired runs of one round share the machine's load);
    ``memory``: each command's peak memory from the watched pass."""

    def overhead(ray: str, base: str, rate: str = "images_per_s") -> float:
        return statistics.median(1 - r[ray][rate] / r[base][rate] for r in rounds)

    results: dict[str, Any] = {name: _median_run([r[name] for r in rounds]) for name in RUNS}
    results["ray_overhead"] = overhead("ray_small", "loda_score")
    results["ray_overhead_wall"] = overhead("ray_small", "loda_score", "images_per_s_wall")
    results["ray_overhead_large"] = overhead("ray_large", "loda_score_large")
    results["ray_overhead_large_wall"] = overhead(
        "ray_large", "loda_score_large", "images_per_s_wall"
    )
    results |= fixed_and_marginal(rounds)
    results["memory"] = memory
    for kind in ("pss", "rss"):
        key = f"peak_{kind}_sum_mb"
        results[f"memory_ratio_large_vs_small_{kind}"] = (
            memory["ray_large"][key] / memory["ray_small"][key]
        )
    bare = [r["bare"]["first_row_seconds"] for r in rounds if "bare" in r]
    if bare:
        results["bare_ray_data_first_row_seconds"] = statistics.median(bare)
    results["rounds"] = rounds
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="ONNX artifact to score with (required).")
    parser.add_argument("--images", type=int, default=96, help="Images in the small tar.")
    parser.add_argument("--format", choices=[f.name for f in FORMATS], default="jpeg")
    parser.add_argument("--cpus", type=int, default=2, help="-j of loda-score, Ray's CPUs.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds (median).")
    parser.add_argument("--out", type=Path, default=Path("out/bench/ray"))
    parser.add_argument(
        "--bare", action="store_true", help="Also time a do-nothing Ray Data pipeline per round."
    )
    parser.add_argument("--bare-probe", type=int, metavar="CPUS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_probe:
        print(bare_probe(args.bare_probe))
        return
    if args.onnx is None:
        parser.error("the following arguments are required: --onnx")
    if args.rounds < 1 or args.images < 1:
        raise BenchError("--rounds and --images must be >= 1")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    fmt = next(f for f in FORMATS if f.name == args.format)
    files = make_images(out / "images", fmt, min(args.images, 16))
    small = make_tar(out / "small.tar", files, args.images)
    large = make_tar(out / "large.tar", files, 4 * args.images)
    commands = _commands(args, small, large)
    rounds: list[dict[str, dict[str, Any]]] = []
    for i in range(args.rounds):
        order = RUNS if i % 2 == 0 else tuple(reversed(RUNS))
        this: dict[str, dict[str, Any]] = {}
        for name in order:
            log(f"round {i + 1}/{args.rounds}: {name}")
            this[name] = run(commands[name])
        if args.bare:
            log(f"round {i + 1}/{args.rounds}: a do-nothing Ray Data pipeline")
            this["bare"] = {"first_row_seconds": _bare_run(args.cpus)}
        rounds.append(this)
    memory: dict[str, dict[str, Any]] = {}
    for name in RUNS:
        log(f"memory (not timed): {name}")
        memory[name] = run(commands[name], watch=True)["memory"]
    results: dict[str, Any] = {"machine": _common.machine_description()}
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    results |= summarise(rounds, memory)
    results["load_average_after"] = _common.load_average()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _report(results)


def _report(results: dict[str, Any]) -> None:
    for key in RUNS:
        r = results[key]
        first = r["first_row_seconds"]
        log(
            f"{key}: {r['images']} images, {r['images_per_s']:.2f} images/s "
            f"({r['images_per_s_wall']:.2f} with start-up"
            + (f"; first row after {first:.1f}s" if first is not None else "")
            + f"), peak PSS {results['memory'][key]['peak_pss_sum_mb']:.0f} MB, "
            f"RSS {results['memory'][key]['peak_rss_sum_mb']:.0f} MB"
        )
    log(
        f"Ray overhead {results['ray_overhead']:.1%} (goal <= 15%), with start-up "
        f"{results['ray_overhead_wall']:.1%}; on the 4x tar {results['ray_overhead_large']:.1%} "
        f"({results['ray_overhead_large_wall']:.1%} with start-up); memory 4x archive / 1x: "
        f"PSS x{results['memory_ratio_large_vs_small_pss']:.2f}, "
        f"RSS x{results['memory_ratio_large_vs_small_rss']:.2f}; load average after "
        f"{results['load_average_after']}"
    )
    even = results["break_even_images"]
    bare = results.get("bare_ray_data_first_row_seconds")
    log(
        f"fixed cost (own): Ray {results['ray_fixed_seconds']:.1f}s, loda-score "
        f"{results['loda_score_fixed_seconds']:.1f}s"
        + (f" (a do-nothing Ray Data pipeline: {bare:.1f}s to its first row)" if bare else "")
        + f"; per image: Ray {results['ray_seconds_per_image']:.3f}s, loda-score "
        f"{results['loda_score_seconds_per_image']:.3f}s: marginal overhead "
        f"{results['ray_overhead_marginal']:.1%}; overhead <= {results['overhead_goal']:.0%} "
        + (f"from {even:.0f} images on" if even is not None else "at no archive size")
    )


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        print(f"bench_ray: error: {exc}", file=sys.stderr)
        sys.exit(1)
