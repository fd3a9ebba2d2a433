"""What the benchmarks share: errors, progress, the machine, artifacts, timing, goals, main.

The scripts run as ``python bench/X.py`` (``sys.path[0]`` is ``bench/``), so they ``import
_common``; the tests that load a script put ``bench/`` on the path the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_STARTED = time.perf_counter()

# Instruction-set extensions that matter to the CPU kernels of torch and ONNX Runtime.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
)
# Versions reported beside loda's own tool versions.
EXTRA_VERSIONS = ("numpy", "onnxconverter-common", "pillow", "threadpoolctl")


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A problem with the user's input or a failed run: one line, exit 1."""


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def utc_now() -> str:
    """The date and time of a run (UTC, to the second): every result JSON carries it."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _torch_details() -> dict[str, Any]:
    try:
        import torch
    except ImportError:  # a torch-free install (bench_hostile needs none)
        return {}
    return {
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch_parallel_info": torch.__config__.parallel_info().strip().splitlines(),
    }


def machine_description(threads: int | None = None) -> dict[str, Any]:
    """CPU model, ISA flags, cores, memory, versions, git commit and the date of the run
    (``threads`` when given)."""
    from loda.artifacts import tool_versions
    from loda.metadata import git_commit

    cpu_model, flags = None, set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu_model is None:
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    mem_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    machine = {
        "cpu_model": cpu_model or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "memory_gb": round(mem_gb, 1) if mem_gb else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": tool_versions(extra=EXTRA_VERSIONS),
        **_torch_details(),
    }
    if threads is not None:
        machine["threads"] = threads
    machine["git_commit"] = git_commit()
    machine["date"] = utc_now()
    return machine


# --------------------------------------------------------------------------------------------
# Artifacts (made once, reused while their inputs are unchanged)
# --------------------------------------------------------------------------------------------


class Artifacts:
    """``artifacts.json`` in ``out``: for each file, its sha256 and what it was made from.

    Files are keyed by their path relative to ``out`` (a file directly in ``out``: its name).
    """

    def __init__(self, out: Path) -> None:
        self.path = out / "artifacts.json"
        self.records: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.records = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.records = {}
        self.events: dict[str, dict[str, Any]] = {}

    def key(self, path: Path) -> str:
        return str(path.relative_to(self.path.parent))

    def reusable(self, path: Path, inputs: dict[str, Any]) -> bool:
        from loda.artifacts import sha256_file

        record = self.records.get(self.key(path))
        if not path.is_file() or not record or record.get("inputs") != inputs:
            return False
        return record.get("sha256") == sha256_file(path)

    def ensure(self, path: Path, inputs: dict[str, Any], build: Callable[[], None]) -> str:
        """Build ``path`` unless the recorded one still fits ``inputs``; return its sha256."""
        from loda.artifacts import sha256_file

        key = self.key(path)
        t0 = time.perf_counter()
        if self.reusable(path, inputs):
            self.events[key] = {"reused": True, "seconds": 0.0}
            log(f"reusing {path} (same inputs and sha256 as recorded)")
            return self.records[key]["sha256"]
        path.parent.mkdir(parents=True, exist_ok=True)
        build()
        sha = sha256_file(path)
        self.records[key] = {"sha256": sha, "inputs": inputs}
        self.path.write_text(json.dumps(self.records, indent=2, sort_keys=True) + "\n")
        seconds = time.perf_counter() - t0
        self.events[key] = {"reused": False, "seconds": round(seconds, 1)}
        log(f"made {path} ({path.stat().st_size / 1e6:.1f} MB) in {seconds:.1f} s")
        return sha


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def random_init_source(config: str, seed: int) -> str:
    # The provenance `loda create CONFIG --seed S` writes for random-init backbones.
    return f"loda create {config} (random-init backbones, seed {seed})"


def make_checkpoint(config: str, seed: int, path: Path) -> None:
    """A random-init ``config`` checkpoint at ``path``, as ``loda create`` makes it."""
    import torch

    from loda.checkpoint import save_checkpoint
    from loda.model import create_model

    log(f"creating a random-init {config} checkpoint (seed {seed})")
    torch.manual_seed(seed)
    model = create_model(config)
    save_checkpoint(model, path, provenance={"source": random_init_source(config, seed)})


def check_onnx_source(
    path: Path, checkpoint_sha: str, *, precisions: Sequence[str] = ("fp32",)
) -> str:
    """Raise unless ``path`` is an ONNX graph (FP32 export, or one of ``precisions``) of the
    checkpoint with ``checkpoint_sha``; return its precision."""
    import onnx

    from loda.artifacts import read_onnx_metadata

    if not path.is_file():
        raise BenchError(f"no ONNX file at {path}")
    meta = read_onnx_metadata(onnx.load(str(path), load_external_data=False))
    precision = meta.get("loda.precision", "fp32")
    if precision not in precisions:
        raise BenchError(f"--onnx {path} is a {precision} graph; pass the FP32 export")
    if meta.get("loda.source_sha256") != checkpoint_sha:
        raise BenchError(
            f"--onnx {path} was not exported from this checkpoint (source sha256 "
            f"{meta.get('loda.source_sha256', 'missing')[:12]}, checkpoint {checkpoint_sha[:12]})"
        )
    return precision


# --------------------------------------------------------------------------------------------
# Timing and goals
# --------------------------------------------------------------------------------------------


def interleaved_rounds(
    runners: dict[str, Callable[[], Any]], repeats: int, settle: float, *, quiet: bool = False
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds of each runner per round and each runner's last result.

    Every round runs every runner once, the order rotating from round to round, so machine
    noise hits all of them alike; ``settle`` seconds of idle before each pass let the last
    runner's spinning threads sleep.
    """
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
        if not quiet:
            done = ", ".join(f"{n} {seconds[n][-1]:.2f}s" for n in names)
            log(f"round {r + 1}/{repeats}: {done}")
    return seconds, results


def spread_pct(rounds: Sequence[float]) -> float:
    """(slowest - fastest round) / median round, in percent: how noisy the machine was."""
    return 100 * (max(rounds) - min(rounds)) / statistics.median(rounds)


def goal(
    name: str, value: float, threshold: float, measured: str, *, higher_is_better: bool = True
) -> dict[str, Any]:
    """A goal judged on ``value`` (``>= threshold``, or ``<=`` when lower is better)."""
    passed = value >= threshold if higher_is_better else value <= threshold
    return {
        "goal": name,
        "value": value,
        "threshold": threshold,
        "measured": measured,
        "passed": bool(passed),
    }


def not_measured(name: str) -> dict[str, Any]:
    return {"goal": name, "measured": "not measured", "passed": None}


def not_judged(record: dict[str, Any], why: str) -> None:
    """Report ``record``'s measurement without a verdict; ``why`` is appended to it."""
    record["passed"] = None
    record["measured"] += why


def goal_lines(goals: Sequence[dict[str, Any]]) -> list[str]:
    """``PASS``/``MISS``/``n/a`` lines of the goals, as the benchmarks print them."""
    lines = []
    for g in goals:
        status = "n/a " if g["passed"] is None else ("PASS" if g["passed"] else "MISS")
        lines.append(f"  {status}  {g['goal']}: {g['measured']}")
    return lines


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def add_model_arguments(
    parser: argparse.ArgumentParser, *, default_out: Path, onnx_help: str, seed_help: str
) -> None:
    """``--config``, ``--out``, ``--checkpoint``, ``--onnx`` and ``--seed``: what is measured."""
    from loda.config import list_configs

    parser.add_argument("--config", default="loda_b16", choices=list_configs())
    parser.add_argument("--out", type=Path, default=default_out, help="artifacts and the JSON")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="benchmark this checkpoint instead of a random-init one of --config (its config wins)",
    )
    parser.add_argument("--onnx", type=Path, help=onnx_help)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def bench_main(
    argv: Sequence[str] | None,
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    json_name: str,
) -> int:
    """Parse, run, write the JSON (``--json``, default ``OUT/json_name``), print the table.

    A :class:`BenchError` or :class:`loda.errors.LodaError` prints one line and returns 1.
    """
    args = parse_args(argv)
    from loda.clitools import configure_logging
    from loda.errors import LodaError

    configure_logging()  # the library's progress records on stderr, as the CLIs show them

    try:
        result = run(args)
    except (BenchError, LodaError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    json_path = args.json or args.out / json_name
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"\nJSON: {json_path} ({result['seconds']:.0f} s in all)")
    return 0
