"""The built-in demo IQA dataset: a small KADID-like set, made offline in about half a minute.

``make_demo_set(DIR)`` (CLI: ``loda-data demo DIR``) writes::

    DIR/dataset.json            what was made and how (seed, rule, references, distortions)
    DIR/demo.csv                header ``path,mos,ref``; one row per distorted image
    DIR/images/<ref>_<distortion>_<level>.png
    DIR/references/<ref>.png    the prepared pristine references (not rows of the CSV)

References. Real photographs that ship inside installed packages, read straight from the
package files (never through a downloader): scikit-image's ``skimage/data`` directory and
scikit-learn's ``load_sample_image`` JPEGs (see ``_SOURCES``). Grayscale files are converted to
RGB (R = G = B). Each one is prepared deterministically with ``PIL.ImageOps.fit(img, size,
BICUBIC, centering=(0.5, 0.5))``: the largest centred crop with the target aspect ratio, then a
bicubic resize to ``size`` (default 512x384, landscape, as in KADID-10k). Files missing from the
installed package versions are skipped; the full set needs at least 12.

Distortions. ``DISTORTIONS[name](img, level, rng) -> img`` on HxWx3 uint8 arrays, levels 1-5,
strength strictly increasing with the level (parameters in ``DISTORTION_LEVELS``):

    blur        Gaussian blur, sigma in pixels (scipy.ndimage, reflect borders)
    noise       additive white Gaussian noise per RGB channel, std in grey levels
    jpeg        JPEG compression (Pillow, in memory), quality factor
    contrast    contrast reduction: mean + alpha * (x - mean), mean over the whole image
    saturation  chroma scaled by a factor in BT.601 YCbCr (luma untouched); colour only
    pixelate    box downscale by a factor, nearest-neighbour upscale back
    motion      linear motion blur, kernel length in pixels, direction drawn from ``rng``
    quantize    uniform quantisation of each RGB channel to N levels (posterisation)

``rng`` is a fresh ``numpy.random.default_rng([seed, crc32("<ref>/<distortion>")])`` for each
image: the same stream for all five levels of one (reference, distortion) pair, so the noise
field and the motion direction are shared across levels and only the strength grows. Only
``noise`` and ``motion`` use it. Colour-only distortions (``saturation``) are skipped for
grayscale references, where they would be the identity. References themselves are not
samples (as in KADID-10k).

Pseudo-MOS (full-reference rule, higher is better, range [1, 5])::

    Y      = BT.601 full-range luma of reference and distorted image (float64, 0-255)
    Cb, Cr = BT.601 full-range chroma of the 2x2 block-mean image (4:2:0-style half
             resolution; a trailing odd row/column is dropped), signed: offset 128 removed,
             so SSIM's mean term compares chroma magnitude and catches desaturation
    S_c = SSIM(ref_c, dist_c)  for c in Y, Cb, Cr   (Wang et al. 2004: 11x11 Gaussian window,
          sigma 1.5, K1 0.01, K2 0.03, data_range 255, population covariance, mean over the
          valid interior; equals skimage.metrics.structural_similarity(x, y, data_range=255,
          gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
    Q   = clip(0.8 * S_Y + 0.1 * S_Cb + 0.1 * S_Cr, 0, 1)
    MOS = 1 + 4 * Q ** 3

The cube spreads the scores: the SSIM of mild distortions sits near 1, so a linear map would
crowd the top of the scale. On the default set (15 references, 575 images) the MOS spans
1.02-4.95, mean 3.22, sd 1.08, and falls strictly with the level for every (reference,
distortion) pair. The MOS is written with 4 decimals.

Reproducibility: the same seed, size, references and package versions (numpy, scipy, Pillow and
its bundled zlib/libjpeg) give byte-identical files. PNGs are written by Pillow with fixed
options and no metadata; CSV and JSON have fixed order and formatting. Versions are recorded
in ``dataset.json``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from loda.atomic import write_bytes_atomic
from loda.errors import LodaError

__all__ = [
    "COLOR_ONLY",
    "DATASET_NAME",
    "DISTORTIONS",
    "DISTORTIONS_BY_VALUE",
    "DISTORTION_LEVELS",
    "LEVELS",
    "DemoDataError",
    "is_demo_dir",
    "list_references",
    "load_reference",
    "make_demo_set",
    "pseudo_mos",
]

DATASET_NAME = "loda-demo"
CSV_NAME = "demo.csv"
META_NAME = "dataset.json"
LEVELS = 5
MIN_REFERENCES = 12
DEFAULT_SIZE = (512, 384)
MOS_RULE = (
    "MOS = 1 + 4 * clip(0.8*SSIM_Y + 0.1*SSIM_Cb + 0.1*SSIM_Cr, 0, 1)**3; SSIM between "
    "reference and distorted image per BT.601 YCbCr plane (Y full size; Cb/Cr signed, of the "
    "2x2 block-mean image; Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03, data_range 255)"
)
_INSTALL_HINT = "pip install 'loda[demo]' (scikit-image>=0.22 and scikit-learn>=1.3)"


class DemoDataError(LodaError):
    """The demo set cannot be made (missing reference packages, bad target or arguments)."""


# ---------------------------------------------------------------------------- references


@dataclass(frozen=True)
class _Source:
    id: str
    package: str  # "skimage" or "sklearn"
    file: str


# Real photographs only. Left out on purpose: moon.png (a 2x nearest-neighbour upscale, i.e.
# already pixelated), clock_motion.png (motion-blurred), motorcycle_right.png (near-duplicate
# of motorcycle_left), and the synthetic, text or cell-microscopy images.
_SOURCES: tuple[_Source, ...] = (
    _Source("astronaut", "skimage", "astronaut.png"),
    _Source("chelsea", "skimage", "chelsea.png"),
    _Source("coffee", "skimage", "coffee.png"),
    _Source("rocket", "skimage", "rocket.jpg"),
    _Source("motorcycle", "skimage", "motorcycle_left.png"),
    _Source("hubble", "skimage", "hubble_deep_field.jpg"),
    _Source("ihc", "skimage", "ihc.png"),
    _Source("retina", "skimage", "retina.jpg"),
    _Source("camera", "skimage", "camera.png"),
    _Source("coins", "skimage", "coins.png"),
    _Source("grass", "skimage", "grass.png"),
    _Source("gravel", "skimage", "gravel.png"),
    _Source("brick", "skimage", "brick.png"),
    _Source("china", "sklearn", "china.jpg"),
    _Source("flower", "sklearn", "flower.jpg"),
)
_SOURCE_BY_ID = {s.id: s for s in _SOURCES}


def _package_dir(package: str) -> Path | None:
    """Directory of the package's bundled images (found without importing the package, which
    for scikit-learn takes seconds), or None if the package is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "data" if package == "skimage" else root / "datasets" / "images"


def _source_path(src: _Source) -> Path | None:
    base = _package_dir(src.package)
    if base is None:
        return None
    path = base / src.file
    return path if path.is_file() else None


def list_references() -> list[str]:
    """Ids of the reference photographs available in the installed packages, in set order."""
    return [s.id for s in _SOURCES if _source_path(s) is not None]


def load_reference(ref_id: str, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """The prepared reference ``ref_id``: HxWx3 uint8, centre-cropped and resized to ``size``
    (width, height) with Pillow's bicubic filter."""
    src = _SOURCE_BY_ID.get(ref_id)
    if src is None:
        raise DemoDataError(f"unknown reference {ref_id!r}; known: {', '.join(_SOURCE_BY_ID)}")
    path = _source_path(src)
    if path is None:
        raise DemoDataError(f"reference {ref_id!r} ({src.file}) is not installed; {_INSTALL_HINT}")
    with Image.open(path) as im:
        im.load()
        rgb = im.convert("RGB")
    fitted = ImageOps.fit(rgb, size, method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    return np.ascontiguousarray(np.asarray(fitted, dtype=np.uint8))


def _is_gray(img: np.ndarray) -> bool:
    return bool(
        np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    )


# ---------------------------------------------------------------------------- distortions

Distortion = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# name -> (parameter, values for levels 1..5); strength increases with the level.
DISTORTION_LEVELS: dict[str, tuple[str, tuple[float, ...]]] = {
    "blur": ("sigma_px", (0.7, 1.3, 2.2, 3.5, 5.5)),
    "noise": ("std", (4.0, 8.0, 14.0, 24.0, 40.0)),
    "jpeg": ("quality", (50, 25, 12, 6, 3)),
    "contrast": ("alpha", (0.8, 0.6, 0.45, 0.3, 0.18)),
    "saturation": ("chroma_factor", (0.7, 0.5, 0.3, 0.15, 0.0)),
    "pixelate": ("factor", (2, 3, 4, 6, 9)),
    "motion": ("length_px", (3, 6, 10, 15, 22)),
    "quantize": ("levels_per_channel", (24, 12, 7, 4, 3)),
}
COLOR_ONLY = frozenset({"saturation"})
_DESCRIPTIONS = {
    "blur": "Gaussian blur (scipy.ndimage.gaussian_filter, reflect borders)",
    "noise": "additive white Gaussian noise, independent per RGB channel",
    "jpeg": "JPEG compression (Pillow encode/decode in memory)",
    "contrast": "contrast reduction towards the image mean: mean + alpha * (x - mean)",
    "saturation": "chroma scaled in BT.601 YCbCr, luma unchanged",
    "pixelate": "box downscale by factor, nearest-neighbour upscale",
    "motion": "linear motion blur, direction drawn from rng (shared by all levels)",
    "quantize": "uniform quantisation of each RGB channel to N evenly spaced levels",
}


def _param(name: str, level: int) -> float:
    if not 1 <= level <= LEVELS:
        raise DemoDataError(f"level must be 1..{LEVELS}, got {level}")
    return DISTORTION_LEVELS[name][1][level - 1]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _blur(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(ndimage.gaussian_filter(img.astype(np.float64), (s, s, 0), mode="reflect"))


def _noise(img: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(img.astype(np.float64) + std * rng.standard_normal(img.shape))


def _jpeg(img: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=round(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _contrast(img: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float64)
    mean = x.mean()
    return _to_uint8(mean + alpha * (x - mean))


def _rgb_to_ycbcr(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 full-range YCbCr in float64 (element-wise arithmetic, no BLAS: reproducible)."""
    x = img.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return y, cb, cr


def _ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    cb = cb - 128.0
    cr = cr - 128.0
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return _to_uint8(np.stack([r, g, b], axis=-1))


def _saturation(img: np.ndarray, k: float, rng: np.random.Generator) -> np.ndarray:
    y, cb, cr = _rgb_to_ycbcr(img)
    return _ycbcr_to_rgb(y, 128.0 + k * (cb - 128.0), 128.0 + k * (cr - 128.0))


def _pixelate(img: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize(
        (max(1, round(w / f)), max(1, round(h / f))), Image.Resampling.BOX
    )
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)


def _motion_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised line of ``length`` pixels at ``angle`` (radians), bilinearly splatted."""
    size = length + 2
    kernel = np.zeros((size, size), dtype=np.float64)
    centre = (size - 1) / 2.0
    t = np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, 8 * length)
    xs = centre + t * np.cos(angle)
    ys = centre + t * np.sin(angle)
    x0 = np.floor(xs).astype(int)
    y0 = np.floor(ys).astype(int)
    fx = xs - x0
    fy = ys - y0
    for dy, dx, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(kernel, (y0 + dy, x0 + dx), wgt)
    return kernel / kernel.sum()


def _motion(img: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    length = round(length)
    angle = float(rng.uniform(0.0, np.pi))
    kernel = _motion_kernel(length, angle)
    x = img.astype(np.float64)
    out = np.stack([ndimage.convolve(x[..., c], kernel, mode="reflect") for c in range(3)], axis=-1)
    return _to_uint8(out)


def _quantize(img: np.ndarray, n: float, rng: np.random.Generator) -> np.ndarray:
    n = round(n)
    step = 255.0 / (n - 1)
    return _to_uint8(np.rint(img.astype(np.float64) / step) * step)


#: name -> distortion by its parameter value (``DISTORTION_LEVELS[name][0]``); integer
#: parameters (JPEG quality, motion length, quantisation levels) are rounded.
DISTORTIONS_BY_VALUE: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "blur": _blur,
    "noise": _noise,
    "jpeg": _jpeg,
    "contrast": _contrast,
    "saturation": _saturation,
    "pixelate": _pixelate,
    "motion": _motion,
    "quantize": _quantize,
}


def _at_level(name: str) -> Distortion:
    def distort(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
        return DISTORTIONS_BY_VALUE[name](img, _param(name, level), rng)

    distort.__name__ = f"{name}_at_level"
    return distort


#: name -> distortion at an integer level 1..5 (the demo set's images).
DISTORTIONS: dict[str, Distortion] = {name: _at_level(name) for name in DISTORTIONS_BY_VALUE}


def _rng(seed: int, ref_id: str, distortion: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{ref_id}/{distortion}".encode())])


# ---------------------------------------------------------------------------- pseudo-MOS

_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # radius 5: the 11x11 window of Wang et al. (and of skimage)
_SSIM_PAD = 5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2
_CHANNEL_WEIGHTS = (0.8, 0.1, 0.1)


def _gauss(x: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(x, _SSIM_SIGMA, truncate=_SSIM_TRUNCATE, mode="reflect")


def _planes(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y at full resolution; signed Cb, Cr (offset 128 removed) of the 2x2 block-mean image
    (4:2:0-style; a trailing odd row or column is dropped)."""
    x = img.astype(np.float64)
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]  # as in _rgb_to_ycbcr
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    x = x[:h, :w]
    half = (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) * 0.25
    _, cb, cr = _rgb_to_ycbcr(half)
    return y, cb - 128.0, cr - 128.0


class _RefStats:
    """Per-plane local statistics of a reference, computed once for all its distortions."""

    def __init__(self, img: np.ndarray) -> None:
        self.planes = _planes(img)
        self.mu = [_gauss(c) for c in self.planes]
        self.var = [_gauss(c * c) - m * m for c, m in zip(self.planes, self.mu, strict=True)]


def _ssim_plane(x: np.ndarray, mu_x: np.ndarray, var_x: np.ndarray, y: np.ndarray) -> float:
    mu_y = _gauss(y)
    var_y = _gauss(y * y) - mu_y * mu_y
    cov = _gauss(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / (
        (mu_x * mu_x + mu_y * mu_y + _C1) * (var_x + var_y + _C2)
    )
    p = _SSIM_PAD
    return float(s[p:-p, p:-p].mean(dtype=np.float64))


def _mos_from_ssim(ssims: tuple[float, float, float]) -> float:
    q = sum(w * s for w, s in zip(_CHANNEL_WEIGHTS, ssims, strict=True))
    q = min(max(q, 0.0), 1.0)
    return 1.0 + 4.0 * q**3


def _pseudo_mos(ref: _RefStats, distorted: np.ndarray) -> float:
    planes = _planes(distorted)
    ssims = tuple(
        _ssim_plane(x, m, v, y)
        for x, m, v, y in zip(ref.planes, ref.mu, ref.var, planes, strict=True)
    )
    return _mos_from_ssim(ssims)  # type: ignore[arg-type]


def pseudo_mos(reference: np.ndarray, distorted: np.ndarray) -> float:
    """The demo set's full-reference pseudo-MOS in [1, 5] (see the module docstring)."""
    if reference.shape != distorted.shape or reference.ndim != 3 or reference.shape[2] != 3:
        raise DemoDataError(
            f"need two HxWx3 images of one shape, got {reference.shape} and {distorted.shape}"
        )
    return _pseudo_mos(_RefStats(reference), distorted)


# ---------------------------------------------------------------------------- writing


def _write_png(img: np.ndarray, path: Path) -> None:
    # Fixed options and no metadata (Pillow writes no time or text chunks unless asked).
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1, optimize=False)
    path.write_bytes(buf.getvalue())


def _write_text(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def is_demo_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds a demo set made by this module (its ``dataset.json``)."""
    meta = Path(path) / META_NAME
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("name") == DATASET_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DemoDataError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not is_demo_dir(out) and not force:
        raise DemoDataError(
            f"{out} is not empty and holds no {DATASET_NAME} set; choose an empty or new "
            "directory, or pass --force"
        )


def _old_files(out: Path) -> set[Path]:
    """Files an earlier demo set in ``out`` listed (to drop the ones a new set does not make)."""
    if not is_demo_dir(out):
        return set()
    old: set[Path] = set()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        meta = json.loads((out / META_NAME).read_text(encoding="utf-8"))
        old.update(out / r["path"] for r in meta.get("references", []))
    with (
        contextlib.suppress(OSError, csv.Error, KeyError, TypeError),
        open(out / CSV_NAME, newline="", encoding="utf-8") as f,
    ):
        old.update(out / row["path"] for row in csv.DictReader(f))
    root = out.resolve()
    return {p for p in old if p.resolve().is_relative_to(root) and p.suffix == ".png"}


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for dist in ("loda", "numpy", "scipy", "pillow", "scikit-image", "scikit-learn"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _resolve_references(references: list[str] | tuple[str, ...] | None) -> list[str]:
    available = list_references()
    if references is None:
        if len(available) < MIN_REFERENCES:
            raise DemoDataError(
                f"only {len(available)} of the {len(_SOURCES)} demo reference photos are "
                f"installed (need {MIN_REFERENCES}); {_INSTALL_HINT}"
            )
        return available
    refs = list(references)
    if not refs:
        raise DemoDataError("references must name at least one reference")
    if len(set(refs)) != len(refs):
        raise DemoDataError(f"duplicate references in {refs}")
    for r in refs:
        if r not in _SOURCE_BY_ID:
            raise DemoDataError(f"unknown reference {r!r}; known: {', '.join(_SOURCE_BY_ID)}")
        if r not in available:
            raise DemoDataError(f"reference {r!r} is not installed; {_INSTALL_HINT}")
    return refs


MAX_SIDE = 4096  # the photographs are about 512 px: larger only upsamples (and takes long)


def make_demo_set(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    references: list[str] | tuple[str, ...] | None = None,
    *,
    force: bool = False,
) -> Path:
    """Write the demo IQA set into ``out_dir`` and return the path of its CSV.

    ``size`` is (width, height); ``references`` a subset of ``list_references()`` (default:
    all, at least 12). ``out_dir`` must be new, empty or an earlier demo set (rewritten in
    place) unless ``force``. Same arguments and package versions -> byte-identical files.
    """
    seed, width, height = _check_arguments(seed, size)
    refs = _resolve_references(references)
    out = Path(out_dir)
    _check_target(out, force)
    stale = _old_files(out)
    with contextlib.suppress(FileNotFoundError):
        (out / CSV_NAME).unlink()  # an interrupted rewrite must not leave a CSV of mixed files
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "references").mkdir(parents=True, exist_ok=True)

    prepared = {r: load_reference(r, (width, height)) for r in refs}
    jobs = [
        (r, name)
        for r in refs
        for name in DISTORTIONS
        if not (name in COLOR_ONLY and _is_gray(prepared[r]))
    ]
    # dataset.json first: an interrupted run still marks the directory as a demo set.
    meta = _dataset_record(prepared, len(jobs), seed, width, height)
    _write_text(out / META_NAME, json.dumps(meta, indent=2, sort_keys=False) + "\n")
    written: set[Path] = set()
    rows = _write_images(out, prepared, jobs, seed, written)
    for path in stale - written:
        with contextlib.suppress(OSError):
            path.unlink()
    csv_path = out / CSV_NAME
    _write_text(csv_path, "path,mos,ref\n" + "".join(rows))  # last: the set is complete
    return csv_path


def _check_arguments(seed, size) -> tuple[int, int, int]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoDataError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DemoDataError(f"size must be (width, height), got {size!r}") from None
    if width < 32 or height < 32:
        raise DemoDataError(f"size must be at least 32x32, got {width}x{height}")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise DemoDataError(f"size must be at most {MAX_SIDE}x{MAX_SIDE}, got {width}x{height}")
    return int(seed), width, height


def _dataset_record(prepared: dict, n_pairs: int, seed: int, width: int, height: int) -> dict:
    """``dataset.json``: the references, the distortions and levels, the MOS rule, versions."""
    return {
        "name": DATASET_NAME,
        "format": 1,
        "csv": CSV_NAME,
        "count": n_pairs * LEVELS,
        "mos_range": [1, 5],
        "seed": seed,
        "size": [width, height],
        "rule": MOS_RULE,
        "references": [
            {
                "id": r,
                "path": f"references/{r}.png",
                "source": f"{_SOURCE_BY_ID[r].package}:{_SOURCE_BY_ID[r].file}",
                "grayscale": _is_gray(image),
            }
            for r, image in prepared.items()
        ],
        "distortions": [
            {
                "name": name,
                "description": _DESCRIPTIONS[name],
                "parameter": DISTORTION_LEVELS[name][0],
                "values": list(DISTORTION_LEVELS[name][1]),
                "color_only": name in COLOR_ONLY,
            }
            for name in DISTORTIONS
        ],
        "levels": LEVELS,
        "package_versions": _package_versions(),
    }


def _write_images(out: Path, prepared: dict, jobs, seed: int, written: set[Path]) -> list[str]:
    """The references and every distorted image; returns the CSV rows."""
    for r, image in prepared.items():
        path = out / "references" / f"{r}.png"
        _write_png(image, path)
        written.add(path)
    rows: list[str] = []
    for r, image in prepared.items():
        stats = _RefStats(image)
        for name in (n for ref, n in jobs if ref == r):
            for level in range(1, LEVELS + 1):
                # A fresh generator per image: every level of a pair sees the same stream.
                img = DISTORTIONS[name](image, level, _rng(seed, r, name))
                rel = f"images/{r}_{name}_{level}.png"
                _write_png(img, out / rel)
                written.add(out / rel)
                rows.append(f"{rel},{_pseudo_mos(stats, img):.4f},{r}\n")
    return rows
