"""Peak memory of ``loda-score`` on zero bombs (issue 16): the whole process group's RSS.

Builds small archives holding huge members of zeros (by default a 1 GB member in a ~1 MB zip
and .tar.gz, and three of them; plus three members just under the member cap, which are
read and handed to the decode workers), runs ``loda-score`` on each at several ``-j``, and
samples the resident memory of the main process and all its descendants (decode workers,
the forkserver) every 10 ms from ``/proc``. Goal: peak <= 1.5 GB at ``-j 2`` for every bomb,
and flat in ``-j``.

    python bench/bench_hostile.py --model model.onnx [--member-gb 1] [--jobs 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # hostile.zero_bomb
sys.path.insert(0, str(ROOT / "bench"))  # _common, proctree

import _common  # noqa: E402
from proctree import TreeMemory  # noqa: E402

GOAL_BYTES = 1.5e9
POLL_SECONDS = 0.01


def run_peak(cmd: list[str], cwd: Path) -> tuple[int, float, int, str]:
    """``(peak process-tree RSS in bytes, seconds, exit code, last stderr line)`` of one
    command (:class:`proctree.TreeMemory`, RSS only, every 10 ms)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    watcher = TreeMemory(proc.pid, POLL_SECONDS, pss=False)
    watcher.start()
    _, err = proc.communicate()
    watcher.stop()
    lines = [line for line in err.splitlines() if line.strip()]
    peak = watcher.peak_rss_kb * 1024
    return peak, time.perf_counter() - start, proc.returncode, lines[-1] if lines else ""


def build_bombs(work: Path, member_bytes: int) -> dict[str, Path]:
    from hostile import zero_bomb

    from loda.runtime.inputs import DEFAULT_MAX_MEMBER_BYTES

    bombs = {}
    for suffix in (".zip", ".tar.gz"):
        for count in (1, 3):
            name = f"bomb{count}x{suffix}"
            bombs[name] = zero_bomb(work / name, member_bytes, count=count)
        # Three members just under the cap: read, sent to the workers, refused by the decoder.
        name = f"atcap3x{suffix}"
        bombs[name] = zero_bomb(work / name, DEFAULT_MAX_MEMBER_BYTES - 1, count=3, name="z{}.bmp")
    return bombs


def measure(model: Path, member_gb: float, jobs: list[int]) -> dict[str, Any]:
    """Every bomb at every ``-j``: peak RSS of the process tree, seconds, exit code."""
    with tempfile.TemporaryDirectory(prefix="loda-bomb-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        bombs = build_bombs(work, int(member_gb * 1e9))
        print(f"built {len(bombs)} bombs in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        results = []
        base = [sys.executable, "-m", "loda.runtime.cli", "-m", str(model.resolve())]
        idle, _, _, _ = run_peak([*base, "--help"], work)
        for name, path in bombs.items():
            for j in jobs:
                out = work / "out.csv"
                cmd = [*base, path.name, "-o", str(out), "--overwrite", "--no-progress"]
                peak, seconds, code, last = run_peak([*cmd, "-j", str(j)], work)
                results.append(
                    {
                        "bomb": name,
                        "archive_bytes": path.stat().st_size,
                        "jobs": j,
                        "peak_rss_bytes": peak,
                        "seconds": round(seconds, 2),
                        "exit": code,
                        "summary": last,
                        "goal": "PASS" if peak <= GOAL_BYTES or j > 2 else "FAIL",
                    }
                )
                print(
                    f"{name:16s} {path.stat().st_size / 1e6:7.2f} MB  -j {j}  peak "
                    f"{peak / 1e9:5.2f} GB  {seconds:6.1f}s  exit {code}",
                    file=sys.stderr,
                )
    return {"idle_rss_bytes": idle, "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="an .onnx artifact")
    parser.add_argument("--member-gb", type=float, default=1.0, help="bomb member size (GB)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    load_before = _common.load_average()
    measured = measure(args.model, args.member_gb, args.jobs)
    results, idle = measured["runs"], measured["idle_rss_bytes"]
    print(f"{'bomb':16s} {'archive':>9s} {'-j':>3s} {'peak RSS':>9s} {'time':>7s}  goal")
    for r in results:
        print(
            f"{r['bomb']:16s} {r['archive_bytes'] / 1e6:7.2f}MB {r['jobs']:3d} "
            f"{r['peak_rss_bytes'] / 1e9:7.2f}GB {r['seconds']:6.1f}s  {r['goal']}"
        )
    print(f"(loda-score --help alone: {idle / 1e9:.2f} GB; goal <= 1.5 GB at -j <= 2)")
    if args.json:
        record = {
            "benchmark": "bench_hostile",
            "machine": _common.machine_description(),
            "load_average": {"before": load_before, "after": _common.load_average()},
            "settings": {
                "model": args.model.name,
                "member_gb": args.member_gb,
                "jobs": args.jobs,
                "poll_seconds": POLL_SECONDS,
                "goal_bytes": GOAL_BYTES,
            },
            **measured,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
