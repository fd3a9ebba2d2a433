from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loda.model import LoDa, create_model, perturb

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_session() -> LoDa:
    torch.manual_seed(0)
    return perturb(create_model("loda_tiny")).eval()


@pytest.fixture
def tiny_model(tiny_model_session) -> LoDa:
    return copy.deepcopy(tiny_model_session)


@pytest.fixture(scope="session")
def b16_model() -> LoDa:
    torch.manual_seed(1)
    return perturb(create_model("loda_b16"), seed=1).eval()


def write_photo(path, width=512, height=384, seed=0, mode="RGB", **save_kwargs):
    """A textured test image (smooth gradients plus noise) so crops differ from each other."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), (xx + yy) % 256], axis=-1
    )
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).convert(mode).save(path, **save_kwargs)
    return path


@pytest.fixture
def photo(tmp_path):
    return write_photo(tmp_path / "photo.jpg", quality=90)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def run_bench(script: str, *args) -> subprocess.CompletedProcess:
    """``python bench/SCRIPT ARGS...`` from the repository root, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def micro(tmp_path_factory):
    """A loda_micro checkpoint and its verified FP32 ONNX export (tests/micro.py), made once."""
    from micro import micro_export

    return micro_export(tmp_path_factory)


@pytest.fixture(autouse=True)
def _pristine_loda_logging():
    """Commands run in-process configure the ``loda`` loggers (``configure_logging``): a stream
    handler bound to that test's captured stderr, no propagation. Put every ``loda`` logger back
    as the library leaves it (no handlers, propagating, level unset) after each test."""
    yield
    import logging

    names = ["loda", *(n for n in logging.root.manager.loggerDict if n.startswith("loda."))]
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
