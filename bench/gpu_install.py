#!/usr/bin/env python3
"""Install the bundled loda wheel (and the bundled dependencies this Python lacks) offline.

Run by ``bench/gpu_check.sh`` on the GPU machine, with the interpreter that holds torch::

    python3 bench/gpu_install.py --wheels out/gpu_bundle/wheels --target DIR

``pip install --no-index --no-deps --target DIR``: nothing is fetched and nothing already
installed is touched (torch, numpy and the rest stay the machine's own); ``DIR`` is then put on
``PYTHONPATH``. A dependency wheel is installed only when none of its top-level modules can be
imported here. Writes ``DIR/loda_gpu_install.json`` (what was installed, what was already
there) and prints its path. Standard library only: it runs before loda exists here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

RECORD = "loda_gpu_install.json"


def top_level_modules(wheel: Path) -> set[str]:
    """The importable top-level names a wheel installs (folders and single-file modules)."""
    names = set()
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            first = name.split("/", 1)[0]
            if first.endswith((".dist-info", ".data")):
                continue
            names.add(first[:-3] if first.endswith(".py") else first)
    return {n for n in names if n.isidentifier()}


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def plan(wheels_dir: Path) -> tuple[Path, list[Path], list[str]]:
    """The loda wheel, the dependency wheels to install, and the ones already satisfied."""
    wheels = sorted(wheels_dir.glob("*.whl"))
    lodas = [w for w in wheels if w.name.startswith("loda-")]
    if len(lodas) != 1:
        raise SystemExit(
            f"gpu_install: {wheels_dir} holds {len(lodas)} loda wheels, expected 1 "
            "(make the bundle here: bash bench/gpu_bundle.sh)"
        )
    install, present = [], []
    for wheel in wheels:
        if wheel in lodas:
            continue
        modules = top_level_modules(wheel)
        if modules and any(importable(m) for m in modules):
            present.append(wheel.name)
        else:
            install.append(wheel)
    return lodas[0], install, present


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wheels", type=Path, required=True, help="folder of .whl files")
    p.add_argument("--target", type=Path, required=True, help="an empty folder to install into")
    args = p.parse_args(argv)
    if not args.wheels.is_dir():
        print(
            f"gpu_install: no wheels at {args.wheels} (bash bench/gpu_bundle.sh)", file=sys.stderr
        )
        return 1
    loda, deps, present = plan(args.wheels)
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--disable-pip-version-check", "--quiet", "--target", str(args.target)]
    done = subprocess.run([*cmd, str(loda), *map(str, deps)], check=False)
    if done.returncode != 0:
        print(f"gpu_install: pip exited with {done.returncode}", file=sys.stderr)
        return 1
    record = {
        "target": str(args.target.resolve()),
        "python": sys.executable,
        "loda_wheel": loda.name,
        "installed": [loda.name, *(w.name for w in deps)],
        "already_present": present,
    }
    path = args.target / RECORD
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
