"""The report (one JSON file, rewritten after every section) and the helpers every part uses."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loda.atomic import write_bytes_atomic
from loda.errors import one_line
from loda.metadata import now_utc

from . import FORMAT

T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def first_line(exc: BaseException) -> str:
    """``Type: message`` on one line, for the report."""
    return one_line(exc, with_type=True, limit=400)


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def clean_json(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to None, paths to str."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, np.generic):
        return clean_json(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(clean_json(data), indent=2, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def speedup(row: dict[str, Any] | None, base: dict[str, Any] | None) -> float | None:
    """``row``'s items/s over ``base``'s, where both were measured."""
    if not row or not base or not row.get("items_per_s") or not base.get("items_per_s"):
        return None
    return r(row["items_per_s"] / base["items_per_s"], 3)


class Skip(Exception):
    """A section (or part) that cannot run here; the message is the reason."""


class Report:
    """The JSON report and the global time budget; each section is timed and may fail alone."""

    def __init__(self, path: Path, budget_s: float, args: argparse.Namespace) -> None:
        self.path = path
        self.budget_s = budget_s
        self.data: dict[str, Any] = {
            "format": FORMAT,
            "started": now_utc(),
            "finished": None,
            "complete": False,
            "command": [sys.executable, *sys.argv],
            "cwd": os.getcwd(),
            "smoke": bool(args.smoke),
            "budget_s": budget_s,
            "elapsed_s": 0.0,
            "settings": {},
            "sections": {},
            "errors": [],
        }

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - T0)

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - T0, 2)
        write_json(self.path, self.data)

    def section(
        self, name: str, fn: Callable[[], dict[str, Any]], *, needs_s: float = 0.0
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {"status": "running (if this stays, the run was killed here)"}
        self.data["sections"][name] = entry
        if needs_s and self.left() < needs_s:
            entry.update(
                status=f"skipped: time budget ({self.left():.0f} s left, needs ~{needs_s:.0f} s)",
                seconds=0.0,
            )
            self.write()
            return entry
        self.write()
        log(f"section {name} ({self.left():.0f} s of budget left)")
        start = time.perf_counter()
        try:
            result = fn() or {}
            entry.clear()
            entry["status"] = result.pop("status", "ok")
            entry.update(result)
        except Skip as exc:
            entry.clear()
            entry["status"] = f"skipped: {exc}"
        except Exception as exc:
            entry.clear()
            entry["status"] = "error"
            entry["error"] = first_line(exc)
            entry["traceback"] = traceback.format_exc()[-3000:]
            self.data["errors"].append(f"{name}: {first_line(exc)}")
            log(f"section {name} failed: {first_line(exc)}")
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.write()
        return entry
