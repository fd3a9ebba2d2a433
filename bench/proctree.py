"""Memory of a process and all its descendants, polled from ``/proc`` (Linux; no psutil).

``loda-score`` runs as a tree: the main process, its decode workers, the fork server and the
resource tracker (and, for ``loda-score-ray``, Ray's daemons). The benchmarks that measure its
memory (bench_score.py, bench_hostile.py, bench_ray.py) poll the whole tree with
:class:`TreeMemory`.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from typing import Any

DEFAULT_INTERVAL = 0.05


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process now."""
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
    resident memory (RSS, and PSS which counts shared pages once; ``pss=False`` skips PSS for
    faster polls) and each one's own high-water mark (``VmHWM``)."""

    def __init__(self, root: int, interval: float = DEFAULT_INTERVAL, *, pss: bool = True) -> None:
        self.root = root
        self.interval = interval
        self.pss = pss
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

    def tree(self) -> list[int]:
        """The root's pid and its descendants' now."""
        kids = _children()
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(kids.get(pid, ()))
        return tree

    def poll(self) -> None:
        rss = pss = 0
        alive = 0
        for pid in self.tree():
            status = _kb(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))
            if "VmRSS" not in status:
                continue  # gone, or a zombie
            alive += 1
            rss += status["VmRSS"]
            if self.pss:
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
