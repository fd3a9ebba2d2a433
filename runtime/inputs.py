"""What ``loda-score`` scores: turn INPUT arguments into a lazy stream of items (torch-free).

Every item has a *source*, the key of its result row: a file path as given or found, or
``ARCHIVE::MEMBER`` for a member of an archive. Inputs are enumerated lazily (nothing is listed
up front beyond one directory level at a time), so a million-member tar streams in flat memory.
The user documentation of these rules is ``docs/inputs.md``.

Input rules (``iter_inputs``)
-----------------------------
Each INPUT, in the order given:

* ``-``: newline-separated paths read from standard input.
* ``@FILE``: newline-separated paths read from FILE. Relative paths are relative to the current
  directory, not to FILE.
  In both lists blank (empty or all-space) lines and lines starting with ``#`` are ignored
  (name a file ``#x.jpg`` as ``./#x.jpg``), a trailing ``\\r`` and a leading UTF-8 byte order
  mark are dropped, and bytes that are not UTF-8 are kept exactly (``os.fsdecode``: file names
  are bytes). A list in UTF-16 or UTF-32 (a byte order mark or NUL bytes: no path holds a
  NUL) is refused as one ``InputError``. Each listed path is handled like an INPUT below,
  except that a path that does not exist becomes an error row instead of stopping the run.
* A file: one item, whatever its suffix (a file you name is meant to be scored; if it is not an
  image its decode fails and it becomes an error row), unless its suffix is an archive suffix.
  Anything that is not a regular file or a directory (a FIFO, a socket, a device) is an error
  row ``not a regular file`` and is never opened: a FIFO would block the run for ever. Files
  are opened with ``O_NONBLOCK`` and checked again with ``fstat`` (a file swapped for a FIFO
  between the two checks cannot block either).
* An archive (by suffix, case-insensitive: ``.zip .tar .tar.gz .tgz .tar.bz2 .tbz2 .tar.xz
  .txz``): read member by member, never extracted to disk. Tar archives are streamed (memory
  stays flat whatever the archive size, no member index is kept; the compression is told from
  the first bytes), forward only: a member header's size is checked against the archive's own
  size when the tar is not compressed, and skipping a member of a compressed tar reads its
  data and stops at the end of the stream, so a forged size (a pax ``size=`` record, a base-256
  size field) costs the time of the real data, never a walk towards the forged offset.
  Extended headers (pax, GNU long names) over ``MAX_EXTENDED_HEADER_BYTES`` end the archive.
  After the last tar member the rest of a compressed stream is read, so a bad gzip CRC or a
  damaged trailer is reported. Zip archives are read in central-directory order (``zipfile``
  keeps that directory in memory); a zip whose central directory is missing or damaged (a
  truncated download) is read again from its local file headers, which recovers every member
  before the damage. For each member:

  - a regular member with an image suffix: an item ``ARCHIVE::NAME`` holding the member's bytes;
  - a regular member with an archive suffix (a nested archive): an error row
    ``nested archive skipped: ...`` (extract it and pass it as an INPUT);
  - anything else (directories, links, devices, hidden names such as ``__MACOSX/._x.jpg``,
    non-image names such as ``README.txt``): skipped, reported to the ``skipped`` callback;
  - a regular member whose name an earlier member of the archive already had (tar appends
    new versions, zip allows it too): skipped, reported as ``duplicate member name; the first
    one is scored`` (a row is keyed by its source, so a name gets one row);
  - a member larger than the member cap (``max_member_bytes``, default ``member_cap(max
    pixels)``), or one that cannot be read (zip: bad CRC, encrypted, unknown compression): an
    error row ``cannot read member: ...``. The cap is checked on the declared size before
    anything is read, and reads never go past it.

  Member names such as ``../x.jpg``, ``/abs/y.jpg`` or ``C:\\z.jpg`` are only names: the bytes are
  read into memory and nothing is ever written anywhere; the source keeps the name as stored.
  A corrupt or truncated archive yields the members read so far, then one error row whose source
  is the archive path (``cannot read archive: ...``), and the run goes on with the next input.
* A directory: walked recursively (``recursive=False``: its top level only), depth first, the
  entries of every directory sorted by name (files and subdirectories together), so the order is
  deterministic. Files with an image suffix (case-insensitive, ``IMAGE_SUFFIXES``) are items,
  files with an archive suffix are expanded as above, other files are skipped. Hidden entries
  (name starting with ``.``) are skipped, hidden directories with everything below them.
  Symbolic links to files are followed; symbolic links to directories are NOT followed (so a
  link loop such as ``loop -> .`` cannot recurse forever) and are reported as skipped; a broken
  link with an image suffix is an error row. Special files (FIFOs, sockets, devices) are skipped.
  A directory that cannot be listed is an error row with the directory as source.
  A directory or a link to one named explicitly as an INPUT is of course walked.

Keys
----
A source is produced once per *normalised key* (``normalise_key``: the file part made absolute
and normalised, ``./x``, ``x`` and ``$PWD/x`` alike; a member name is kept as stored), the
first spelling being the row's source. A key that names both a file and an archive member (a
file literally named ``a.tar::g1.png`` beside ``a.tar``) is one error row ``key collision``:
neither is scored, since one row could not tell them apart.

A missing INPUT (or an unreadable ``@FILE``) is a usage error: ``check_specs`` raises
``InputError`` before anything is enumerated.

Sharding (``shard_of``): source ``s`` belongs to shard
``int.from_bytes(sha256(s.encode("utf-8", "surrogateescape")).digest()[:8], "big") % N``, which
is the same on every machine and every run, so N processes given the same INPUTs and ``I/N``
(``parse_shard``) score disjoint sets that together cover every item.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import struct
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from loda.errors import LodaError, first_line
from loda.preprocess import DEFAULT_MAX_PIXELS
from loda.sources import ARCHIVE_SUFFIXES, IMAGE_SUFFIXES, is_archive_name, is_image_name

__all__ = [
    "ARCHIVE_SUFFIXES",
    "DEFAULT_MAX_MEMBER_BYTES",
    "IMAGE_SUFFIXES",
    "MAX_EXTENDED_HEADER_BYTES",
    "MAX_MEMBER_BYTES",
    "MEMBER_SEP",
    "InputError",
    "InputItem",
    "check_specs",
    "is_archive_name",
    "is_image_name",
    "iter_input_files",
    "iter_inputs",
    "member_cap",
    "normalise_key",
    "open_regular",
    "parse_shard",
    "shard_of",
]

MEMBER_SEP = "::"

#: Bytes per pixel of the largest common uncompressed encoding (24-bit RGB: BMP, PPM, TIFF).
MEMBER_BYTES_PER_PIXEL = 3
#: Room on top of the pixels for headers and metadata (EXIF, ICC profiles, thumbnails).
MEMBER_HEADROOM_BYTES = 16 << 20
#: The member cap when there is no pixel limit (``--max-pixels 0``).
UNLIMITED_PIXELS_MEMBER_BYTES = 1 << 30


def member_cap(max_pixels: int | None) -> int:
    """The largest archive member read into memory: ``3 * max_pixels + 16 MiB``.

    An encoded image under the pixel limit is at most about 3 bytes a pixel (uncompressed
    24-bit RGB); anything larger cannot decode under the limit, so it is refused unread.
    Without a pixel limit (``None`` or 0) the cap is 1 GiB.
    """
    if not max_pixels:
        return UNLIMITED_PIXELS_MEMBER_BYTES
    return MEMBER_BYTES_PER_PIXEL * int(max_pixels) + MEMBER_HEADROOM_BYTES


DEFAULT_MAX_MEMBER_BYTES: int = member_cap(DEFAULT_MAX_PIXELS)
MAX_MEMBER_BYTES = DEFAULT_MAX_MEMBER_BYTES  # the default cap, under its former name
#: A pax header or GNU long name larger than this ends the archive (real ones are a few KB).
MAX_EXTENDED_HEADER_BYTES = 8 << 20

_CHUNK = 1 << 20

# What reading a damaged archive can raise (tarfile, zipfile and the decompressors below them).
_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    RuntimeError,  # zipfile: encrypted member, password required
    struct.error,
    OverflowError,
    MemoryError,
)

Skipped = Callable[[str, str], None]


class InputError(LodaError):
    """An INPUT argument is unusable (missing path, unreadable list); the message is one line."""


class NotRegularFile(OSError):
    """A path names a FIFO, socket or device: never read (it could block for ever)."""


@dataclass(frozen=True)
class InputItem:
    """One thing to score, or one error row to write.

    ``source`` is the row key. A file on disk has ``path`` (the worker reads it); an archive
    member carries its ``data`` (a ``bytearray``, read once, handed to the worker without a
    copy); ``error`` (one line) marks an item that already failed and must become an error row.
    """

    source: str
    path: str | None = None
    data: bytes | bytearray | None = None
    error: str | None = None

    def read_bytes(self) -> bytes:
        """The member's bytes, or the file's bytes (``OSError`` if it cannot be read)."""
        if self.data is not None:
            return bytes(self.data)
        if self.path is None:
            raise OSError(f"{self.source}: no file and no data ({self.error or 'no bytes'})")
        with open_regular(self.path) as f:
            return f.read()


def open_regular(path: str | os.PathLike, name: str | None = None) -> io.BufferedReader:
    """Open a regular file for reading without ever blocking on a FIFO or a device.

    ``O_NONBLOCK`` makes opening a FIFO return at once; ``fstat`` on the open descriptor then
    refuses anything but a regular file (``NotRegularFile``), whatever the path named when it
    was checked before.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{os.fsdecode(path)}: not a regular file")
        os.set_blocking(fd, True)
        f = open(fd, "rb", closefd=True)  # noqa: SIM115 (returned to the caller, who closes it)
        # messages name the file (``name``: the row's key), never the descriptor number
        f.raw.name = os.fsdecode(path) if name is None else name
        return f
    except BaseException:
        os.close(fd)
        raise


def split_key(source: str) -> tuple[str, str | None]:
    """``(archive, member)`` of a member key, ``(path, None)`` for a file key.

    The separator is the first ``::`` that follows an archive suffix, so archive paths and
    member names may hold ``::`` themselves.
    """
    start = 0
    while True:
        i = source.find(MEMBER_SEP, start)
        if i < 0:
            return source, None
        if is_archive_name(source[:i]):
            return source[:i], source[i + len(MEMBER_SEP) :]
        start = i + 1


def normalise_key(source: str) -> str:
    """The key two spellings of one input share: the file part absolute and normalised."""
    path, member = split_key(source)
    path = os.path.abspath(path) if path else path
    return path if member is None else f"{path}{MEMBER_SEP}{member}"


def shard_of(source: str, n: int) -> int:
    """The shard (``0 <= shard < n``) of a source; stable across runs, machines and Pythons."""
    if n < 1:
        raise ValueError(f"number of shards must be >= 1, got {n}")
    digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (shard I of N, ``0 <= I < N``) into ``(I, N)``."""
    usage = f"shard must be I/N with integers 0 <= I < N (e.g. 0/4), got {text!r}"
    parts = text.strip().split("/")
    if len(parts) != 2:
        raise ValueError(usage)
    try:
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(usage) from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(usage)
    return index, count


def _list_encoding_error(head: bytes) -> str | None:
    """Why a list starting with ``head`` is not UTF-8 text of paths, or None."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "it is UTF-16 or UTF-32 (it starts with a byte order mark)"
    if b"\0" in head:
        return "it holds NUL bytes (UTF-16 or UTF-32 text, or not a text file)"
    return None


def check_specs(specs: Sequence[str]) -> None:
    """Raise ``InputError`` naming the first INPUT that does not exist (or unusable @list)."""
    for spec in specs:
        if spec == "-":
            continue
        if spec.startswith("@"):
            list_path = spec[1:]
            try:
                st = os.stat(list_path)
            except OSError:
                st = None
            if st is None or stat.S_ISDIR(st.st_mode):
                raise InputError(
                    f"input list not found: {list_path} (@FILE must name a file of paths, "
                    "one per line)"
                )
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"input list {list_path} is not a regular file")
            try:
                with open_regular(list_path) as f:
                    head = f.read(4096)
            except OSError as exc:
                raise InputError(
                    f"input list not readable: {list_path}: {exc.strerror or first_line(exc)}"
                ) from None
            why = _list_encoding_error(head)
            if why:
                raise InputError(f"input list {list_path} is not UTF-8: {why}; save it as UTF-8")
            continue
        if not os.path.lexists(spec):
            raise InputError(
                f"input not found: {spec} (pass an existing image, directory or archive, "
                "@FILE or -)"
            )


def iter_inputs(
    specs: Sequence[str],
    *,
    stdin: IO[Any] | None = None,
    skipped: Skipped | None = None,
    recursive: bool = True,
    read_data: bool = True,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Iterator[InputItem]:
    """Enumerate the items of ``specs`` lazily, following the rules in the module docstring.

    ``read_data=False`` only names the items (archive members come without their bytes): what
    ``loda-score`` uses to count its inputs for the progress bar's total.

    ``stdin`` is read for the spec ``-`` (default ``sys.stdin``; text or binary). ``skipped``
    is called as ``skipped(source, reason)`` for every documented skip. Missing INPUTs raise
    ``InputError`` here, before the first item.
    """
    check_specs(specs)
    if max_member_bytes < 1:
        raise ValueError(f"max_member_bytes must be >= 1, got {max_member_bytes}")
    return _Enumerator(
        stdin=stdin if stdin is not None else sys.stdin,
        skipped=skipped or _ignore,
        recursive=recursive,
        read_data=read_data,
        max_member_bytes=max_member_bytes,
    ).run(list(specs))


def iter_input_files(
    specs: Sequence[str], *, stdin: IO[Any] | None = None, recursive: bool = True
) -> Iterator[str]:
    """Every file a run over ``specs`` would open: list files, named files, files found by
    walking directories, archives (not their members). Nothing is opened but the lists."""
    check_specs(specs)
    enumerator = _Enumerator(
        stdin=stdin if stdin is not None else sys.stdin,
        skipped=_ignore,
        recursive=recursive,
        read_data=False,
        files_only=True,
    )
    for item in enumerator.run(list(specs)):
        if item.path is not None:
            yield item.path


def _ignore(source: str, reason: str) -> None:
    pass


def _basename(member_name: str) -> str:
    return member_name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _list_lines(lines: Iterable[str | bytes], where: str) -> Iterator[str]:
    first = True
    for raw in lines:
        if isinstance(raw, bytes):
            if b"\0" in raw:
                raise InputError(
                    f"input list {where} is not UTF-8: it holds NUL bytes (UTF-16 or UTF-32 "
                    "text, or not a text file); save it as UTF-8"
                )
            line = os.fsdecode(raw)
        else:
            if "\0" in raw:
                raise InputError(f"input list {where} holds NUL characters; save it as UTF-8")
            line = raw
        if first:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte order mark (Windows editors)
            first = False
        line = line.rstrip("\n").rstrip("\r")
        if line.strip() and not line.startswith("#"):
            yield line


def _too_large(size: int, cap: int) -> str:
    return (
        f"cannot read member: {size} bytes is over the {cap}-byte member limit (--max-member-bytes)"
    )


def _read_exact(f: Any, n: int) -> bytearray:
    """Read exactly ``n`` bytes into one buffer, 1 MiB at a time (no second copy)."""
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        got = f.readinto(view[pos : pos + _CHUNK])
        if not got:
            raise EOFError(f"unexpected end of data after {pos} of {n} bytes")
        pos += got
    view.release()
    return buf


# -- tar -----------------------------------------------------------------------------------------


class _ForwardReader(io.RawIOBase):
    """A forward-only file for ``tarfile``: a seek forward reads and drops the bytes in between
    and stops at the end of the data, so a forged member size costs the time of the bytes
    really there, never a loop towards the forged offset (``tarfile``'s stream mode spins there).
    On a seekable (uncompressed) file a seek is a real seek, clamped to the file's size."""

    def __init__(self, raw: Any, size: int | None) -> None:
        super().__init__()
        self.raw = raw
        self.size = size  # the archive's own size when seekable, else None
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.raw.readinto(b)
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise ValueError("unbounded read of an archive stream")
        data = self.raw.read(n)
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self.pos
        elif whence != 0:
            raise OSError("archive streams seek from the start only")
        if pos < self.pos:
            raise tarfile.ReadError("an archive stream cannot seek backwards")
        if self.size is not None:
            self.pos = self.raw.seek(min(pos, self.size))
            return self.pos
        while self.pos < pos:
            got = self.raw.read(min(pos - self.pos, _CHUNK))
            if not got:
                break
            self.pos += len(got)
        return self.pos

    def drain(self) -> None:
        """Read to the end of the stream (a compressed stream checks its CRC trailer there)."""
        if self.size is None:
            while self.raw.read(_CHUNK):
                pass


class _TarInfo(tarfile.TarInfo):
    """Tar headers checked before ``tarfile`` acts on them.

    A damaged header mid-archive is an error (``tarfile`` would end the archive silently; a
    missing end-of-archive marker at a member boundary is accepted, as GNU tar does). A member
    whose data would end past the archive's own size (a forged size) and an extended header
    over ``MAX_EXTENDED_HEADER_BYTES`` (which ``tarfile`` reads whole) end the archive.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            info = super().fromtarfile(tarfile_)
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as exc:
            if tarfile_.offset == 0:
                raise
            raise tarfile.ReadError(
                f"damaged member header at byte {tarfile_.offset}: {exc}"
            ) from None
        size = getattr(tarfile_.fileobj, "size", None)
        has_data = info.isreg() or info.type not in tarfile.SUPPORTED_TYPES
        if size is not None and has_data and info.offset_data + info.size > size:
            raise tarfile.ReadError(
                f"member {info.name!r} declares {info.size} bytes, past the end of the "
                f"{size}-byte archive (a forged or truncated header)"
            )
        return info

    def _check_extended(self, tarfile_: tarfile.TarFile) -> None:
        size = getattr(tarfile_.fileobj, "size", None)
        if self.size > MAX_EXTENDED_HEADER_BYTES or (
            size is not None and tarfile_.offset + tarfile.BLOCKSIZE + self.size > size
        ):
            raise tarfile.ReadError(
                f"extended header at byte {tarfile_.offset} declares {self.size} bytes "
                f"(over {MAX_EXTENDED_HEADER_BYTES} or past the end of the archive)"
            )

    def _proc_pax(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        self._check_extended(tarfile_)
        return super()._proc_pax(tarfile_)

    def _proc_gnulong(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        self._check_extended(tarfile_)
        return super()._proc_gnulong(tarfile_)


def _decompressed(f: io.BufferedReader) -> tuple[Any, int | None]:
    """The tar stream inside ``f`` (told by its first bytes) and its size when uncompressed."""
    head = f.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb"), None
    if head.startswith(b"BZh"):
        return bz2.BZ2File(f), None
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f), None
    return f, _file_size(f)


def _file_size(f: Any) -> int:
    """The size of an open archive: ``fstat`` for an OS file, else the end of a seekable file
    (an object-store file of ``loda.runtime.ray_fs``)."""
    try:
        return os.fstat(f.fileno()).st_size
    except io.UnsupportedOperation:
        pos = f.tell()
        size = f.seek(0, io.SEEK_END)
        f.seek(pos)
        return size


# -- zip local headers ---------------------------------------------------------------------------

_ZIP64_EXTRA = 0x0001
_DATA_DESCRIPTOR = b"PK\x07\x08"


@dataclass
class _LocalMember:
    name: str
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    data_offset: int
    zip64: bool


def _zip64_sizes(extra: bytes, size: int, compressed: int) -> tuple[int, int, bool]:
    """The sizes with the zip64 extra field applied, and whether there was one."""
    i = 0
    while i + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, i)
        if kind == _ZIP64_EXTRA:
            values = list(
                struct.unpack_from(f"<{min(length, len(extra) - i - 4) // 8}Q", extra, i + 4)
            )
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
            if compressed == 0xFFFFFFFF and values:
                compressed = values.pop(0)
            return size, compressed, True
        i += 4 + length
    return size, compressed, False


def _local_header(f: Any, offset: int) -> _LocalMember | None:
    """The local file header at ``offset``, or None where there is none (end or damage)."""
    f.seek(offset)
    header = f.read(zipfile.sizeFileHeader)
    if len(header) < zipfile.sizeFileHeader or header[:4] != zipfile.stringFileHeader:
        return None
    fields = struct.unpack(zipfile.structFileHeader, header)
    flags = fields[zipfile._FH_GENERAL_PURPOSE_FLAG_BITS]
    name_len = fields[zipfile._FH_FILENAME_LENGTH]
    extra_len = fields[zipfile._FH_EXTRA_FIELD_LENGTH]
    raw_name = f.read(name_len)
    extra = f.read(extra_len)
    if len(raw_name) < name_len or len(extra) < extra_len:
        return None
    name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
    size, compressed, zip64 = _zip64_sizes(
        extra, fields[zipfile._FH_UNCOMPRESSED_SIZE], fields[zipfile._FH_COMPRESSED_SIZE]
    )
    return _LocalMember(
        name=name,
        flags=flags,
        method=fields[zipfile._FH_COMPRESSION_METHOD],
        crc=fields[zipfile._FH_CRC],
        compressed=compressed,
        size=size,
        data_offset=offset + zipfile.sizeFileHeader + name_len + extra_len,
        zip64=zip64,
    )


def _inflate_local(f: Any, member: _LocalMember, cap: int) -> tuple[bytearray | None, int]:
    """Inflate a deflated member whose sizes are in a data descriptor: ``(data or None when
    over ``cap``, compressed length)``. ``EOFError`` when the stream is cut."""
    f.seek(member.data_offset)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    fed = 0
    over = False
    while not inflater.eof:
        chunk = f.read(_CHUNK)
        if not chunk:
            raise EOFError("member data cut short")
        fed += len(chunk)
        data = inflater.decompress(chunk, 0 if over else cap + 1 - len(out))
        while not over and inflater.unconsumed_tail and len(out) + len(data) <= cap:
            out += data
            data = inflater.decompress(inflater.unconsumed_tail, cap + 1 - len(out))
        if not over:
            out += data
            if len(out) > cap:
                over, out = True, bytearray()
        while over and inflater.unconsumed_tail:  # count the rest without keeping it
            inflater.decompress(inflater.unconsumed_tail, _CHUNK)
    compressed = fed - len(inflater.unused_data)
    return (None if over else out), compressed


# -- the enumerator ------------------------------------------------------------------------------


class _Enumerator:
    def __init__(
        self,
        *,
        stdin: IO[Any],
        skipped: Skipped,
        recursive: bool,
        read_data: bool = True,
        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
        files_only: bool = False,
    ) -> None:
        self.read_data = read_data
        self.stdin = stdin
        self.skipped = skipped
        self.recursive = recursive
        self.cap = max_member_bytes
        self.files_only = files_only
        self.seen: set[str] = set()  # normalised keys
        self.seen_archives: set[str] = set()

    def run(self, specs: list[str]) -> Iterator[InputItem]:
        for spec in specs:
            if spec == "-":
                stream = getattr(self.stdin, "buffer", self.stdin)
                for path in _list_lines(stream, "on stdin"):
                    yield from self._listed(path)
            elif spec.startswith("@"):
                list_path = spec[1:]
                try:
                    list_file = open_regular(list_path)
                except OSError as exc:
                    raise InputError(
                        f"cannot read input list {list_path}: {exc.strerror or first_line(exc)}"
                    ) from None
                if self.files_only:
                    yield InputItem(list_path, path=list_path)
                with list_file:
                    for path in _list_lines(list_file, list_path):
                        yield from self._listed(path)
            else:
                yield from self._explicit(spec)

    # -- one named path --------------------------------------------------------------------

    def _emit(self, item: InputItem) -> Iterator[InputItem]:
        key = normalise_key(item.source)
        if key not in self.seen:
            self.seen.add(key)
            yield item

    def _listed(self, path: str) -> Iterator[InputItem]:
        if not os.path.lexists(path):
            yield from self._emit(InputItem(path, error="input not found"))
        else:
            yield from self._explicit(path)

    def _explicit(self, path: str) -> Iterator[InputItem]:
        try:
            st = os.stat(path)  # an explicit link is followed, to a directory too
        except OSError as exc:
            yield from self._emit(InputItem(path, error=_stat_error(path, exc)))
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self._walk(path)
        elif not stat.S_ISREG(st.st_mode):
            yield from self._emit(InputItem(path, error="not a regular file"))
        elif is_archive_name(path):
            yield from self._archive(path)
        else:
            yield from self._file(path)

    def _file(self, path: str) -> Iterator[InputItem]:
        collision = self._file_collision(path)
        if collision:
            yield from self._emit(InputItem(path, error=collision))
        else:
            yield from self._emit(InputItem(path, path=path))

    @staticmethod
    def _file_collision(path: str) -> str | None:
        """A file named like a member of an archive beside it shares that member's key."""
        if MEMBER_SEP not in path:
            return None
        archive, member = split_key(path)
        if member is not None and os.path.isfile(archive):
            return _collision(path)
        return None

    # -- directories -----------------------------------------------------------------------

    def _listdir(self, path: str) -> list[os.DirEntry] | str:
        try:
            with os.scandir(path) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            return f"cannot read directory: {exc.strerror or first_line(exc)}"

    def _walk(self, top: str) -> Iterator[InputItem]:
        listing = self._listdir(top)
        if isinstance(listing, str):
            yield from self._emit(InputItem(top, error=listing))
            return
        stack: list[Iterator[os.DirEntry]] = [iter(listing)]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            path = entry.path
            if entry.name.startswith("."):
                self.skipped(path, "hidden")
            elif entry.is_dir(follow_symlinks=False):
                if not self.recursive:
                    self.skipped(path, "subdirectory (not recursive)")
                    continue
                listing = self._listdir(path)
                if isinstance(listing, str):
                    yield from self._emit(InputItem(path, error=listing))
                else:
                    stack.append(iter(listing))
            else:
                yield from self._walk_file(entry, path)

    def _walk_file(self, entry: os.DirEntry, path: str) -> Iterator[InputItem]:
        try:
            mode = entry.stat(follow_symlinks=True).st_mode
        except OSError as exc:  # a broken link or a link loop
            if is_image_name(entry.name) or is_archive_name(entry.name):
                yield from self._emit(InputItem(path, error=_stat_error(path, exc)))
            else:
                self.skipped(path, "broken symlink")
            return
        if stat.S_ISDIR(mode):
            self.skipped(path, "directory symlink not followed")
        elif not stat.S_ISREG(mode):
            self.skipped(path, "not a regular file")
        elif is_archive_name(entry.name):
            yield from self._archive(path)
        elif is_image_name(entry.name):
            yield from self._file(path)
        else:
            self.skipped(path, "not an image suffix")

    # -- archives --------------------------------------------------------------------------

    def _archive(self, path: str) -> Iterator[InputItem]:
        key = os.path.abspath(path)
        if key in self.seen_archives:
            return
        self.seen_archives.add(key)
        if self.files_only:
            yield InputItem(path, path=path)
            return
        try:
            f = open_regular(path)
        except NotRegularFile:
            yield from self._emit(InputItem(path, error="not a regular file"))
            return
        except OSError as exc:
            yield from self._emit(InputItem(path, error=_stat_error(path, exc)))
            return
        yield from self._archive_items(path, f)

    def _archive_items(self, path: str, f: Any) -> Iterator[InputItem]:
        """The members of the open archive ``f`` (closed at the end), one item at a time."""
        with f:
            if path.lower().endswith(".zip"):
                members = self._zip_members(path, f)
            else:
                members = self._tar_members(path, f)
            for item in members:
                yield from self._emit(item)
                del item  # hold no member's bytes while the next one is read

    def _member_rule(self, source: str, name: str) -> tuple[str, str | None]:
        """``("read", None)``, ``("error", message)`` or ``("skip", reason)`` for a member."""
        base = _basename(name)
        if normalise_key(source) in self.seen:  # rows are keyed by source: one row per name
            return "skip", "duplicate member name; the first one is scored"
        if base.startswith("."):
            return "skip", "hidden"
        if is_archive_name(base):
            return "error", f"nested archive skipped: {name!r} (extract it and pass it as an input)"
        if is_image_name(base):
            if os.path.lexists(source):
                return "error", _collision(source)
            return "read", None
        return "skip", "not an image suffix"

    def _regular_member(
        self, source: str, name: str, size: int, read: Callable[[], bytearray]
    ) -> InputItem | None:
        """The item of a regular member of declared ``size`` (None: skipped); ``read()``
        returns its bytes (only called when they are wanted and under the cap)."""
        action, detail = self._member_rule(source, name)
        if action == "skip":
            self.skipped(source, detail)
            return None
        if action == "error":
            return InputItem(source, error=detail)
        if size > self.cap:
            return InputItem(source, error=_too_large(size, self.cap))
        if not self.read_data:
            return InputItem(source)
        return InputItem(source, data=read())

    def _tar_members(self, path: str, f: io.BufferedReader) -> Iterator[InputItem]:
        try:
            raw, size = _decompressed(f)
            stream = _ForwardReader(raw, size)
            tar = tarfile.TarFile(fileobj=stream, mode="r", tarinfo=_TarInfo)
        except _ARCHIVE_ERRORS as exc:
            yield InputItem(path, error=f"cannot read archive: {first_line(exc)}")
            return
        try:
            while True:
                try:
                    member = tar.next()
                    if member is None:
                        stream.drain()
                        return
                    tar.members.clear()  # streaming: keep no member index
                    item = self._tar_member(stream, path, member)
                except _ARCHIVE_ERRORS as exc:
                    yield InputItem(path, error=f"cannot read archive: {_archive_error(exc)}")
                    return
                if item is not None:
                    yield item
                    del item
        finally:
            tar.close()

    def _tar_member(
        self, stream: _ForwardReader, archive: str, member: tarfile.TarInfo
    ) -> InputItem | None:
        source = f"{archive}{MEMBER_SEP}{member.name}"
        if not member.isreg():
            if member.isdir():
                self.skipped(source, "directory member")
            elif member.issym() or member.islnk():
                self.skipped(source, "link member")
            else:
                self.skipped(source, "special member")
            return None

        def read() -> bytearray:
            stream.seek(member.offset_data)  # where the header ended: no move
            return _read_exact(stream, member.size)

        return self._regular_member(source, member.name, member.size, read)

    def _zip_members(self, path: str, f: io.BufferedReader) -> Iterator[InputItem]:
        try:
            archive = zipfile.ZipFile(f)
        except _ARCHIVE_ERRORS as exc:
            yield from self._zip_local_members(path, f, first_line(exc))
            return
        with archive:
            for info in archive.infolist():
                source = f"{path}{MEMBER_SEP}{info.filename}"
                file_type = stat.S_IFMT(info.external_attr >> 16)
                if info.is_dir():
                    self.skipped(source, "directory member")
                    continue
                if file_type and file_type != stat.S_IFREG:
                    link = file_type == stat.S_IFLNK
                    self.skipped(source, "link member" if link else "special member")
                    continue

                def read(info: zipfile.ZipInfo = info) -> bytearray:
                    with archive.open(info) as member:
                        return _read_exact(member, info.file_size)

                try:
                    item = self._regular_member(source, info.filename, info.file_size, read)
                except _ARCHIVE_ERRORS as exc:
                    item = InputItem(source, error=f"cannot read member: {first_line(exc)}")
                if item is not None:
                    yield item
                    del item

    def _zip_local_members(self, path: str, f: Any, reason: str) -> Iterator[InputItem]:
        """A zip without a usable central directory: walk its local headers from the start."""
        offset, recovered = 0, 0
        ended = "the data ends"
        try:
            while True:
                member = _local_header(f, offset)
                if member is None:
                    f.seek(offset)
                    if f.read(4) == b"PK\x01\x02":
                        ended = "the central directory starts"
                    break
                item, offset = self._local_member(path, f, member)
                if item is not None:
                    recovered += item.error is None
                    yield item
                    del item
        except _ARCHIVE_ERRORS as exc:
            ended = f"a member is cut short ({first_line(exc)})"
        yield InputItem(
            path,
            error=f"cannot read archive: {reason}: truncated or damaged zip; {recovered} "
            f"member(s) recovered from the local headers before {ended}",
        )

    def _local_member(
        self, path: str, f: Any, member: _LocalMember
    ) -> tuple[InputItem | None, int]:
        """The item of one local member and the offset of the next header."""
        source = f"{path}{MEMBER_SEP}{member.name}"
        described = not member.flags & 0x08  # sizes in the header, not in a trailing descriptor
        data: bytearray | None = None
        if described:
            compressed, size = member.compressed, member.size
        elif member.method == zipfile.ZIP_DEFLATED:
            data, compressed = _inflate_local(f, member, self.cap)
            size = self.cap + 1 if data is None else len(data)
        else:
            raise zipfile.BadZipFile("a member's size is only in its data descriptor")
        end = member.data_offset + compressed
        if not described:  # the data descriptor: [signature] crc, sizes (8-byte in zip64)
            f.seek(end)
            head = f.read(4)
            if head == _DATA_DESCRIPTOR:
                head = f.read(4)
                end += 4
            if len(head) < 4:
                raise EOFError(f"member {member.name!r}: data descriptor cut short")
            member.crc = struct.unpack("<I", head)[0]
            end += 4 + (16 if member.zip64 else 8)
        if member.name.endswith("/"):
            self.skipped(source, "directory member")
            return None, end

        def read() -> bytearray:
            nonlocal data
            if member.flags & 0x01:
                raise RuntimeError("encrypted member")
            if data is None:
                f.seek(member.data_offset)
                if member.method == zipfile.ZIP_STORED:
                    data = _read_exact(f, size)
                elif member.method == zipfile.ZIP_DEFLATED:
                    data, _ = _inflate_local(f, member, self.cap)
                    assert data is not None
                else:
                    raise NotImplementedError(f"compression method {member.method}")
            if len(data) != size:
                raise zipfile.BadZipFile(f"{len(data)} bytes where the header says {size}")
            if zlib.crc32(data) != member.crc:
                raise zipfile.BadZipFile(f"Bad CRC-32 for file {member.name!r}")
            return data

        size_end = _file_size(f)
        if end > size_end:
            raise EOFError(f"member {member.name!r} ends past the end of the file")
        try:
            return self._regular_member(source, member.name, size, read), end
        except _ARCHIVE_ERRORS as exc:
            return InputItem(source, error=f"cannot read member: {first_line(exc)}"), end


def _collision(key: str) -> str:
    return (
        f"key collision: {key!r} names both a file and an archive member; rename the file "
        "(neither is scored: one row could not tell them apart)"
    )


def _archive_error(exc: BaseException) -> str:
    if isinstance(exc, gzip.BadGzipFile | zlib.error | lzma.LZMAError):
        return f"corrupt compressed data: {first_line(exc)}"
    return first_line(exc)


def _stat_error(path: str, exc: OSError) -> str:
    what = "broken symlink" if os.path.islink(path) else "cannot read"
    return f"{what}: {exc.strerror or first_line(exc)}"
