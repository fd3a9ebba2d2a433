"""bench_preprocess.py's null changes: real changes of the exact path's pixels, scored and
reported beside the fast path."""

from __future__ import annotations

import importlib
import io
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, write_photo
from PIL import Image

from loda.preprocess import PreprocessConfig, preprocess_image


def _bench(name: str):
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


def _smooth_jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    return _bench("bench_preprocess").jpeg_bytes(np.asarray(big))


@pytest.mark.parametrize("orientation", [1, 6])
def test_float_resize_moves_pixels_by_rounding_only(orientation):
    bench = _bench("bench_preprocess")
    cfg = PreprocessConfig()
    data = _smooth_jpeg(1600, 1200, seed=0)
    if orientation != 1:  # stored landscape, shown portrait: both paths must turn it
        im = Image.open(io.BytesIO(data))
        exif = im.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
        data = buf.getvalue()
    exact = preprocess_image(data, cfg).astype(np.int16)
    null = bench.float_resize_crops(data, cfg).astype(np.int16)
    assert null.shape == exact.shape
    diff = np.abs(null - exact)
    assert diff.max() <= 1  # the same filter: only the fixed-point rounding differs
    assert 0 < np.count_nonzero(diff) < diff.size // 2


def test_large_fidelity_scores_every_null_and_the_report_shows_them(tmp_path):
    bench = _bench("bench_preprocess")
    sections = _bench("report_sections")
    chosen = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        write_photo(path, 64, 48, seed=i)
        chosen.append(SimpleNamespace(path=path, mos=float(i)))
    calls = []

    def scores(*crop_sets):
        calls.append(len(crop_sets))
        return [float(c.mean()) for c in crop_sets]  # a real function of the pixels

    result = bench._large_fidelity(chosen, (1600, 1200), 5.0, scores, nulls=True)
    assert calls == [2 + len(bench.NULLS)] * len(chosen)
    assert set(result["nulls"]) == set(bench.NULLS)
    for key, row in result["nulls"].items():
        assert row["what"] == bench.NULLS[key] and row["n"] == len(chosen)
        assert 0.0 <= row["abs_dsrcc"] <= 2.0 and row["mean_abs_dscore"] > 0.0
    record = {
        "machine": {"cpu": "Some CPU", "cpus": 2, "date": "2026-01-02T00:00:00Z"},
        "speed": {},
        "fidelity": {"model": "a model", "large_jpeg": result},
    }
    text = "\n".join(sections.bench_preprocess([("bench_preprocess.json", record)]))
    for row in result["nulls"].values():
        assert f"null change, {row['what']}: |dSRCC| {row['abs_dsrcc']:.5f}" in text


def test_finer_crops_decode_one_scale_finer_than_the_fast_path():
    bench = _bench("bench_preprocess")
    cfg = PreprocessConfig()
    assert bench.finer_crops(_smooth_jpeg(2048, 1536, seed=2), cfg) is None  # fast path: 1/2
    data = _smooth_jpeg(4000, 3000, seed=2)  # fast path: 1/4, so finer is 1/2
    finer = bench.finer_crops(data, cfg)
    exact = preprocess_image(data, cfg)
    fast = preprocess_image(data, PreprocessConfig(decode="fast"))
    assert finer.shape == exact.shape
    assert not np.array_equal(finer, fast) and not np.array_equal(finer, exact)
