"""Hostile inputs for ``loda-score`` (issue 16): archives and lists built to hang, exhaust
memory, collide or lie. Every builder writes small files (the bombs' sizes are parameters:
the tests use megabytes with a small ``--max-member-bytes``, ``bench/bench_hostile.py`` a
1 GB member) and returns the path it wrote.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

__all__ = [
    "FORGED_SIZE",
    "bad_crc_tar_gz",
    "collision_folder",
    "corrupt_tar_gz",
    "forged_size_tar",
    "list_file",
    "make_fifo",
    "tar_bytes",
    "truncated_zip",
    "zero_bomb",
]

#: A member size no archive can hold: 10^20 bytes.
FORGED_SIZE = 10**20


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE, fmt: int = tarfile.USTAR_FORMAT):
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, 1_700_000_000
    return info.tobuf(fmt)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A plain tar of ``members`` (names stored as given)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def forged_size_tar(
    path: Path, *, how: str = "pax", member: str = "x.png", gz: bool = False
) -> Path:
    """A 2.5 KB tar whose member ``member`` declares ``FORGED_SIZE`` bytes.

    ``how="pax"``: a pax ``size=`` record (the issue's reproduction); ``how="base256"``: the
    size in the header's own field, base-256 encoded (GNU). ``gz``: gzip it (144 bytes).
    """
    if how == "pax":
        record = b"30 size=%d\n" % FORGED_SIZE
        data = (
            _header("././@PaxHeader", len(record), tarfile.XHDTYPE)
            + record.ljust(512, b"\0")
            + _header(member, 0)
        )
    elif how == "base256":
        data = _header(member, FORGED_SIZE, fmt=tarfile.GNU_FORMAT)
        assert data[124] & 0x80, "the size field must be base-256"
    else:
        raise ValueError(how)
    data += b"\0" * 1024
    if gz:
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def zero_bomb(path: Path, size: int, *, count: int = 1, name: str = "bomb{}.png") -> Path:
    """A .zip or .tar.gz (by ``path``'s suffix) of ``count`` members of ``size`` zero bytes
    each, written in 1 MiB pieces (never ``size`` bytes in memory)."""
    chunk = bytes(1 << 20)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for k in range(count):
                info = zipfile.ZipInfo(name.format(k), date_time=(2024, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=size > 0x7FFFFFFF) as out:
                    _write_zeros(out, size, chunk)
        return path
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        for k in range(count):
            info = tarfile.TarInfo(name.format(k))
            info.size, info.mtime = size, 1_700_000_000
            tar.addfile(info, _Zeros(size))
    return path


def _write_zeros(out, size: int, chunk: bytes) -> None:
    left = size
    while left:
        n = min(left, len(chunk))
        out.write(chunk[:n] if n < len(chunk) else chunk)
        left -= n


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def collision_folder(root: Path, image: bytes) -> Path:
    """``root/a.tar`` holding ``g1.png`` and a file literally named ``root/a.tar::g1.png``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.tar").write_bytes(tar_bytes({"g1.png": image}))
    (root / "a.tar::g1.png").write_bytes(image)
    return root


def truncated_zip(path: Path, members: dict[str, bytes], *, keep: float | None = None,
                  cut_end: int = 0, descriptor: bool = False) -> Path:  # fmt: skip
    """A zip of ``members`` cut to ``keep`` of its length, or with ``cut_end`` bytes off its
    end record. ``descriptor``: written as a stream (sizes in data descriptors)."""
    buf = io.BytesIO()
    target = _Unseekable(buf) if descriptor else buf
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as out:
                out.write(data)
    data = buf.getvalue()
    if keep is not None:
        data = data[: int(len(data) * keep)]
    if cut_end:
        data = data[:-cut_end]
    path.write_bytes(data)
    return path


class _Unseekable(io.RawIOBase):
    """A write-only stream: makes ``zipfile`` write data descriptors."""

    def __init__(self, buf: io.BytesIO) -> None:
        self.buf = buf

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return self.buf.write(b)

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        raise OSError("unseekable")

    def flush(self) -> None:
        pass


def bad_crc_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    """A .tar.gz whose gzip trailer CRC is wrong (the data itself is intact)."""
    data = bytearray(gzip.compress(tar_bytes(members), mtime=0))
    crc = struct.unpack_from("<I", data, len(data) - 8)[0]
    struct.pack_into("<I", data, len(data) - 8, crc ^ 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def corrupt_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    """A .tar.gz with damaged bytes in the last quarter of its deflate data."""
    raw = tar_bytes(members)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = bytearray(comp.compress(raw) + comp.flush())
    at = len(body) * 3 // 4
    body[at : at + 16] = bytes(b ^ 0x5A for b in body[at : at + 16])
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", zlib.crc32(raw), len(raw) & 0xFFFFFFFF)
    path.write_bytes(header + bytes(body) + trailer)
    return path


def list_file(path: Path, lines: list[str], *, encoding: str = "utf-8", bom: bool = False) -> Path:
    """A list of paths; ``bom`` prefixes a UTF-8 byte order mark (``encoding="utf-8"``)."""
    text = "\n".join(lines) + "\n"
    data = text.encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(data)
    return path
