"""loda-score-ray vs loda-score on the same images and model, one run side by side (issue 18).

Goals: Ray's overhead <= 15% at 2 CPUs (images/s of ``loda-score-ray --num-cpus 2`` against
``loda-score -j 2``, same ONNX model, same tar); memory flat in archive size (the peak memory of
the whole process tree, Ray's daemons and workers included, for a tar and one 4x larger).

Both commands run as subprocesses, as a user runs them; images/s is taken from each command's
own summary line (start-up excluded) and from the wall clock (start-up included: Ray's start
is paid once per run). Memory: ``TreeMemory`` of bench_score.py (summed RSS, and PSS, which
counts pages shared by several processes, such as Ray's object store, once).

    python bench/bench_ray.py --onnx model.onnx --images 24 --out out/bench/ray
"""

from __future__ import annotations

import argparse
import json
import re
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


def _command(name: str, module: str) -> list[str]:
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


def run(cmd: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        watcher = TreeMemory(proc.pid)
        watcher.start()
        code = proc.wait()
        wall = time.perf_counter() - t0
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
    return {
        "images": images,
        "own_seconds": own,
        "wall_seconds": wall,
        "images_per_s": images / own,
        "images_per_s_wall": images / wall,
        "memory": watcher.result(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="ONNX artifact to score with.")
    parser.add_argument("--images", type=int, default=24, help="Images in the small tar.")
    parser.add_argument("--format", choices=[f.name for f in FORMATS], default="jpeg")
    parser.add_argument("--cpus", type=int, default=2, help="-j of loda-score, Ray's CPUs.")
    parser.add_argument("--out", type=Path, default=Path("out/bench/ray"))
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    fmt = next(f for f in FORMATS if f.name == args.format)
    files = make_images(out / "images", fmt, min(args.images, 16))
    small = make_tar(out / "small.tar", files, args.images)
    large = make_tar(out / "large.tar", files, 4 * args.images)
    loda_score = _command("loda-score", "loda.runtime.cli")
    ray_score = _command("loda-score-ray", "loda.runtime.ray_cli")
    common = ["-m", str(args.onnx), "--device", "cpu"]
    results: dict[str, Any] = {"machine": _common.machine_description(), "args": vars(args)}
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    log(f"loda-score -j {args.cpus} on {args.images} images")
    results["loda_score"] = run(
        [*loda_score, str(small), *common, "-o", str(out / "ls.csv"), "--overwrite",
         "--no-progress", "-j", str(args.cpus)]
    )  # fmt: skip
    for name, tar in (("ray_small", small), ("ray_large", large)):
        log(f"loda-score-ray --num-cpus {args.cpus} on {tar.name}")
        results[name] = run(
            [*ray_score, str(tar), *common, "-o", str(out / name), "--overwrite",
             "--no-progress", "--num-cpus", str(args.cpus)]
        )  # fmt: skip
    base, ray_small = results["loda_score"], results["ray_small"]
    results["ray_overhead"] = 1 - ray_small["images_per_s"] / base["images_per_s"]
    results["ray_overhead_wall"] = 1 - ray_small["images_per_s_wall"] / base["images_per_s_wall"]
    results["memory_ratio_large_vs_small_pss"] = (
        results["ray_large"]["memory"]["peak_pss_sum_mb"] / ray_small["memory"]["peak_pss_sum_mb"]
    )
    results["load_average_after"] = _common.load_average()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    for key in ("loda_score", "ray_small", "ray_large"):
        r = results[key]
        log(
            f"{key}: {r['images']} images, {r['images_per_s']:.2f} images/s "
            f"({r['images_per_s_wall']:.2f} with start-up), peak PSS "
            f"{r['memory']['peak_pss_sum_mb']:.0f} MB, RSS {r['memory']['peak_rss_sum_mb']:.0f} MB"
        )
    log(
        f"Ray overhead {results['ray_overhead']:.1%} (goal <= 15%), with start-up "
        f"{results['ray_overhead_wall']:.1%}; memory 4x archive / 1x: "
        f"{results['memory_ratio_large_vs_small_pss']:.2f}"
    )


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        print(f"bench_ray: error: {exc}", file=sys.stderr)
        sys.exit(1)
