"""A corpus of awkward inputs for ``loda-score``: every case a batch scorer must survive.

``make_bad_corpus(root)`` writes the files under ``root`` (well under a second, a few MB on disk)
and returns ``{name relative to root: expectation}``:

* ``"ok"``: must be scored (a result row with status ok);
* ``"error"``: must become an error row (and the run goes on);
* ``"skip"``: a documented skip, no row (reported to the inputs' ``skipped`` callback).

Archive members are named ``ARCHIVE::MEMBER`` (``loda.runtime.inputs.MEMBER_SEP``), the member
name exactly as stored in the archive. Used by the runtime's input, pipeline and CLI tests.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_bad_corpus"]


def _pixels(width: int, height: int, seed: int, channels: int = 3) -> np.ndarray:
    """A gradient plus noise (uint8, HxWxC), different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    planes = [xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), (xx + yy) % 256]
    planes += [np.full_like(planes[0], 255 - 40 * k) for k in range(channels - 3)]
    base = np.stack(planes[:channels], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def _jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pixels(width, height, seed)).convert(mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB); ``rows`` yields raw scanlines."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _rgb16_png(width: int = 80, height: int = 60, seed: int = 5) -> bytes:
    rgb = _pixels(width, height, seed).astype(">u2") * 257
    return _png(width, height, 16, 2, (rgb[y].tobytes() for y in range(height)))


@functools.lru_cache(maxsize=1)  # 18 MB of zeros to deflate: about 0.2 s, once per process
def _bomb_png(side: int = 12000) -> bytes:
    """A 1-bit grey ``side`` x ``side`` PNG (144 Mpx for 12000) that compresses to a few KB."""
    row = bytes((side + 7) // 8)
    return _png(side, side, 1, 0, (row for _ in range(side)))


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # names stored as given: "../x", "/abs/y" on purpose
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def _tar_gz_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            _tar_add(tar, name, data)
    return buf.getvalue()


def make_bad_corpus(root: Path) -> dict[str, str]:
    """Write the corpus under ``root`` (created if needed); return ``{name: expectation}``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}

    def image(name: str, array: np.ndarray, expectation: str = "ok", **save) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, **save)
        expect[name] = expectation

    def raw(name: str, data: bytes, expectation: str) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[name] = expectation

    # Images every decoder path must handle.
    raw("plain.jpg", _jpeg_bytes(64, 48, seed=1), "ok")
    raw("grey.jpg", _jpeg_bytes(96, 64, seed=2, mode="L"), "ok")
    raw("cmyk.jpg", _jpeg_bytes(96, 64, seed=3, mode="CMYK"), "ok")
    image("rgba.png", _pixels(120, 90, seed=4, channels=4))
    image("grey16.png", (_pixels(100, 70, seed=6)[..., 0].astype(np.uint16) * 257))
    raw("rgb16.png", _rgb16_png(), "ok")
    palette = Image.fromarray(_pixels(80, 64, seed=7)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(root / "palette.gif")
    expect["palette.gif"] = "ok"
    image("tiny_1x1.png", _pixels(1, 1, seed=8))  # upscaled to the crop size
    image("sub/deeper/nested.bmp", _pixels(64, 48, seed=9))
    image("UPPER.JPG", _pixels(64, 48, seed=10), format="JPEG")

    # Files that must become error rows.
    raw("zero.jpg", b"", "error")
    full = _jpeg_bytes(400, 300, seed=11)
    raw("truncated.jpg", full[: len(full) // 2], "error")
    raw("text.jpg", b"this is not an image\n", "error")
    # Short side 8 -> 384 makes the long side 960000: over the default pixel limit once resized.
    wide = np.broadcast_to(np.arange(20000, dtype=np.uint8)[None, :, None], (8, 20000, 3))
    image("wide_20000x8.png", np.ascontiguousarray(wide), "error")
    raw("bomb.png", _bomb_png(), "error")  # header says 144 Mpx > 89_478_485
    os.symlink("missing-target.jpg", root / "broken.jpg")
    expect["broken.jpg"] = "error"

    # Documented skips.
    os.symlink(".", root / "loop")  # a directory symlink loop: not followed
    expect["loop"] = "skip"
    raw(".hidden.jpg", _jpeg_bytes(seed=12), "skip")
    raw("notes.txt", b"not scored: no image suffix\n", "skip")

    # A tar whose member names try to escape; nothing is ever extracted.
    photo = _jpeg_bytes(64, 48, seed=13)
    with tarfile.open(root / "members.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        _tar_add(tar, "photo.jpg", photo)
        _tar_add(tar, "../escape.jpg", _jpeg_bytes(64, 48, seed=14))
        _tar_add(tar, "/abs/abs.jpg", _jpeg_bytes(64, 48, seed=15))
        _tar_add(tar, "inner.zip", _zip_bytes({"x.jpg": photo}))
        _tar_add(tar, "README.txt", b"read me\n")
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "photo.jpg"
        tar.addfile(link)
    expect.update(
        {
            "members.tar::photo.jpg": "ok",
            "members.tar::../escape.jpg": "ok",
            "members.tar::/abs/abs.jpg": "ok",
            "members.tar::inner.zip": "error",
            "members.tar::README.txt": "skip",
            "members.tar::link.jpg": "skip",
        }
    )

    # The same for zip, plus a Windows-style name and macOS resource-fork litter.
    zip_members = {
        "photo.jpg": _jpeg_bytes(64, 48, seed=16),
        "../escape.jpg": _jpeg_bytes(64, 48, seed=17),
        "/abs/abs.jpg": _jpeg_bytes(64, 48, seed=18),
        "C:\\win\\z.jpg": _jpeg_bytes(64, 48, seed=19),
        "dir/": b"",
        "nested.tar.gz": _tar_gz_bytes({"x.jpg": photo}),
        "notes.txt": b"read me\n",
        "__MACOSX/._photo.jpg": b"\x00\x05\x16\x07 resource fork",
    }
    (root / "members.zip").write_bytes(_zip_bytes(zip_members))
    expect.update(
        {
            "members.zip::photo.jpg": "ok",
            "members.zip::../escape.jpg": "ok",
            "members.zip::/abs/abs.jpg": "ok",
            "members.zip::C:\\win\\z.jpg": "ok",
            "members.zip::dir/": "skip",
            "members.zip::nested.tar.gz": "error",
            "members.zip::notes.txt": "skip",
            "members.zip::__MACOSX/._photo.jpg": "skip",
        }
    )

    # A tar cut in the middle of its second member: the first is scored, the archive is an error.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _tar_add(tar, "first.jpg", _jpeg_bytes(64, 48, seed=20))
        _tar_add(tar, "second.jpg", _jpeg_bytes(200, 150, seed=21))
    data = buf.getvalue()
    second_header = 512 + (len(_jpeg_bytes(64, 48, seed=20)) + 511) // 512 * 512
    (root / "truncated.tar").write_bytes(data[: second_header + 512 + 1000])
    expect.update({"truncated.tar::first.jpg": "ok", "truncated.tar": "error"})
    return expect
