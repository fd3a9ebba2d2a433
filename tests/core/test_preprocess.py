"""Tests of loda.preprocess (numpy + Pillow only; every image is generated into tmp_path)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from loda.preprocess import (
    DEFAULT_CONFIG,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_RULE,
    ImageDecodeError,
    PreprocessConfig,
    crop_positions,
    decode_image,
    extract_crops,
    grid_positions,
    normalize,
    preprocess_image,
    preprocess_image_with_info,
    random_positions,
    resize_short_side,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _rng_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _blend(c: int, a: int, bg: int) -> int:
    """Reference alpha rule: round((c * a + bg * (255 - a)) / 255)."""
    return round((c * a + bg * (255 - a)) / 255)


def _check_rgb(arr: np.ndarray, h: int, w: int) -> None:
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.uint8
    assert arr.shape == (h, w, 3)
    assert arr.flags.c_contiguous


# ---------------------------------------------------------------------------------------------
# torch-free import
# ---------------------------------------------------------------------------------------------


def test_import_does_not_pull_torch():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    code = "import loda.preprocess, sys; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# Decoding: sources and modes
# ---------------------------------------------------------------------------------------------


def test_rgb_png_path_bytes_fileobj_agree(tmp_path):
    arr = _rng_image(17, 23)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    from_path = decode_image(path)
    from_str = decode_image(str(path))
    from_bytes = decode_image(path.read_bytes())
    with open(path, "rb") as f:
        from_file = decode_image(f)
    from_bytesio = decode_image(io.BytesIO(path.read_bytes()))
    for out in (from_path, from_str, from_bytes, from_file, from_bytesio):
        _check_rgb(out, 17, 23)
        np.testing.assert_array_equal(out, arr)


def test_mode_L_replicated(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    path = tmp_path / "l.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode == "L"
    out = decode_image(path)
    _check_rgb(out, 12, 10)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_mode_1_bit(tmp_path):
    bits = (np.indices((8, 6)).sum(axis=0) % 2).astype(bool)
    path = tmp_path / "one.png"
    Image.fromarray(bits).save(path)
    assert Image.open(path).mode == "1"
    out = decode_image(path)
    _check_rgb(out, 8, 6)
    expected = np.where(bits, 255, 0).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_mode_LA_composites_onto_background(tmp_path):
    grey = np.full((4, 5), 100, dtype=np.uint8)
    alpha = np.array([0, 64, 128, 200, 255], dtype=np.uint8)[None, :].repeat(4, axis=0)
    path = tmp_path / "la.png"
    Image.fromarray(np.dstack([grey, alpha])).save(path)
    assert Image.open(path).mode == "LA"
    out = decode_image(path)
    _check_rgb(out, 4, 5)
    for x, a in enumerate(alpha[0].tolist()):
        assert out[0, x].tolist() == [_blend(100, a, 255)] * 3
    black = decode_image(path, alpha_background=(0, 0, 0))
    for x, a in enumerate(alpha[0].tolist()):
        assert black[0, x].tolist() == [_blend(100, a, 0)] * 3


def test_mode_RGBA_half_transparent_pixel(tmp_path):
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 7)
    rgba[..., 3] = 255
    rgba[1, 2, 3] = 128  # half transparent
    rgba[0, 0, 3] = 0  # fully transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    assert Image.open(path).mode == "RGBA"

    out = decode_image(path)
    _check_rgb(out, 3, 4)
    assert out[1, 2].tolist() == [_blend(200, 128, 255), _blend(100, 128, 255), _blend(7, 128, 255)]
    assert out[1, 2].tolist() == [227, 177, 131]  # e.g. (200*128 + 255*127) / 255 = 227.39
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[2, 3].tolist() == [200, 100, 7]

    bg = (10, 20, 30)
    out = decode_image(path, alpha_background=bg)
    assert out[1, 2].tolist() == [_blend(c, 128, b) for c, b in zip((200, 100, 7), bg, strict=True)]
    assert out[0, 0].tolist() == list(bg)


def _palette_image(h: int = 6, w: int = 8) -> tuple[Image.Image, np.ndarray, list[tuple]]:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]
    idx = (np.arange(h * w).reshape(h, w) % len(colors)).astype(np.uint8)
    im = Image.new("P", (w, h))
    im.putdata(idx.ravel().tolist())
    im.putpalette([v for c in colors for v in c] + [0] * (768 - 3 * len(colors)))
    return im, idx, colors


def test_mode_P_gif(tmp_path):
    im, idx, colors = _palette_image()
    path = tmp_path / "p.gif"
    im.save(path, optimize=False)
    reopened = Image.open(path)
    assert reopened.mode == "P"
    assert reopened.info.get("transparency") is None
    out = decode_image(path)
    _check_rgb(out, *idx.shape)
    np.testing.assert_array_equal(out, np.array(colors, dtype=np.uint8)[idx])


def test_mode_P_with_transparency(tmp_path):
    im, idx, colors = _palette_image()
    path = tmp_path / "pt.png"
    im.save(path, transparency=1)  # colour index 1 is fully transparent
    reopened = Image.open(path)
    assert reopened.mode == "P" and "transparency" in reopened.info
    out = decode_image(path, alpha_background=(7, 8, 9))
    expected = np.array(colors, dtype=np.uint8)[idx]
    expected[idx == 1] = (7, 8, 9)
    np.testing.assert_array_equal(out, expected)

    gif = tmp_path / "pt.gif"
    im.save(gif, transparency=1, optimize=False)
    out_gif = decode_image(gif, alpha_background=(7, 8, 9))
    np.testing.assert_array_equal(out_gif, expected)


def test_multiframe_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (5, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], optimize=False)
    assert Image.open(path).n_frames == 2
    out = decode_image(path)
    _check_rgb(out, 4, 5)
    assert (out == np.array([255, 0, 0], dtype=np.uint8)).all()


def test_mode_CMYK_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (9, 7), (10, 60, 120, 30)).save(path, quality=95)
    reopened = Image.open(path)
    assert reopened.mode == "CMYK"
    out = decode_image(path)
    _check_rgb(out, 7, 9)
    np.testing.assert_array_equal(out, np.asarray(reopened.convert("RGB")))


def test_mode_I16_png_exact_scaling(tmp_path):
    values = np.array([[0, 128, 129, 257 * 100, 257 * 100 + 128, 65535]], dtype=np.uint16)
    path = tmp_path / "i16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = decode_image(path)
    _check_rgb(out, 1, 6)
    expected = [0, 0, 1, 100, 100, 255]
    assert out[0, :, 0].tolist() == expected
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    # round(v / 257) for every 16-bit value, against the Python formula
    assert expected == [round(int(v) / 257) for v in values[0]]


def test_mode_I_and_F_tiff_clip_to_16_bit(tmp_path):
    ivals = np.array([[-5, 0, 257 * 3, 70000]], dtype=np.int32)
    ipath = tmp_path / "i.tif"
    Image.fromarray(ivals).save(ipath)
    assert Image.open(ipath).mode == "I"
    assert decode_image(ipath)[0, :, 1].tolist() == [0, 0, 3, 255]

    fvals = np.array([[-1.0, np.nan, 257 * 2.5, 257 * 7.25, 1e9]], dtype=np.float32)
    fpath = tmp_path / "f.tif"
    Image.fromarray(fvals).save(fpath)
    assert Image.open(fpath).mode == "F"
    assert decode_image(fpath)[0, :, 2].tolist() == [0, 0, 2, 7, 255]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_6_rotates_clockwise(tmp_path, fmt):
    h, w = 32, 48  # stored landscape
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:8, :8] = (255, 0, 0)  # red marker at the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    path = tmp_path / f"exif.{fmt.lower()}"
    Image.fromarray(arr).save(path, format=fmt, exif=exif, quality=95)

    out = decode_image(path)
    _check_rgb(out, w, h)  # displayed portrait: shape transposed
    # rotating 90° clockwise moves the top-left corner to the top-right corner
    top_right = out[1:6, h - 6 : h - 1].reshape(-1, 3).astype(int)
    assert (np.abs(top_right - (255, 0, 0)) <= 8).all()
    for corner in (out[1:6, 1:6], out[-6:-1, 1:6], out[-6:-1, -6:-1]):
        assert corner.max() <= 8
    if fmt == "PNG":
        np.testing.assert_array_equal(out, np.rot90(arr, k=-1))

    info = preprocess_image_with_info(path, PreprocessConfig(resize_short=32, crop_size=16))
    assert (info.original_width, info.original_height) == (h, w)


# ---------------------------------------------------------------------------------------------
# Decoding: errors
# ---------------------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg") as ei:
        decode_image(path)
    assert "\n" not in str(ei.value)
    with pytest.raises(ImageDecodeError, match="0 bytes"):
        decode_image(b"")


def test_truncated_jpeg(tmp_path):
    full = io.BytesIO()
    Image.fromarray(_rng_image(64, 64)).save(full, format="JPEG", quality=90)
    data = full.getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg.*(?i:truncated)") as ei:
        decode_image(path)
    assert isinstance(ei.value, ValueError)
    assert "\n" not in str(ei.value)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg.*UnidentifiedImageError"):
        decode_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"nope\.png"):
        decode_image(tmp_path / "nope.png")


def test_pixel_limit(tmp_path):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    with pytest.raises(ImageDecodeError, match=r"40x30 = 1200 pixels exceeds the limit of 1000"):
        decode_image(path, max_pixels=1000)
    with pytest.raises(ImageDecodeError, match="max_pixels"):
        preprocess_image(path, PreprocessConfig(resize_short=30, crop_size=30), max_pixels=1199)
    assert decode_image(path, max_pixels=1200).shape == (30, 40, 3)
    assert decode_image(path, max_pixels=None).shape == (30, 40, 3)
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # Pillow's process-wide limit is untouched


# ---------------------------------------------------------------------------------------------
# Resize
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "w,h",
    [(640, 480), (480, 640), (500, 500), (1, 1), (500, 383), (383, 500), (1000, 3), (97, 61)],
)
def test_resize_follows_torchvision_rule_and_pillow_bicubic(w, h):
    arr = _rng_image(h, w, seed=w * 7 + h)
    out = resize_short_side(arr, 384)
    if w <= h:
        exp_w, exp_h = 384, int(384 * h / w)
    else:
        exp_w, exp_h = int(384 * w / h), 384
    _check_rgb(out, exp_h, exp_w)
    ref = np.asarray(Image.fromarray(arr).resize((exp_w, exp_h), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, ref)


def test_resize_sizes_by_hand():
    assert resize_short_side(_rng_image(383, 500), 384).shape == (384, 501, 3)
    assert resize_short_side(_rng_image(1, 1), 384).shape == (384, 384, 3)
    assert resize_short_side(_rng_image(768, 512), 384).shape == (576, 384, 3)


def test_resize_noop_when_short_side_matches():
    arr = _rng_image(384, 600)
    assert resize_short_side(arr, 384) is arr
    arr = _rng_image(700, 384)
    assert resize_short_side(arr, 384) is arr


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        resize_short_side(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="filter"):
        resize_short_side(_rng_image(10, 10), 8, filter="cubic")


# ---------------------------------------------------------------------------------------------
# Crop layouts
# ---------------------------------------------------------------------------------------------


def _assert_inside(pos: np.ndarray, h: int, w: int, crop: int) -> None:
    assert pos.ndim == 2 and pos.shape[1] == 2 and np.issubdtype(pos.dtype, np.integer)
    assert (pos >= 0).all()
    assert (pos[:, 0] + crop <= h).all() and (pos[:, 1] + crop <= w).all()


def test_grid_landscape_3x5_covers_corners():
    h, w = 384, 512
    pos = grid_positions(h, w, 224, 15)
    np.testing.assert_array_equal(pos, grid_positions(h, w, 224, 15))  # deterministic
    assert pos.shape == (15, 2)
    _assert_inside(pos, h, w, 224)
    assert pos[0].tolist() == [0, 0] and pos[-1].tolist() == [h - 224, w - 224]
    assert sorted(set(pos[:, 0].tolist())) == [0, 80, 160]
    assert sorted(set(pos[:, 1].tolist())) == [0, 72, 144, 216, 288]
    assert pos[:5, 0].tolist() == [0] * 5  # row-major
    corners = {(0, 0), (0, w - 224), (h - 224, 0), (h - 224, w - 224)}
    assert corners <= {tuple(p) for p in pos.tolist()}


def test_grid_portrait_5x3_and_square():
    pos = grid_positions(512, 384, 224, 15)
    assert len(set(pos[:, 0].tolist())) == 5 and len(set(pos[:, 1].tolist())) == 3
    assert pos[-1].tolist() == [512 - 224, 384 - 224]
    _assert_inside(pos, 512, 384, 224)

    sq = grid_positions(384, 384, 224, 15)
    assert sq.shape == (15, 2)
    assert len(set(sq[:, 0].tolist())) == 3 and len(set(sq[:, 1].tolist())) == 5  # tie: fewer rows
    assert sq[0].tolist() == [0, 0] and sq[-1].tolist() == [160, 160]
    _assert_inside(sq, 384, 384, 224)


def test_grid_other_counts():
    h, w = 384, 683
    one = grid_positions(h, w, 224, 1)
    assert one.tolist() == [[(h - 224) // 2, (w - 224) // 2]]
    seven = grid_positions(h, w, 224, 7)  # prime: a single row, centred vertically
    assert set(seven[:, 0].tolist()) == {(h - 224) // 2} and seven[-1, 1] == w - 224
    tall = grid_positions(900, 384, 224, 7)
    assert set(tall[:, 1].tolist()) == {(384 - 224) // 2}
    exact = grid_positions(224, 224, 224, 15)
    assert (exact == 0).all()
    with pytest.raises(ValueError, match="does not fit"):
        grid_positions(200, 400, 224, 15)


def test_random_positions_reproducible_and_in_bounds():
    h, w = 384, 600
    a = random_positions(h, w, 224, 15, 123)
    b = random_positions(h, w, 224, 15, 123)
    c = random_positions(h, w, 224, 15, 124)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (15, 2)
    _assert_inside(a, h, w, 224)
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(
        random_positions(h, w, 224, 15, g1), random_positions(h, w, 224, 15, g2)
    )


def test_random_positions_roughly_uniform():
    h, w = 384, 600
    pos = random_positions(h, w, 224, 20000, 0)
    _assert_inside(pos, h, w, 224)
    assert pos[:, 0].min() == 0 and pos[:, 0].max() == h - 224
    assert pos[:, 1].min() == 0 and pos[:, 1].max() == w - 224
    assert abs(pos[:, 0].mean() - (h - 224) / 2) < 3
    assert abs(pos[:, 1].mean() - (w - 224) / 2) < 6
    counts = np.bincount(pos[:, 0], minlength=h - 224 + 1)
    assert counts.min() > 60 and counts.max() < 200  # expected ~124 per value


def test_crop_positions_dispatch():
    grid_cfg = PreprocessConfig()
    np.testing.assert_array_equal(crop_positions(384, 512, grid_cfg), grid_positions(384, 512))
    rand_cfg = PreprocessConfig(layout="random")
    np.testing.assert_array_equal(
        crop_positions(384, 512, rand_cfg, seed=9), random_positions(384, 512, 224, 15, 9)
    )
    with pytest.raises(ValueError, match="seed"):
        crop_positions(384, 512, rand_cfg)


def test_extract_crops():
    img = _rng_image(50, 60)
    pos = np.array([[0, 0], [10, 20], [30, 40]])
    crops = extract_crops(img, pos, 20)
    assert crops.shape == (3, 20, 20, 3) and crops.dtype == np.uint8 and crops.flags.c_contiguous
    for (y, x), crop in zip(pos, crops, strict=True):
        np.testing.assert_array_equal(crop, img[y : y + 20, x : x + 20])
    with pytest.raises(ValueError, match="leaves"):
        extract_crops(img, np.array([[31, 0]]), 20)
    with pytest.raises(ValueError, match="positions"):
        extract_crops(img, np.array([0.0, 1.0]), 20)


# ---------------------------------------------------------------------------------------------
# Whole pipeline
# ---------------------------------------------------------------------------------------------


def test_preprocess_image_end_to_end(tmp_path):
    arr = _rng_image(480, 640)
    path = tmp_path / "photo.png"
    Image.fromarray(arr).save(path)

    info = preprocess_image_with_info(path)
    assert (info.original_width, info.original_height) == (640, 480)
    assert (info.resized_width, info.resized_height) == (512, 384)
    assert info.crops.shape == (15, 224, 224, 3) and info.crops.dtype == np.uint8
    assert info.crops.flags.c_contiguous
    np.testing.assert_array_equal(info.positions, grid_positions(384, 512))

    resized = resize_short_side(arr)
    np.testing.assert_array_equal(info.crops, extract_crops(resized, info.positions, 224))
    np.testing.assert_array_equal(preprocess_image(path), info.crops)
    np.testing.assert_array_equal(preprocess_image(arr), info.crops)  # array input skips decode
    np.testing.assert_array_equal(preprocess_image(path.read_bytes()), info.crops)

    rand = PreprocessConfig(layout="random", num_crops=4)
    a = preprocess_image(path, rand, seed=1)
    assert a.shape == (4, 224, 224, 3)
    np.testing.assert_array_equal(a, preprocess_image(path, rand, seed=1))
    with pytest.raises(ValueError, match="seed"):
        preprocess_image(path, rand)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(arr.astype(np.float32))


def test_preprocess_uses_config_alpha_background(tmp_path):
    rgba = np.zeros((240, 240, 4), dtype=np.uint8)  # fully transparent
    path = tmp_path / "clear.png"
    Image.fromarray(rgba).save(path)
    cfg = PreprocessConfig(resize_short=240, crop_size=224, num_crops=1, alpha_background=(1, 2, 3))
    crops = preprocess_image(path, cfg)
    assert crops.shape == (1, 224, 224, 3)
    assert (crops == np.array([1, 2, 3], dtype=np.uint8)).all()


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------


def test_normalize_matches_float32_formula_exactly():
    crops = np.random.default_rng(1).integers(0, 256, size=(3, 8, 5, 3), dtype=np.uint8)
    crops[0, 0, 0] = (0, 128, 255)
    out = normalize(crops, IMAGENET_MEAN, IMAGENET_STD)
    assert out.dtype == np.float32 and out.shape == (3, 3, 8, 5) and out.flags.c_contiguous
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)
    std = np.array(IMAGENET_STD, dtype=np.float32)
    ref = (crops.astype(np.float32) / np.float32(255) - mean) / std
    assert ref.dtype == np.float32
    np.testing.assert_array_equal(out, ref.transpose(0, 3, 1, 2))  # 0 ulp
    np.testing.assert_array_equal(normalize(crops), out)  # ImageNet defaults


def test_normalize_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        normalize(np.zeros((1, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="NHWC"):
        normalize(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="NHWC"):
        normalize(np.zeros((1, 3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="std"):
        normalize(np.zeros((1, 4, 4, 3), dtype=np.uint8), std=(1.0, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_config_defaults_and_round_trip():
    cfg = PreprocessConfig()
    assert cfg == DEFAULT_CONFIG
    assert (cfg.resize_short, cfg.resize_filter, cfg.crop_size, cfg.num_crops, cfg.layout) == (
        384,
        "bicubic",
        224,
        15,
        "grid",
    )
    assert cfg.mean == IMAGENET_MEAN and cfg.std == IMAGENET_STD
    d = cfg.to_dict()
    assert d["mean"] == list(IMAGENET_MEAN) and d["alpha_background"] == [255, 255, 255]
    assert d["resize_rule"] == RESIZE_RULE
    assert PreprocessConfig.from_dict(json.loads(json.dumps(d))) == cfg
    other = PreprocessConfig(layout="random", num_crops=3, alpha_background=[0, 0, 0])
    assert other.alpha_background == (0, 0, 0)
    assert PreprocessConfig.from_dict(json.loads(json.dumps(other.to_dict()))) == other
    assert PreprocessConfig.from_dict({"num_crops": 5}).num_crops == 5
    with pytest.raises(AttributeError):
        cfg.crop_size = 100  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"resize_short": 0}, "resize_short must be positive"),
        ({"crop_size": -1}, "crop_size must be positive"),
        ({"num_crops": 0}, "num_crops must be positive"),
        ({"num_crops": 2.0}, "num_crops must be an int"),
        ({"crop_size": 400}, r"crop_size \(400\) must be <= resize_short \(384\)"),
        ({"layout": "five_crop"}, "layout must be one of"),
        ({"resize_filter": "cubic"}, "resize_filter must be one of"),
        ({"mean": (0.5, 0.5)}, "mean must be a sequence of 3"),
        ({"std": (0.2, 0.0, 0.2)}, "std must be > 0"),
        ({"std": (0.2, float("nan"), 0.2)}, "std must hold 3 finite"),
        ({"alpha_background": (0, 0, 256)}, "alpha_background must be in 0..255"),
        ({"alpha_background": (0, 0, 0.5)}, "alpha_background must hold 3 ints"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match) as ei:
        PreprocessConfig(**kwargs)
    assert "\n" not in str(ei.value)


def test_config_from_dict_rejects_unknown_keys():
    d = PreprocessConfig().to_dict()
    d["crop"] = 224
    d["zeta"] = 1
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'crop', 'zeta'") as ei:
        PreprocessConfig.from_dict(d)
    assert "\n" not in str(ei.value)
    with pytest.raises(ValueError, match="resize_rule"):
        PreprocessConfig.from_dict({"resize_rule": "something else"})


# ---------------------------------------------------------------------------------------------
# The exact path pinned to Pillow; the fast decode path
# ---------------------------------------------------------------------------------------------

FAST = PreprocessConfig(decode="fast")


def _photo(path: Path, w: int, h: int, seed: int = 0, exif=None, **save) -> Path:
    """A photo-like image: smooth large-scale structure plus fine grain, made in the test."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(h // 64, 2), max(w // 64, 2), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-6, 7, size=(h, w, 3), dtype=np.int16)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if exif is not None:
        save["exif"] = exif
    out.save(path, **save)
    return path


def _pillow_reference_crops(path: Path, cfg: PreprocessConfig = DEFAULT_CONFIG) -> np.ndarray:
    """The exact path computed independently: Pillow open -> EXIF transpose -> RGB -> resize to
    the torchvision size (by hand) -> the grid crops sliced out."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    short = cfg.resize_short
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    resized = np.asarray(im.resize(size, Image.Resampling.BICUBIC))
    pos = grid_positions(size[1], size[0], cfg.crop_size, cfg.num_crops)
    c = cfg.crop_size
    return np.stack([resized[y : y + c, x : x + c] for y, x in pos.tolist()])


@pytest.mark.parametrize(
    "name,w,h,orientation",
    [("a.jpg", 1600, 1200, None), ("b.jpg", 1200, 1700, 6), ("c.png", 900, 700, 3)],
)
def test_exact_path_is_byte_identical_to_plain_pillow(tmp_path, name, w, h, orientation):
    exif = None
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
    kwargs = {"quality": 90} if name.endswith(".jpg") else {}
    path = _photo(tmp_path / name, w, h, exif=exif, **kwargs)
    expected = _pillow_reference_crops(path)
    got = preprocess_image(path)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    # and the composition of the public steps (decode -> array -> resize) gives the same bytes
    resized = resize_short_side(decode_image(path))
    np.testing.assert_array_equal(
        got, extract_crops(resized, grid_positions(*resized.shape[:2]), 224)
    )


def test_exact_path_with_alpha_is_unchanged(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 256, size=(500, 700, 4), dtype=np.uint8)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    flat = np.asarray(decode_image(path))  # composited onto white by the documented rule
    expected = extract_crops(resize_short_side(flat), grid_positions(384, 537), 224)
    np.testing.assert_array_equal(preprocess_image(path), expected)
    fast = preprocess_image(path, FAST)
    assert fast.shape == expected.shape


def test_config_decode_field():
    assert PreprocessConfig().decode == "exact" and DEFAULT_CONFIG.decode == "exact"
    d = FAST.to_dict()
    assert d["decode"] == "fast"
    assert PreprocessConfig.from_dict(json.loads(json.dumps(d))) == FAST
    legacy = PreprocessConfig().to_dict()
    del legacy["decode"]  # metadata written before the field existed
    assert PreprocessConfig.from_dict(legacy).decode == "exact"
    with pytest.raises(ValueError, match="decode must be one of") as ei:
        PreprocessConfig(decode="turbo")
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize(
    "w,h",
    # the reduced short side keeps >= ceil(1.9 x 384) = 730 px: 1/2 (1800 // 730 = 2), none
    # (864 // 730 = 1), 1/4 (3073 // 730 = 4), 1/4 (3071 // 730 = 4), none (767), and 1/2 on a
    # size that is not a multiple of the scale
    [(2400, 1800), (1152, 864), (3073, 3200), (3071, 3071), (767, 1535), (2403, 1601)],
)
def test_fast_path_same_geometry_and_close_pixels(tmp_path, w, h):
    path = _photo(tmp_path / "p.jpg", w, h, quality=90)
    exact = preprocess_image_with_info(path)
    fast = preprocess_image_with_info(path, FAST)
    assert (fast.original_width, fast.original_height) == (w, h)
    assert (fast.resized_width, fast.resized_height) == (exact.resized_width, exact.resized_height)
    np.testing.assert_array_equal(fast.positions, exact.positions)
    diff = np.abs(fast.crops.astype(np.int16) - exact.crops.astype(np.int16))
    assert diff.mean() < 1.5, diff.mean()
    if min(w, h) >= 2 * 730:  # a reduced-scale decode happened: not the exact pixels
        assert diff.max() > 0
    else:  # too small to reduce with the margin: the exact path, byte for byte
        np.testing.assert_array_equal(fast.crops, exact.crops)


@pytest.mark.parametrize(
    "w,h,reduced",
    # the smallest DCT scale that keeps both sides >= ceil(1.9 x 384) = 730 px: a 12 MP photo's
    # 3000 px at 1/4 (750), 2400 px at 1/2 (1/4 would be 600), 1459 px at none (1/2: 729.5)
    [(4000, 3000, (1000, 750)), (3200, 2400, (1600, 1200)), (1459, 1945, None)],
)
def test_fast_path_decodes_at_reduced_scale(tmp_path, monkeypatch, w, h, reduced):
    path = _photo(tmp_path / "big.jpg", w, h, quality=90)
    from PIL import JpegImagePlugin

    calls = []

    jpeg_draft = JpegImagePlugin.JpegImageFile.draft

    def jpeg_spy(self, mode, size):
        result = jpeg_draft(self, mode, size)
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", jpeg_spy)
    preprocess_image(path, FAST)
    assert calls == ([((730, 730), reduced)] if reduced else [])
    calls.clear()
    preprocess_image(path)
    assert calls == []  # the exact path never drafts


@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_path_applies_every_exif_orientation(tmp_path, orientation):
    w, h = 2000, 1500  # reduced at 1/2 (1500 // 730 = 2)
    arr = np.full((h, w, 3), 128, dtype=np.uint8)
    arr[:375, :375] = (255, 0, 0)  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.jpg"
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    exact = preprocess_image_with_info(path)
    fast = preprocess_image_with_info(path, FAST)
    assert (fast.original_width, fast.original_height) == (
        exact.original_width,
        exact.original_height,
    )
    np.testing.assert_array_equal(fast.positions, exact.positions)
    diff = np.abs(fast.crops.astype(np.int16) - exact.crops.astype(np.int16))
    assert diff.mean() < 1.0, (orientation, diff.mean())


def test_fast_path_pixel_limits_still_apply(tmp_path):
    path = _photo(tmp_path / "p.jpg", 1600, 1200, quality=90)
    with pytest.raises(ImageDecodeError, match=r"1600x1200 = 1920000 pixels exceeds the limit"):
        preprocess_image(path, FAST, max_pixels=1_000_000)
    strip = _photo(tmp_path / "strip.jpg", 4000, 16, quality=90)
    with pytest.raises(ImageDecodeError, match="extreme aspect ratio"):
        preprocess_image(strip, dataclasses.replace(FAST, crop_size=16), max_pixels=100_000)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_fast_path_other_jpeg_modes(tmp_path, mode):
    path = tmp_path / f"{mode}.jpg"
    rgb = _photo(tmp_path / "src.png", 1000, 800)
    Image.open(rgb).convert(mode).save(path, quality=90)
    exact, fast = preprocess_image(path), preprocess_image(path, FAST)
    assert fast.shape == exact.shape == (15, 224, 224, 3)
    assert np.abs(fast.astype(np.int16) - exact.astype(np.int16)).mean() < 1.5


def test_fast_path_leaves_png_and_arrays_exact(tmp_path):
    # only JPEGs have a reduced-scale decode; everything else takes the exact path
    path = _photo(tmp_path / "p.png", 1200, 900)
    exact = preprocess_image(path)
    np.testing.assert_array_equal(preprocess_image(path, FAST), exact)
    np.testing.assert_array_equal(preprocess_image(decode_image(path), FAST), exact)


def test_fast_path_errors_are_one_line(tmp_path):
    full = io.BytesIO()
    Image.fromarray(_rng_image(900, 1200)).save(full, format="JPEG", quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg") as ei:
        preprocess_image(cut, FAST)
    assert "\n" not in str(ei.value)
