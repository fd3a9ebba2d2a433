"""Preprocessing speed per core (exact vs fast decode) and the fast path's fidelity, in one run.

1. Speed. One process, one thread (Pillow decodes and resizes on the calling thread), the same
   files for every path, interleaved rounds (each round runs every path on every image, the
   path order rotating, so machine noise hits all alike); medians are reported. Paths:

   - ``before``: the pipeline as it was before the exact path was streamlined, rebuilt here
     step for step: ``Image.open`` -> ``load`` -> ``ImageOps.exif_transpose`` (a copy) ->
     ``np.asarray`` -> ``Image.fromarray`` -> ``resize`` -> ``np.asarray`` -> crops;
   - ``exact``: :func:`loda.preprocess.preprocess_image` with ``decode="exact"`` (the default);
   - ``fast``: the same with ``decode="fast"``.

   Split: ``decode`` is timed on its own (exact: open + load + EXIF transpose; fast: open +
   ``draft`` + load; before: its decode steps up to the array), ``crop`` is
   ``crop_positions`` + ``extract_crops`` on the resized image, and ``resize`` is the rest of
   the whole call (whole - decode - crop). images/s per core = 1 / median(whole). Each sample
   is also timed in CPU time of the process (``time.process_time``; one thread, so one core):
   ``cpu_whole_s`` / ``cpu_decode_s`` and ``fast_vs_exact_cpu``. On a machine shared with other
   jobs the wall times include waiting for a core, the CPU times much less so: read the CPU
   ratio there, and the wall figures on an idle machine (where the two agree).

   Images: the demo references (scikit-image / scikit-learn photos, :mod:`loda.data.demo`)
   fitted to 1, 3, 12 and 24 MP with Pillow's bicubic filter, plus Gaussian grain (sigma
   ``--grain``, default 5 grey levels) so that the files carry camera-like fine detail, saved as
   JPEG quality 90 (Pillow's default 4:2:0 subsampling) and, for 12 MP, as PNG.

2. Fidelity (``--fidelity-images N``, 0 skips it). A model (``--checkpoint``, or a seeded
   random-init ``--config`` with its learner scale factors and BatchNorm buffers perturbed as in
   the tests) scores images through the exact and the fast path; reported: max and mean
   |dscore|, SRCC between the two paths' scores, and |dSRCC| = |SRCC(exact, MOS) - SRCC(fast,
   MOS)| against the demo set's pseudo-MOS. Sets: the demo set as made by ``loda-data demo``
   (512x384 PNG: only JPEGs have a fast path, so its crops are the exact ones, which is
   checked), and N of its images upscaled to each ``--large-sizes`` size (default 4000x3000;
   bicubic + the same grain) as JPEG quality 90: key ``large_jpeg`` for 4000x3000,
   ``large_jpeg_WxH`` for the others. ``--fidelity-nulls`` also scores the exact path under
   changes that should not matter (the JPEG at quality 91, another grain draw, the resize in
   float32 rounded once): the |dSRCC| the measurement resolves, beside the fast path's.

JSON to ``--json`` (default ``OUT/bench_preprocess.json``), the tables to stdout, progress to
stderr. Run: ``.venv/bin/python bench/bench_preprocess.py --out out/bench/preprocess``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, features

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python bench/bench_preprocess.py`` from a checkout
    sys.path.insert(0, str(ROOT))

from loda.metadata import git_commit  # noqa: E402
from loda.preprocess import (  # noqa: E402
    FAST_MARGIN,
    RESIZE_FILTERS,
    PreprocessConfig,
    crop_positions,
    extract_crops,
    preprocess_image,
    resized_size,
)

_STARTED = time.perf_counter()
SIZES = {  # label -> (width, height, format)
    "1MP-jpeg": (1152, 864, "JPEG"),
    "3MP-jpeg": (2048, 1536, "JPEG"),
    "12MP-jpeg": (4000, 3000, "JPEG"),
    "24MP-jpeg": (6000, 4000, "JPEG"),
    "12MP-png": (4000, 3000, "PNG"),
}
PATHS = ("before", "exact", "fast")
BOOTSTRAP = 1000  # resamples for the confidence interval of dSRCC
REFERENCES = ("chelsea", "coffee", "rocket", "astronaut", "motorcycle", "china")
LARGE = (4000, 3000)  # the size whose result is "large_jpeg"


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def grainy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Add Gaussian grain (camera-like fine detail) to a uint8 image, clipped to 0..255."""
    if sigma <= 0:
        return img
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def make_speed_images(out: Path, per_size: int, grain: float) -> dict[str, list[Path]]:
    from loda.data.demo import list_references, load_reference

    available = [r for r in REFERENCES if r in list_references()]
    if len(available) < per_size:
        raise SystemExit(
            f"need {per_size} demo references, found {available}: pip install loda[demo]"
        )
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {}
    for label, (w, h, fmt) in SIZES.items():
        files[label] = []
        for i, ref in enumerate(available[:per_size]):
            ext = "jpg" if fmt == "JPEG" else "png"
            path = out / f"{ref}_{w}x{h}_g{grain:g}.{ext}"
            if not path.is_file():
                img = grainy(load_reference(ref, (w, h)), grain, seed=i)
                kwargs = {"quality": 90} if fmt == "JPEG" else {"compress_level": 6}
                tmp = path.with_suffix(".tmp")
                Image.fromarray(img).save(tmp, format=fmt, **kwargs)
                tmp.replace(path)
                log(f"made {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
            files[label].append(path)
    return files


# --------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------


def _before_decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(im)))


def _before_whole(path: Path, cfg: PreprocessConfig) -> np.ndarray:
    arr = _before_decode(path)
    h, w = arr.shape[:2]
    out = Image.fromarray(arr).resize(
        resized_size(w, h, cfg.resize_short), Image.Resampling.BICUBIC
    )
    resized = np.ascontiguousarray(np.asarray(out))
    pos = crop_positions(*resized.shape[:2], cfg)
    return extract_crops(resized, pos, cfg.crop_size)


def _exact_decode(path: Path) -> None:
    with Image.open(path) as im:
        im.load()
        ImageOps.exif_transpose(im, in_place=True)


def _fast_decode(path: Path, short: int) -> None:
    with Image.open(path) as im:
        if im.format in ("JPEG", "MPO"):
            im.draft(None, (short, short))
        im.load()


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()`` (process CPU time: one thread, so one core)."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def measure_speed(files: dict[str, list[Path]], rounds: int) -> dict[str, Any]:
    exact = PreprocessConfig()
    fast = PreprocessConfig(decode="fast")
    steps: dict[str, dict[str, Callable[[Path], Any]]] = {
        "before": {
            "whole": lambda p: _before_whole(p, exact),
            "decode": _before_decode,
        },
        "exact": {
            "whole": lambda p: preprocess_image(p, exact),
            "decode": _exact_decode,
        },
        "fast": {
            "whole": lambda p: preprocess_image(p, fast),
            "decode": lambda p: _fast_decode(p, fast.resize_short),
        },
    }
    results: dict[str, Any] = {}
    for label, paths in files.items():
        steps_timed = ("whole", "decode", "crop", "cpu_whole", "cpu_decode")
        samples = {(k, s): [] for k in PATHS for s in steps_timed}
        resized = {}
        for p in paths:  # warm-up (file cache, code paths) and the resized image for crops
            for k in PATHS:
                steps[k]["whole"](p)
            with Image.open(p) as im:
                w, h = ImageOps.exif_transpose(im).size
            resized[p] = np.zeros((*resized_size(w, h, 384)[::-1], 3), np.uint8)
        for r in range(rounds):
            order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
            for p in paths:
                for k in order:
                    for step in ("whole", "decode"):
                        wall, cpu = _timed(lambda k=k, p=p, step=step: steps[k][step](p))
                        samples[(k, step)].append(wall)
                        samples[(k, f"cpu_{step}")].append(cpu)
                    img = resized[p]
                    wall, _ = _timed(
                        lambda img=img: extract_crops(
                            img, crop_positions(*img.shape[:2], exact), 224
                        )
                    )
                    samples[(k, "crop")].append(wall)
        row: dict[str, Any] = {"images": [p.name for p in paths], "rounds": rounds}
        for k in PATHS:
            med = {s: statistics.median(samples[(k, s)]) for s in steps_timed}
            row[k] = {
                "whole_s": med["whole"],
                "decode_s": med["decode"],
                "resize_s": max(0.0, med["whole"] - med["decode"] - med["crop"]),
                "crop_s": med["crop"],
                "images_per_s": 1.0 / med["whole"],
                "cpu_whole_s": med["cpu_whole"],
                "cpu_decode_s": med["cpu_decode"],
                "images_per_cpu_s": 1.0 / med["cpu_whole"],
            }
        row["fast_vs_exact"] = row["exact"]["whole_s"] / row["fast"]["whole_s"]
        row["fast_vs_exact_cpu"] = row["exact"]["cpu_whole_s"] / row["fast"]["cpu_whole_s"]
        row["exact_vs_before"] = row["before"]["whole_s"] / row["exact"]["whole_s"]
        row["load_average_end"] = load_average()
        results[label] = row
        log(
            f"{label}: before {row['before']['images_per_s']:.1f}/s, exact "
            f"{row['exact']['images_per_s']:.1f}/s, fast {row['fast']['images_per_s']:.1f}/s; "
            f"fast vs exact {row['fast_vs_exact']:.2f}x wall, {row['fast_vs_exact_cpu']:.2f}x "
            f"CPU time; load {row['load_average_end']}"
        )
    return results


# --------------------------------------------------------------------------------------------
# Fidelity
# --------------------------------------------------------------------------------------------


def _model(checkpoint: Path | None, config: str):
    import torch

    from loda.model import create_model, perturb

    torch.set_num_threads(os.cpu_count() or 1)  # inference only; timings are done by then
    if checkpoint is not None:
        from loda.checkpoint import load_checkpoint

        model, _ = load_checkpoint(checkpoint)
        return model.eval(), f"checkpoint {checkpoint}"
    torch.manual_seed(0)
    model = perturb(create_model(config), seed=0)  # every learner path matters
    return model.eval(), f"random-init {config} (seed 0, perturbed)"


def _compare(exact: list[float], fast: list[float], mos: list[float]) -> dict[str, Any]:
    from loda.metrics import srcc

    e, f, m = np.asarray(exact), np.asarray(fast), np.asarray(mos)
    d = np.abs(e - f)
    s_e, s_f = srcc(e, m), srcc(f, m)
    # paired bootstrap over the images: how far dSRCC itself moves with the sample (a single
    # rank swap in a few hundred images moves it by ~0.001)
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(e), len(e))
        boot.append(srcc(f[i], m[i]) - srcc(e[i], m[i]))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "n": len(e),
        "dsrcc": float(s_f - s_e),
        "dsrcc_ci95": [float(lo), float(hi)],
        "max_abs_dscore": float(d.max()),
        "mean_abs_dscore": float(d.mean()),
        "score_sd": float(e.std()),
        "srcc_exact_vs_fast": float(srcc(e, f)),
        "srcc_exact_mos": float(s_e),
        "srcc_fast_mos": float(s_f),
        "abs_dsrcc": float(abs(s_e - s_f)),
    }


def measure_fidelity(
    out: Path,
    n_large: int,
    grain: float,
    checkpoint: Path | None,
    config: str,
    demo: Path | None,
    large_sizes: list[tuple[int, int]],
    variants: bool = False,
    nulls: bool = False,
) -> dict[str, Any]:
    from loda.data.datasets import read_dataset
    from loda.data.demo import make_demo_set
    from loda.inference import score_crops

    model, model_desc = _model(checkpoint, config)
    exact, fast = PreprocessConfig(), PreprocessConfig(decode="fast")
    if demo is None:
        demo = out / "demo"
        if not (demo / "demo.csv").is_file():
            log(f"making the demo set in {demo}")
            make_demo_set(demo, seed=0)
        demo = demo / "demo.csv"
    samples = read_dataset("csv", demo).samples

    def scores(*crop_sets: np.ndarray) -> list[float]:
        """Mean crop score of each image, its crops scored together in one batch."""
        out = score_crops(model, np.concatenate(crop_sets), exact, batch_size=64)
        return [float(c.mean()) for c in np.split(out, len(crop_sets))]

    log(f"fidelity: demo set, {len(samples)} images, {model_desc}")
    pairs = [(preprocess_image(s.path, exact), preprocess_image(s.path, fast)) for s in samples]
    identical = sum(np.array_equal(ce, cf) for ce, cf in pairs)
    demo_result: dict[str, Any] = {"source": str(demo), "n": len(samples)}
    demo_result["identical_crops"] = identical
    if identical == len(samples):
        # the same crops give the same scores: nothing to run
        demo_result.update(max_abs_dscore=0.0, mean_abs_dscore=0.0, abs_dsrcc=0.0)
    else:
        demo_e, demo_f = [], []
        for ce, cf in pairs:
            e, f = scores(ce, cf)
            demo_e.append(e)
            demo_f.append(f)
        demo_result.update(_compare(demo_e, demo_f, [s.mos for s in samples]))
    result: dict[str, Any] = {"model": model_desc, "demo_set": demo_result}
    if n_large > 0:
        step = max(1, len(samples) // n_large)
        chosen = samples[::step][:n_large]
        for size in large_sizes:
            key = "large_jpeg" if size == LARGE else f"large_jpeg_{size[0]}x{size[1]}"
            result[key] = _large_fidelity(chosen, size, grain, scores, variants, nulls)
    return result


def finer_crops(data: bytes, cfg: PreprocessConfig) -> np.ndarray | None:
    """The fast path one DCT scale finer (1/2 where it decodes at 1/4; None where that is the
    full-size decode), resized and cropped as the fast path does: is the error the scale's?"""
    keep = math.ceil(FAST_MARGIN * cfg.resize_short)
    with Image.open(io.BytesIO(data)) as im:  # the fast path's request: which scale Pillow picks
        w, h = im.size
        im.draft(None, (keep, keep))
        scale = round(w / im.size[0])
    if scale < 4:
        return None
    finer = scale // 2
    with Image.open(io.BytesIO(data)) as im:
        drafted = im.draft(None, (-(-w // finer), -(-h // finer)))
        im.load()
        size = resized_size(w, h, cfg.resize_short)
        small = np.asarray(im.resize(size, RESIZE_FILTERS[cfg.resize_filter], box=drafted[1]))
    return preprocess_image(small, cfg)  # already at its size: the crops only


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def float_resize_crops(data: bytes, cfg: PreprocessConfig) -> np.ndarray:
    """The exact path's resize computed in float32 (Pillow's ``F`` mode, per channel) and
    rounded to nearest once, instead of Pillow's 8-bit fixed-point resampler: the same
    filter, different rounding (a null change)."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    size = resized_size(*rgb.size, cfg.resize_short)
    filt = RESIZE_FILTERS[cfg.resize_filter]
    bands = [np.asarray(b.convert("F").resize(size, filt)) for b in rgb.split()]
    small = np.clip(np.rint(np.stack(bands, -1)), 0, 255).astype(np.uint8)
    return preprocess_image(small, cfg)  # already at its size: the crops only


# The null changes (--fidelity-nulls): the exact path on inputs or arithmetic that should not
# matter, scored like the fast path, to show what |dSRCC| the measurement itself resolves.
NULLS = {
    "jpeg_q91": "exact path, the JPEG saved at quality 91 instead of 90",
    "grain_draw2": "exact path, another draw of the grain",
    "float_resize": "exact path's resize in float32, rounded once (Pillow's is 8-bit fixed point)",
}


def _large_fidelity(
    chosen: list[Any],
    size: tuple[int, int],
    grain: float,
    scores: Callable[..., list[float]],
    variants: bool = False,
    nulls: bool = False,
) -> dict[str, Any]:
    """Demo images upscaled to ``size`` with grain, as JPEG q90: exact vs fast scores (with
    ``variants``, exact vs the fast path one DCT scale finer: key ``finer``; with ``nulls``,
    exact vs each of :data:`NULLS`: key ``nulls``)."""
    exact, fast = PreprocessConfig(), PreprocessConfig(decode="fast")
    log(f"fidelity: {len(chosen)} demo images upscaled to {size[0]}x{size[1]}")
    shape = (size[1], size[0], 3)
    grain_field = np.random.default_rng(1).normal(0.0, grain, shape).astype(np.float32)
    grain_field2 = (
        np.random.default_rng(2).normal(0.0, grain, shape).astype(np.float32) if nulls else None
    )
    cols: dict[str, list[float]] = {}
    for i, s in enumerate(chosen):
        with Image.open(s.path) as im:
            big = np.asarray(im.convert("RGB").resize(size, Image.Resampling.BICUBIC), np.float32)
        arr = np.clip(big + grain_field, 0, 255).astype(np.uint8)
        data = jpeg_bytes(arr)
        crops = {"jpeg_e": preprocess_image(data, exact), "jpeg_f": preprocess_image(data, fast)}
        if variants:
            finer = finer_crops(data, exact)
            if finer is not None:
                crops["jpeg_finer"] = finer
        if grain_field2 is not None:
            crops["jpeg_q91"] = preprocess_image(jpeg_bytes(arr, 91), exact)
            arr2 = np.clip(big + grain_field2, 0, 255).astype(np.uint8)
            crops["grain_draw2"] = preprocess_image(jpeg_bytes(arr2), exact)
            crops["float_resize"] = float_resize_crops(data, exact)
        for key, value in zip(crops, scores(*crops.values()), strict=True):
            cols.setdefault(key, []).append(value)
        if (i + 1) % 25 == 0:
            log(f"  {i + 1}/{len(chosen)}")
    mos = [s.mos for s in chosen]
    result = {
        "size": f"{size[0]}x{size[1]}",
        "grain_sigma": grain,
        **_compare(cols["jpeg_e"], cols["jpeg_f"], mos),
    }
    if cols.get("jpeg_finer"):
        result["finer"] = _compare(cols["jpeg_e"], cols["jpeg_finer"], mos)
    if nulls:
        result["nulls"] = {
            k: {"what": what, **_compare(cols["jpeg_e"], cols[k], mos)} for k, what in NULLS.items()
        }
    return result


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def print_tables(report: dict[str, Any]) -> None:
    print(f"CPU: {report['machine']['cpu']} ({report['machine']['cpus']} usable CPUs); one thread")
    print(
        "| image | path | decode s | resize s | crop s | whole s | images/s per core | vs exact "
        "| CPU decode s | CPU whole s | images per CPU-s | vs exact (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, row in report["speed"].items():
        for k in PATHS:
            r = row[k]
            ratio = row["exact"]["whole_s"] / r["whole_s"]
            cpu_ratio = row["exact"]["cpu_whole_s"] / r["cpu_whole_s"]
            print(
                f"| {label} | {k} | {r['decode_s']:.4f} | {r['resize_s']:.4f} | "
                f"{r['crop_s']:.4f} | {r['whole_s']:.4f} | {r['images_per_s']:.1f} | "
                f"{ratio:.2f}x | {r['cpu_decode_s']:.4f} | {r['cpu_whole_s']:.4f} | "
                f"{r['images_per_cpu_s']:.1f} | {cpu_ratio:.2f}x |"
            )
    fid = report.get("fidelity")
    if fid:
        print(f"\nFidelity, fast vs exact ({fid['model']}):")
        print(
            "| set | n | max abs dscore | mean abs dscore | score sd | SRCC exact~fast | |dSRCC| "
            "| dSRCC 95% CI |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for key in [k for k in fid if k == "demo_set" or k.startswith("large_jpeg")]:
            r = fid[key]
            if "srcc_exact_vs_fast" not in r:
                print(
                    f"| {key} | {r['n']} | 0 | 0 | - | 1 (crops identical: "
                    f"{r['identical_crops']}/{r['n']}) | 0 | - |"
                )
                continue
            nulls = r.get("nulls", {})
            labelled = [(key, r), (f"{key}, one scale finer", r.get("finer"))]
            labelled += [(f"{key}, null: {k}", v) for k, v in nulls.items()]
            for label, row in labelled:
                if row is not None:
                    print(
                        f"| {label} | {row['n']} | {row['max_abs_dscore']:.5f} | "
                        f"{row['mean_abs_dscore']:.5f} | {row['score_sd']:.4f} | "
                        f"{row['srcc_exact_vs_fast']:.5f} | {row['abs_dsrcc']:.5f} | "
                        f"[{row['dsrcc_ci95'][0]:+.4f}, {row['dsrcc_ci95'][1]:+.4f}] |"
                    )


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench/preprocess"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--images-per-size", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--grain", type=float, default=5.0)
    ap.add_argument(
        "--sizes", nargs="*", choices=sorted(SIZES), default=list(SIZES),
        help="image sizes of the speed part (none: fidelity only)",
    )  # fmt: skip
    ap.add_argument("--fidelity-images", type=int, default=120)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--config", default="loda_micro")
    ap.add_argument("--demo", type=Path, default=None, help="an existing demo.csv")
    ap.add_argument(
        "--large-sizes", nargs="+", type=_size, default=[LARGE], metavar="WxH",
        help="sizes of the upscaled JPEGs of the fidelity part (default 4000x3000)",
    )  # fmt: skip
    ap.add_argument(
        "--fidelity-variants", action="store_true",
        help="also score the fast path one DCT scale finer (1/2 where it uses 1/4)",
    )  # fmt: skip
    ap.add_argument(
        "--fidelity-nulls", action="store_true",
        help="also score null changes of the exact path (JPEG quality 91, another grain draw, "
        "float32 resize) to calibrate |dSRCC|",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.images_per_size < 1 or args.rounds < 1 or args.fidelity_images < 0:
        ap.error("--images-per-size and --rounds must be >= 1, --fidelity-images >= 0")
    for name in ("checkpoint", "demo"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            ap.error(f"--{name} {path}: no such file")

    report: dict[str, Any] = {
        "machine": {
            "cpu": cpu_model(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(),
            "pillow": Image.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"),
            "numpy": np.__version__,
            "load_average_start": load_average(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git_commit": git_commit(),
        },
        "settings": {
            "images_per_size": args.images_per_size,
            "rounds": args.rounds,
            "grain_sigma": args.grain,
            "jpeg_quality": 90,
            "threads": 1,
        },
    }
    files = {}
    if args.sizes:
        files = make_speed_images(args.out / "images", args.images_per_size, args.grain)
    files = {k: v for k, v in files.items() if k in args.sizes}
    report["speed"] = measure_speed(files, args.rounds)
    json_path = args.json or args.out / "bench_preprocess.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")  # the speed part, kept if stopped
    if args.fidelity_images:
        report["fidelity"] = measure_fidelity(
            args.out,
            args.fidelity_images,
            args.grain,
            args.checkpoint,
            args.config,
            args.demo,
            args.large_sizes,
            args.fidelity_variants,
            args.fidelity_nulls,
        )
    report["machine"]["load_average_end"] = load_average()
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    log(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
