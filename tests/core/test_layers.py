"""The layers import in one direction, checked by import-linter's contracts (``.importlinter``).

import-linter (grimp) finds a package's modules on disk, and ``loda.export``, ``loda.runtime`` and
``loda.calib`` live in their own folders (pyproject maps them), so the check runs over a tree of
symlinks laid out as the import names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]


def _import_tree(dest: Path) -> Path:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    for package, folder in mapping.items():
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).rglob("*.py"):
            link = target / source.relative_to(ROOT / folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)
    return dest


def test_import_contracts_hold(tmp_path):
    tree = _import_tree(tmp_path / "tree")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache",
         str(ROOT / ".importlinter")],
        capture_output=True, text=True, check=False, cwd=tree, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_library_module_is_under_the_no_cli_contract(tmp_path):
    """A new module cannot slip past the contract: every module that is not a command-line
    module (``cli``, ``*_cli``, ``clitools``, ``launch``) is listed in it."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    listed = set(config["importlinter:contract:cli"]["source_modules"].split())
    tree = _import_tree(tmp_path / "tree")
    modules = {
        ".".join(p.relative_to(tree).with_suffix("").parts)
        for p in tree.rglob("*.py")
        if p.name != "__init__.py"
    }
    library = {
        m for m in modules
        if not m.endswith(("cli", "_cli")) and m.rpartition(".")[2] not in ("clitools", "launch")
    }  # fmt: skip
    assert library - listed == set(), "add these to .importlinter's cli contract"
