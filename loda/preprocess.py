"""The single image preprocessing implementation of LoDa (numpy + Pillow only, no torch).

Training, evaluation, export verification and the torch-free runtime all call this module, so a
score computed anywhere in the toolchain sees exactly the same pixels. It must never import torch.

Pipeline (``preprocess_image``)::

    decode + resize (``load_resized``)  ->  crop_positions  ->  extract_crops   (uint8 NHWC)
                                                                ->  normalize       (float32 NCHW)

Decode modes (``PreprocessConfig.decode``)
------------------------------------------
* ``"exact"`` (the default, and what every checkpoint records): decode at full size, apply the
  EXIF orientation, resize (rule below). The crops are byte-identical to
  ``resize_short_side(decode_image(...))``: the decoded Pillow image goes to the resize as is,
  without array round trips.
* ``"fast"`` (opt-in, for camera-size photos): JPEGs are decoded at a reduced scale in the DCT
  domain (Pillow ``Image.draft``, libjpeg scaling by 1/2, 1/4 or 1/8), the largest reduction
  that keeps both sides >= ``FAST_MARGIN x resize_short`` (730 px for 384), so that the bicubic
  pass after it still reduces by ~2x and, as in the exact path, shapes the detail near the
  output's resolution; the reduced image is resized to the *same* output size as the exact
  path (computed from the full-size header, the partial edge pixels mapped through
  ``draft``'s box), so crop positions do not move. The EXIF orientation is read from the file
  as in the exact path and applied to the resized image. Pixels differ slightly from the exact
  path; docs/preprocessing.md gives the measured score differences. A JPEG too small for any
  reduction (short side < 2 x 730 px), other formats and arrays take the exact path.

Decoding rules (``decode_image``)
---------------------------------
The file is opened with Pillow, the decompression-bomb limit ``max_pixels`` is checked on the
header size *before* any pixel is decoded, the first frame is decoded (GIF, TIFF, APNG, MPO:
frame 0), the EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), and the result is
converted to an RGB ``uint8`` array of shape ``(H, W, 3)`` (C-contiguous) by mode:

* ``RGB``: as is.
* ``L``, ``1``: the grey value is replicated to R, G and B (``1`` becomes 0 / 255).
* ``P``: ``convert("RGB")`` through the palette, unless the image has transparency (see alpha).
* Alpha rule (``RGBA``, ``LA``, ``PA``, ``RGBa``, and ``P`` / ``L`` / ``RGB`` / ``1`` images with
  a ``"transparency"`` entry in ``im.info``): the image is converted to ``RGBA`` by Pillow and
  composited onto the opaque colour ``alpha_background`` (default white) with exact integer
  math, per channel ``out = round((c * a + bg * (255 - a)) / 255)``, i.e.
  ``(c * a + bg * (255 - a) + 127) // 255``; then alpha is dropped.
* ``CMYK``: Pillow's ``convert("RGB")`` (naive formula; embedded ICC profiles are ignored, no
  colour management). ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: Pillow's ``convert("RGB")``.
* 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and 32-bit ``I`` / ``F``: scaled to 8
  bits by ``round(v / 257)`` (65535 -> 255, exact rounding, unlike Pillow's ``convert`` which
  clips at 255), then replicated to RGB. ``I`` and ``F`` are assumed to hold the 16-bit range and
  are clipped to [0, 65535] first (``F``: NaN -> 0, round half to even).
* 16-bit RGB(A) PNGs are reduced to 8 bits by Pillow itself when opened (a Pillow limitation);
  they arrive here as ``RGB`` / ``RGBA``.
* Any other mode: Pillow's ``convert("RGB")``; if Pillow cannot, ``ImageDecodeError``.

Any failure (missing file, zero bytes, unidentified format, truncated data, broken EXIF, image
over the pixel limit) raises ``ImageDecodeError`` (a ``ValueError``) with a one-line message that
names the source and the cause. ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set here: a
truncated file is an error, not a silently grey image.

Resize rule (``resize_short_side``)
-----------------------------------
The LoDa authors (NeosXu/LoDa) resized every dataset once with torchvision
``Resize(384, interpolation=BICUBIC)`` on PIL images. We reproduce that without torchvision: the
short side becomes ``short``, the long side ``int(short * long / short_side)`` (truncation, as
torchvision's ``_compute_resized_output_size``), then Pillow ``Image.resize((w, h), BICUBIC)``,
which is antialiased (the kernel is widened when downscaling). When the size would not change,
the image is returned untouched (torchvision skips too). Upscaling uses the same rule.

Crop layouts
------------
* ``"grid"`` (deterministic, used for evaluation and serving): ``rows x cols == num_crops`` is the
  factor pair whose aspect ``cols / rows`` is closest to the image aspect ``width / height``
  (minimise ``|log((cols / rows) / (width / height))|``, exact; ties -> fewer rows). Row tops are
  ``round(linspace(0, H - crop, rows))`` (a single row is centred at ``(H - crop) // 2``), columns
  likewise; positions are listed row-major. For 15 crops a landscape image gets 3 x 5, a portrait
  one 5 x 3, a square one 3 x 5; the first crop is at (0, 0) and the last at (H - crop, W - crop).
* ``"random"`` (the authors' protocol, torchvision ``RandomCrop``): every crop's top-left corner
  is drawn independently and uniformly over all valid integer positions with
  ``numpy.random.default_rng(seed)``; the same seed gives the same positions.

Normalisation (``normalize``) reproduces torchvision ``ToTensor()`` + ``Normalize(mean, std)`` in
float32, operation for operation: ``(float32(x) / 255 - float32(mean)) / float32(std)``.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import one_line

__all__ = [
    "DECODE_MODES",
    "DEFAULT_CONFIG",
    "DEFAULT_MAX_PIXELS",
    "FAST_MARGIN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUTS",
    "RESIZE_FILTERS",
    "RESIZE_RULE",
    "ImageDecodeError",
    "PreprocessConfig",
    "PreprocessedImage",
    "crop_positions",
    "decode_image",
    "extract_crops",
    "grid_positions",
    "load_resized",
    "normalize",
    "preprocess_image",
    "preprocess_image_with_info",
    "random_positions",
    "resize_short_side",
    "resized_size",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Same value as Pillow's default ``Image.MAX_IMAGE_PIXELS`` (1024**3 // 4 // 3 pixels), so
#: within the default limit Pillow never warns either.
DEFAULT_MAX_PIXELS: int = 89_478_485

RESIZE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
LAYOUTS: tuple[str, ...] = ("grid", "random")
DECODE_MODES: tuple[str, ...] = ("exact", "fast")
# The fast path's reduced image keeps >= FAST_MARGIN x resize_short on both sides. About 2: a
# smaller margin leaves the DCT scaling, not the bicubic filter, to shape the output's finest
# detail, and a trained model's scores move (docs/preprocessing.md); 1.9, not 2, so that the
# 3000 px short side of a 12 MP photo qualifies for 1/4 (750 px, 1.95x).
FAST_MARGIN = 1.9

#: Human-readable statement of the resize rule; stored with the config in ``to_dict()``.
RESIZE_RULE: str = (
    "short side -> resize_short, long side -> int(resize_short * long / short) "
    "(torchvision Resize(int) size rule, truncation); Pillow Image.resize with resize_filter "
    "(antialiased when downscaling); skipped when the size is unchanged"
)

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_TRANSPARENCY_KEY_MODES = frozenset({"P", "L", "RGB", "1"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ORIENTATION = ExifTags.Base.Orientation


class ImageDecodeError(ValueError):
    """An image could not be decoded (or was refused); the message is one line."""


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"PreprocessConfig.{name} must be an int, got {value!r}")
    return int(value)


def _as_triple(name: str, value: Any, *, kind: type, owner: str = "PreprocessConfig.") -> tuple:
    name = owner + name
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name} must be a sequence of 3 numbers, got {value!r}")
    out = []
    for v in value:
        if kind is int:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"{name} must hold 3 ints, got {value!r}")
            out.append(int(v))
        else:
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name} must hold 3 finite numbers, got {value!r}")
            out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing parameters; the one record that travels with the weights.

    ``resize_short`` / ``resize_filter``: see the resize rule in the module docstring (the LoDa
    authors used torchvision ``Resize(384, BICUBIC)`` on PIL images). ``crop_size`` /
    ``num_crops`` / ``layout``: the crops fed to the model (``"grid"`` deterministic,
    ``"random"`` the authors' RandomCrop protocol). ``mean`` / ``std``: ``Normalize`` constants.
    ``alpha_background``: opaque RGB colour transparent images are composited onto.
    ``decode``: ``"exact"`` (default) or ``"fast"`` (reduced-scale JPEG decode; see the module
    docstring). A model's recorded preprocessing is exact; fast is chosen per run.
    """

    resize_short: int = 384
    resize_filter: str = "bicubic"
    crop_size: int = 224
    num_crops: int = 15
    layout: str = "grid"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    decode: str = "exact"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("resize_short", "crop_size", "num_crops"):
            value = _as_int(name, getattr(self, name))
            if value <= 0:
                raise ValueError(f"PreprocessConfig.{name} must be positive, got {value}")
            set_(self, name, value)
        if self.crop_size > self.resize_short:
            raise ValueError(
                f"PreprocessConfig.crop_size ({self.crop_size}) must be <= resize_short "
                f"({self.resize_short})"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(
                f"PreprocessConfig.layout must be one of {list(LAYOUTS)}, got {self.layout!r}"
            )
        if self.resize_filter not in RESIZE_FILTERS:
            raise ValueError(
                f"PreprocessConfig.resize_filter must be one of {sorted(RESIZE_FILTERS)}, "
                f"got {self.resize_filter!r}"
            )
        set_(self, "mean", _as_triple("mean", self.mean, kind=float))
        std = _as_triple("std", self.std, kind=float)
        if any(s <= 0 for s in std):
            raise ValueError(f"PreprocessConfig.std must be > 0, got {std}")
        set_(self, "std", std)
        bg = _as_triple("alpha_background", self.alpha_background, kind=int)
        if any(not 0 <= c <= 255 for c in bg):
            raise ValueError(f"PreprocessConfig.alpha_background must be in 0..255, got {bg}")
        set_(self, "alpha_background", bg)
        if self.decode not in DECODE_MODES:
            raise ValueError(
                f"PreprocessConfig.decode must be one of {list(DECODE_MODES)}, got {self.decode!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples as lists) plus ``"resize_rule"`` (``RESIZE_RULE``)."""
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        d["resize_rule"] = RESIZE_RULE
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of ``to_dict``; missing keys take defaults, unknown keys are an error.

        A ``"resize_rule"`` entry, when present, must equal ``RESIZE_RULE``.
        """
        if not isinstance(d, dict):
            raise ValueError(f"PreprocessConfig.from_dict expects a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names - {"resize_rule"}, key=str)
        if unknown:
            raise ValueError(
                f"PreprocessConfig.from_dict: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(sorted(names))}"
            )
        rule = d.get("resize_rule", RESIZE_RULE)
        if rule != RESIZE_RULE:
            raise ValueError(
                f"PreprocessConfig.from_dict: resize_rule {rule!r} differs from this "
                f"implementation's {RESIZE_RULE!r}"
            )
        return cls(**{k: v for k, v in d.items() if k in names})


DEFAULT_CONFIG = PreprocessConfig()


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _describe_source(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(memoryview(source).cast('B'))} bytes>"
    name = getattr(source, "name", None)
    if isinstance(name, (str, bytes)):
        return f"<file {name!r}>"
    return f"<{type(source).__name__} object>"


def _composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Exact alpha blend of an RGBA uint8 array onto an opaque colour, rounded to nearest."""
    a = rgba[..., 3:4].astype(np.uint32)
    c = rgba[..., :3].astype(np.uint32)
    bg = np.asarray(background, dtype=np.uint32)
    out = (c * a + bg * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _sixteen_bit_to_u8(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        v = np.nan_to_num(arr.astype(np.float64), nan=0.0)
        v = np.rint(np.clip(v, 0.0, 65535.0) / 257.0)
        return v.astype(np.uint8)
    v = np.clip(arr.astype(np.int64), 0, 65535)
    # round(v / 257) exactly: v / 257 is never exactly halfway between integers.
    return ((v + 128) // 257).astype(np.uint8)


def _to_rgb_array(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    mode = im.mode
    if mode == "RGB" and im.info.get("transparency") is None:
        arr = np.asarray(im)
    elif mode in _ALPHA_MODES or (
        mode in _TRANSPARENCY_KEY_MODES and im.info.get("transparency") is not None
    ):
        arr = _composite(np.asarray(im.convert("RGBA")), background)
    elif mode in _SIXTEEN_BIT_MODES:
        grey = _sixteen_bit_to_u8(np.asarray(im), mode)
        arr = np.repeat(grey[:, :, None], 3, axis=2)
    elif mode == "1":
        arr = np.asarray(im.convert("L").convert("RGB"))
    else:  # L, P, CMYK, YCbCr, LAB, HSV, RGBX, ...
        arr = np.asarray(im.convert("RGB"))
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"mode {mode!r} converted to {arr.dtype} {arr.shape}, not RGB uint8")
    return np.ascontiguousarray(arr)


def _as_background(alpha_background: Any) -> tuple[int, int, int]:
    background = _as_triple("alpha_background", alpha_background, kind=int, owner="")
    if any(not 0 <= c <= 255 for c in background):
        raise ValueError(f"alpha_background must be in 0..255, got {background}")
    return background


@contextlib.contextmanager
def _decode_errors(name: str) -> Iterator[None]:
    """Turn whatever Pillow raises while opening / decoding into one-line ImageDecodeErrors."""
    try:
        yield
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(
            f"cannot decode {name}: {one_line(e, with_type=True)} (Pillow's process-wide limit "
            "PIL.Image.MAX_IMAGE_PIXELS applies on top of max_pixels)"
        ) from e
    except Exception as e:  # Pillow plugins raise many types (OSError, SyntaxError, ...)
        raise ImageDecodeError(f"cannot decode {name}: {one_line(e, with_type=True)}") from e


def _open(source: Any, name: str, max_pixels: int | None) -> Image.Image:
    """``Image.open`` (header only) with ``max_pixels`` checked on the header size."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        fp = os.fspath(source)
    elif hasattr(source, "read"):
        fp = source
    else:
        raise ImageDecodeError(
            f"cannot decode {name}: expected a path, bytes or a binary file object"
        )
    with warnings.catch_warnings():
        # our own max_pixels check below replaces Pillow's bomb *warning* (its error at
        # twice MAX_IMAGE_PIXELS still applies)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(fp)
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise ImageDecodeError(
            f"cannot decode {name}: {w}x{h} = {w * h} pixels exceeds the limit of "
            f"{max_pixels}; raise max_pixels if the image is trusted"
        )
    return im


def _is_plain_rgb(im: Image.Image) -> bool:
    return im.mode == "RGB" and im.info.get("transparency") is None


def decode_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    alpha_background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Decode ``source`` (path, bytes or binary file object) to RGB uint8 ``(H, W, 3)``.

    See the module docstring for the per-mode rules. ``max_pixels`` (``None``: no limit of ours)
    is checked on the header size before decoding. Pillow's own process-wide bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, an error above twice its value) still applies; this function
    never changes it. Raises ``ImageDecodeError`` on any failure.
    """
    name = _describe_source(source)
    background = _as_background(alpha_background)
    with _decode_errors(name):
        im = _open(source, name, max_pixels)
        with im:
            im.load()  # Image.open is positioned on frame 0 of multi-frame files
            ImageOps.exif_transpose(im, in_place=True)  # in place: no full-size copy
            return _to_rgb_array(im, background)


def _check_resized_limit(
    ow: int, oh: int, short: int, max_pixels: int | None, where: str
) -> tuple[int, int]:
    rw, rh = resized_size(ow, oh, short)
    if max_pixels is not None and rw * rh > max_pixels:
        raise ImageDecodeError(
            f"{where}resizing {ow}x{oh} to short side {short} gives {rw}x{rh} "
            f"({rw * rh} pixels), over the limit of {max_pixels} (extreme aspect ratio)"
        )
    return rw, rh


def _resize_pil(
    im: Image.Image,
    size: tuple[int, int],
    filter: str,
    *,
    box: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    if box is None and im.size == size:
        return im  # torchvision skips an unchanged size too
    return im.resize(size, RESIZE_FILTERS[filter], box=box)


def _load_fast(
    im: Image.Image, name: str, cfg: PreprocessConfig, max_pixels: int | None
) -> tuple[np.ndarray, int, int]:
    """The fast path: reduced-scale JPEG decode, resize in stored orientation, then orient."""
    if im.format not in ("JPEG", "MPO"):
        return _load_exact(im, name, cfg, max_pixels)
    short = cfg.resize_short
    sw, sh = im.size  # stored (not yet oriented) full size, from the header
    keep = math.ceil(FAST_MARGIN * short)
    if min(sw, sh) < 2 * keep:  # no DCT scale keeps the margin: decode as the exact path does
        return _load_exact(im, name, cfg, max_pixels)
    with _decode_errors(name):
        orientation = im.getexif().get(_ORIENTATION, 1)
        swapped = orientation in (5, 6, 7, 8)
        ow, oh = (sh, sw) if swapped else (sw, sh)
        where = f"{name}: "
        _check_resized_limit(ow, oh, short, max_pixels, where)
        # a square request: both sides keep >= keep whatever the orientation; draft maps the
        # full image onto box (a partial last pixel when the size is not a multiple)
        drafted = im.draft(None, (keep, keep))
        box = drafted[1] if drafted is not None else None
        im.load()
        src = im if _is_plain_rgb(im) else Image.fromarray(_to_rgb_array(im, cfg.alpha_background))
    # resized_size is symmetric under a swap of the axes, so the stored-orientation size is
    # the oriented one transposed
    size = resized_size(sw, sh, short)
    small = _resize_pil(src, size, cfg.resize_filter, box=box)
    if orientation != 1:
        if small is src:
            small = small.copy()
        small.getexif()[_ORIENTATION] = orientation
        ImageOps.exif_transpose(small, in_place=True)
    return np.asarray(small), ow, oh


def _load_exact(
    im: Image.Image, name: str, cfg: PreprocessConfig, max_pixels: int | None
) -> tuple[np.ndarray, int, int]:
    with _decode_errors(name):
        im.load()  # Image.open is positioned on frame 0 of multi-frame files
        ImageOps.exif_transpose(im, in_place=True)  # in place: no full-size copy
        ow, oh = im.size
        _check_resized_limit(ow, oh, cfg.resize_short, max_pixels, f"{name}: ")
        # plain RGB goes to the resize as decoded: the same pixels as resize_short_side on
        # decode_image's array, without the two full-size array round trips
        src = im if _is_plain_rgb(im) else Image.fromarray(_to_rgb_array(im, cfg.alpha_background))
    size = resized_size(ow, oh, cfg.resize_short)
    return np.asarray(_resize_pil(src, size, cfg.resize_filter)), ow, oh


def load_resized(
    source_or_array: ImageSource | np.ndarray,
    cfg: PreprocessConfig = DEFAULT_CONFIG,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, int, int]:
    """Decode (unless given an RGB uint8 array) and resize: ``(resized, width, height)``.

    ``resized`` is RGB uint8 ``(H, W, 3)`` with its short side ``cfg.resize_short`` (possibly
    read-only); ``width`` / ``height`` are the decoded size after
    the EXIF orientation. ``cfg.decode`` picks the exact or the fast path (module docstring).
    ``max_pixels`` (``None``: no limit) bounds the decoded image (checked on the header) and
    the resized one (an extreme aspect ratio, say 20000 x 8, would otherwise grow to hundreds
    of millions of pixels); both raise :class:`ImageDecodeError`.
    """
    if isinstance(source_or_array, np.ndarray):
        img = _check_rgb_u8(source_or_array, "preprocess_image array input")
        oh, ow = img.shape[:2]
        _check_resized_limit(ow, oh, cfg.resize_short, max_pixels, "")
        return resize_short_side(img, cfg.resize_short, cfg.resize_filter), ow, oh
    name = _describe_source(source_or_array)
    with _decode_errors(name):
        im = _open(source_or_array, name, max_pixels)
    with im:
        if cfg.decode == "fast":
            return _load_fast(im, name, cfg, max_pixels)
        return _load_exact(im, name, cfg, max_pixels)


# --------------------------------------------------------------------------------------------
# Resize
# --------------------------------------------------------------------------------------------


def resized_size(width: int, height: int, short: int = 384) -> tuple[int, int]:
    """Output ``(width, height)`` of the torchvision ``Resize(short)`` rule (truncation)."""
    if width <= 0 or height <= 0 or short <= 0:
        raise ValueError(f"sizes must be positive, got {width}x{height} -> short {short}")
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def _check_rgb_u8(img: Any, what: str) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"{what} must be a uint8 (H, W, 3) array, got {got}")
    if img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{what} must be a uint8 (H, W, 3) array, got shape {img.shape}")
    return img


def resize_short_side(img: np.ndarray, short: int = 384, filter: str = "bicubic") -> np.ndarray:
    """Resize RGB uint8 ``(H, W, 3)`` so its short side is ``short`` (torchvision rule).

    Long side ``int(short * long / short_side)``; Pillow ``Image.resize`` with ``filter``
    (antialiased). Returns ``img`` itself when the size would not change.
    """
    _check_rgb_u8(img, "resize_short_side input")
    if filter not in RESIZE_FILTERS:
        raise ValueError(f"filter must be one of {sorted(RESIZE_FILTERS)}, got {filter!r}")
    h, w = img.shape[:2]
    new_w, new_h = resized_size(w, h, short)
    if (new_w, new_h) == (w, h):
        return img
    pil = Image.fromarray(np.ascontiguousarray(img))
    out = pil.resize((new_w, new_h), RESIZE_FILTERS[filter])
    return np.ascontiguousarray(np.asarray(out))


# --------------------------------------------------------------------------------------------
# Crop layouts
# --------------------------------------------------------------------------------------------


def _check_crop_fits(height: int, width: int, crop_size: int, num_crops: int) -> None:
    if crop_size <= 0 or num_crops <= 0:
        raise ValueError(f"crop_size and num_crops must be positive, got {crop_size}, {num_crops}")
    if crop_size > height or crop_size > width:
        raise ValueError(f"crop {crop_size}x{crop_size} does not fit in a {width}x{height} image")


def _grid_shape(height: int, width: int, num_crops: int) -> tuple[int, int]:
    best: tuple[Fraction, int, int] | None = None
    for rows in range(1, num_crops + 1):
        if num_crops % rows:
            continue
        cols = num_crops // rows
        r = Fraction(cols * height, rows * width)  # (cols / rows) / (width / height)
        score = max(r, 1 / r)  # monotone in |log r|, exact
        if best is None or score < best[0]:  # rows ascend: ties keep fewer rows
            best = (score, rows, cols)
    assert best is not None
    return best[1], best[2]


def _axis_positions(extent: int, crop_size: int, count: int) -> np.ndarray:
    if count == 1:
        return np.array([(extent - crop_size) // 2], dtype=np.int64)
    return np.round(np.linspace(0, extent - crop_size, count)).astype(np.int64)


def grid_positions(
    height: int, width: int, crop_size: int = 224, num_crops: int = 15
) -> np.ndarray:
    """Deterministic grid of crop top-lefts, int64 ``[num_crops, 2]`` of ``(y, x)``, row-major.

    ``rows x cols == num_crops`` best matching the image aspect (see module docstring).
    """
    _check_crop_fits(height, width, crop_size, num_crops)
    rows, cols = _grid_shape(height, width, num_crops)
    ys = _axis_positions(height, crop_size, rows)
    xs = _axis_positions(width, crop_size, cols)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def random_positions(
    height: int,
    width: int,
    crop_size: int,
    num_crops: int,
    rng_or_seed: int | np.random.Generator,
) -> np.ndarray:
    """Random crop top-lefts (torchvision ``RandomCrop`` protocol), int64 ``[n, 2]`` of (y, x).

    Each crop is uniform over all valid integer positions, independently; drawn as
    ``rng.integers(0, [H - crop + 1, W - crop + 1], size=(n, 2))`` with
    ``rng = numpy.random.default_rng(seed)`` (or the given Generator, which is advanced).
    """
    _check_crop_fits(height, width, crop_size, num_crops)
    if isinstance(rng_or_seed, np.random.Generator):
        rng = rng_or_seed
    elif rng_or_seed is None or isinstance(rng_or_seed, bool):
        raise ValueError("random crop positions need a seed (int) or a numpy Generator")
    else:
        rng = np.random.default_rng(rng_or_seed)
    high = np.array([height - crop_size + 1, width - crop_size + 1], dtype=np.int64)
    return rng.integers(0, high, size=(num_crops, 2), dtype=np.int64)


def crop_positions(
    height: int,
    width: int,
    cfg: PreprocessConfig = DEFAULT_CONFIG,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Crop positions for ``cfg.layout``; ``"random"`` requires ``seed`` (int or Generator)."""
    if cfg.layout == "grid":
        return grid_positions(height, width, cfg.crop_size, cfg.num_crops)
    if cfg.layout == "random":
        if seed is None:
            raise ValueError("layout 'random' needs a seed (int) or a numpy Generator")
        return random_positions(height, width, cfg.crop_size, cfg.num_crops, seed)
    raise ValueError(f"unknown layout {cfg.layout!r}")


def extract_crops(img: np.ndarray, positions: np.ndarray, crop_size: int) -> np.ndarray:
    """Cut ``crop_size`` squares at ``positions`` (y, x): uint8 ``[n, crop, crop, 3]`` NHWC."""
    _check_rgb_u8(img, "extract_crops input")
    pos = np.asarray(positions)
    if pos.ndim != 2 or pos.shape[1] != 2 or not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"positions must be an integer [n, 2] array, got {pos.dtype} {pos.shape}")
    h, w = img.shape[:2]
    if crop_size <= 0:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    if len(pos) and (
        pos.min() < 0 or (pos[:, 0] + crop_size).max() > h or (pos[:, 1] + crop_size).max() > w
    ):
        raise ValueError(f"a {crop_size}px crop at the given positions leaves the {w}x{h} image")
    out = np.empty((len(pos), crop_size, crop_size, 3), dtype=np.uint8)
    for i, (y, x) in enumerate(pos.tolist()):
        out[i] = img[y : y + crop_size, x : x + crop_size]
    return out


# --------------------------------------------------------------------------------------------
# Whole pipeline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PreprocessedImage:
    """Result of ``preprocess_image_with_info``.

    ``crops``: uint8 ``[num_crops, crop, crop, 3]``; ``original_*``: decoded size after EXIF
    orientation; ``resized_*``: size after the short-side resize; ``positions``: int64
    ``[num_crops, 2]`` (y, x) in the resized image.
    """

    crops: np.ndarray
    original_width: int
    original_height: int
    resized_width: int
    resized_height: int
    positions: np.ndarray


def preprocess_image_with_info(
    source_or_array: ImageSource | np.ndarray,
    cfg: PreprocessConfig = DEFAULT_CONFIG,
    *,
    seed: int | np.random.Generator | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> PreprocessedImage:
    """Decode (unless given an RGB uint8 array) -> resize -> crop positions -> crops.

    ``max_pixels`` (``None``: no limit) bounds both the decoded image (checked on the header,
    see :func:`decode_image`) and the resized one: an extreme aspect ratio (say 20000 x 8) would
    otherwise grow to hundreds of millions of pixels at the short-side resize, so it raises
    :class:`ImageDecodeError` instead.
    """
    resized, ow, oh = load_resized(source_or_array, cfg, max_pixels=max_pixels)
    rh, rw = resized.shape[:2]
    positions = crop_positions(rh, rw, cfg, seed)
    crops = extract_crops(resized, positions, cfg.crop_size)
    return PreprocessedImage(crops, ow, oh, rw, rh, positions)


def preprocess_image(
    source_or_array: ImageSource | np.ndarray,
    cfg: PreprocessConfig = DEFAULT_CONFIG,
    *,
    seed: int | np.random.Generator | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """uint8 NHWC crops ``[cfg.num_crops, cfg.crop_size, cfg.crop_size, 3]`` of one image."""
    return preprocess_image_with_info(source_or_array, cfg, seed=seed, max_pixels=max_pixels).crops


def normalize(
    crops: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """uint8 NHWC crops -> float32 NCHW ``(x / 255 - mean) / std``, C-contiguous.

    Bit-identical to torchvision ``ToTensor()`` (float32 ``x / 255``) followed by
    ``Normalize(mean, std)`` (float32 ``(x - mean) / std``, mean/std cast to float32).
    """
    if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8:
        got = crops.dtype if isinstance(crops, np.ndarray) else type(crops).__name__
        raise ValueError(f"normalize expects uint8 crops, got {got}")
    if crops.ndim != 4 or crops.shape[3] != 3:
        raise ValueError(f"normalize expects NHWC crops [n, h, w, 3], got shape {crops.shape}")
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    if m.shape != (3,) or s.shape != (3,):
        raise ValueError(f"mean and std must have 3 values, got {m.shape} and {s.shape}")
    if not np.all(s > 0):
        raise ValueError(f"std must be > 0, got {s.tolist()}")
    n, h, w, _ = crops.shape
    out = np.empty((n, 3, h, w), dtype=np.float32)
    out[...] = crops.transpose(0, 3, 1, 2)
    np.divide(out, np.float32(255), out=out)
    np.subtract(out, m[:, None, None], out=out)
    np.divide(out, s[:, None, None], out=out)
    return out
