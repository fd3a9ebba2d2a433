"""Torch-free modules stay torch-free (the runtime depends on it)."""

from __future__ import annotations

import pytest
from conftest import run_python


@pytest.mark.parametrize(
    "module",
    [
        "loda",
        "loda.preprocess",
        "loda.metrics",
        "loda.config",
        "loda.metadata",
        "loda.runtime",
        "loda.artifacts",
        "loda.sources",
        "loda.data.images",
        "loda.data.datasets",
        "loda.compare",
        "loda.calib",
        "loda.calib.int8",
        "loda.calib.fp16",
    ],
)
def test_module_does_not_import_torch(module):
    out = run_python(f"import sys, {module}; print('torch' in sys.modules, 'timm' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
