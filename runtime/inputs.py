"""What ``loda-score`` scores: turn INPUT arguments into a lazy stream of items (torch-free).

Every item has a *source*, the key of its result row: a file path as given or found, or
``ARCHIVE::MEMBER`` for a member of an archive. Inputs are enumerated lazily (nothing is listed
up front beyond one directory level at a time), so a million-member tar streams in flat memory.

Input rules (``iter_inputs``)
-----------------------------
Each INPUT, in the order given:

* ``-``: newline-separated paths read from standard input.
* ``@FILE``: newline-separated paths read from FILE. Relative paths are relative to the current
  directory, not to FILE.
  In both lists blank (empty or all-space) lines and lines starting with ``#`` are ignored
  (name a file ``#x.jpg`` as ``./#x.jpg``), a trailing ``\\r`` is dropped, and bytes that are
  not UTF-8 are kept exactly (``os.fsdecode``). Each listed path is handled like an INPUT
  below, except that a path that does not exist becomes an error row instead of stopping the run.
* A file: one item, whatever its suffix (a file you name is meant to be scored; if it is not an
  image its decode fails and it becomes an error row), unless its suffix is an archive suffix.
* An archive (by suffix, case-insensitive: ``.zip .tar .tar.gz .tgz .tar.bz2 .tbz2 .tar.xz
  .txz``): read member by member, never extracted to disk. Tar archives are streamed
  (``tarfile`` mode ``r|*``: memory stays flat whatever the archive size, no member index is
  kept); zip archives are read in central-directory order (``zipfile`` keeps that directory in
  memory). For each member:

  - a regular member with an image suffix: an item ``ARCHIVE::NAME`` holding the member's bytes;
  - a regular member with an archive suffix (a nested archive): an error row
    ``nested archive skipped: ...`` (extract it and pass it as an INPUT);
  - anything else (directories, links, devices, hidden names such as ``__MACOSX/._x.jpg``,
    non-image names such as ``README.txt``): skipped, reported to the ``skipped`` callback;
  - a regular member whose name an earlier member of the archive already had (tar appends
    new versions, zip allows it too): skipped, reported as ``duplicate member name; the first
    one is scored`` (a row is keyed by its source, so a name gets one row);
  - a member larger than ``MAX_MEMBER_BYTES``, or one that cannot be read (zip: bad CRC,
    encrypted, unknown compression): an error row ``cannot read member: ...``.

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

A source that was already produced (the same file named twice, or found again by a walk) is
produced once. A missing INPUT (or an unreadable ``@FILE``) is a usage error: ``check_specs``
raises ``InputError`` before anything is enumerated.

Sharding (``shard_of``): source ``s`` belongs to shard
``int.from_bytes(sha256(s.encode("utf-8", "surrogateescape")).digest()[:8], "big") % N``, which
is the same on every machine and every run, so N processes given the same INPUTs and ``I/N``
(``parse_shard``) score disjoint sets that together cover every item.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import stat
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from loda.errors import LodaError, first_line

__all__ = [
    "ARCHIVE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MAX_MEMBER_BYTES",
    "MEMBER_SEP",
    "InputError",
    "InputItem",
    "check_specs",
    "is_archive_name",
    "is_image_name",
    "iter_inputs",
    "parse_shard",
    "shard_of",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
)
ARCHIVE_SUFFIXES: tuple[str, ...] = (
    ".zip",
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz2",
    ".tar.xz",
    ".txz",
)
MEMBER_SEP = "::"

#: Archive members are read into memory whole; a larger "image" is refused (an error row), far
#: above any image under the default decode pixel limit.
MAX_MEMBER_BYTES: int = 1 << 30

_IMAGE_SUFFIX_TUPLE = tuple(sorted(IMAGE_SUFFIXES))

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
)

Skipped = Callable[[str, str], None]


class InputError(LodaError):
    """An INPUT argument is unusable (missing path, unreadable list); the message is one line."""


@dataclass(frozen=True)
class InputItem:
    """One thing to score, or one error row to write.

    ``source`` is the row key. A file on disk has ``path`` (the worker reads it); an archive
    member carries its ``data``; ``error`` (one line) marks an item that already failed and
    must become an error row.
    """

    source: str
    path: str | None = None
    data: bytes | None = None
    error: str | None = None

    def read_bytes(self) -> bytes:
        """The member's bytes, or the file's bytes (``OSError`` if it cannot be read)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise OSError(f"{self.source}: no file and no data ({self.error or 'no bytes'})")
        with open(self.path, "rb") as f:
            return f.read()


def is_archive_name(name: str) -> bool:
    """True when ``name`` ends with an archive suffix (case-insensitive)."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def is_image_name(name: str) -> bool:
    """True when ``name`` ends with an image suffix (case-insensitive)."""
    return name.lower().endswith(_IMAGE_SUFFIX_TUPLE)


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


def check_specs(specs: Sequence[str]) -> None:
    """Raise ``InputError`` naming the first INPUT that does not exist (or unreadable @list)."""
    for spec in specs:
        if spec == "-":
            continue
        if spec.startswith("@"):
            list_path = spec[1:]
            if not os.path.isfile(list_path):
                raise InputError(
                    f"input list not found: {list_path} (@FILE must name a file of paths, "
                    "one per line)"
                )
            if not os.access(list_path, os.R_OK):
                raise InputError(f"input list not readable: {list_path}")
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
) -> Iterator[InputItem]:
    """Enumerate the items of ``specs`` lazily, following the rules in the module docstring.

    ``read_data=False`` only names the items (archive members come without their bytes): what
    ``loda-score`` uses to count its inputs for the progress bar's total.

    ``stdin`` is read for the spec ``-`` (default ``sys.stdin``; text or binary). ``skipped``
    is called as ``skipped(source, reason)`` for every documented skip. Missing INPUTs raise
    ``InputError`` here, before the first item.
    """
    check_specs(specs)
    return _Enumerator(
        stdin=stdin if stdin is not None else sys.stdin,
        skipped=skipped or _ignore,
        recursive=recursive,
        read_data=read_data,
    ).run(list(specs))


def _ignore(source: str, reason: str) -> None:
    pass


def _basename(member_name: str) -> str:
    return member_name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _list_lines(lines: Iterable[str | bytes]) -> Iterator[str]:
    for raw in lines:
        line = os.fsdecode(raw) if isinstance(raw, bytes) else raw
        line = line.rstrip("\n").rstrip("\r")
        if line.strip() and not line.startswith("#"):
            yield line


class _TarInfo(tarfile.TarInfo):
    """Make a damaged header mid-archive an error: ``tarfile`` would end the archive silently.

    A missing end-of-archive marker at a member boundary is accepted, as GNU tar does.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as exc:
            if tarfile_.offset == 0:
                raise
            raise tarfile.ReadError(
                f"damaged member header at byte {tarfile_.offset}: {exc}"
            ) from None


class _Enumerator:
    def __init__(
        self, *, stdin: IO[Any], skipped: Skipped, recursive: bool, read_data: bool = True
    ) -> None:
        self.read_data = read_data
        self.stdin = stdin
        self.skipped = skipped
        self.recursive = recursive
        self.seen: set[str] = set()
        self.seen_archives: set[str] = set()

    def run(self, specs: list[str]) -> Iterator[InputItem]:
        for spec in specs:
            if spec == "-":
                stream = getattr(self.stdin, "buffer", self.stdin)
                for path in _list_lines(stream):
                    yield from self._listed(path)
            elif spec.startswith("@"):
                try:
                    list_file = open(spec[1:], "rb")  # noqa: SIM115 (closed by the with below)
                except OSError as exc:
                    raise InputError(
                        f"cannot read input list {spec[1:]}: {first_line(exc)}"
                    ) from None
                with list_file:
                    for path in _list_lines(list_file):
                        yield from self._listed(path)
            else:
                yield from self._explicit(spec)

    # -- one named path --------------------------------------------------------------------

    def _emit(self, item: InputItem) -> Iterator[InputItem]:
        if item.source not in self.seen:
            self.seen.add(item.source)
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
        elif is_archive_name(path):
            yield from self._archive(path)
        else:
            yield from self._emit(InputItem(path, path=path))

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
            yield from self._emit(InputItem(path, path=path))
        else:
            self.skipped(path, "not an image suffix")

    # -- archives --------------------------------------------------------------------------

    def _archive(self, path: str) -> Iterator[InputItem]:
        if path in self.seen_archives:
            return
        self.seen_archives.add(path)
        if path.lower().endswith(".zip"):
            members = self._zip_members(path)
        else:
            members = self._tar_members(path)
        for item in members:
            yield from self._emit(item)

    def _member_rule(self, source: str, name: str) -> tuple[str, str | None]:
        """``("read", None)``, ``("error", message)`` or ``("skip", reason)`` for a member."""
        base = _basename(name)
        if source in self.seen:  # rows are keyed by source: one row per name
            return "skip", "duplicate member name; the first one is scored"
        if base.startswith("."):
            return "skip", "hidden"
        if is_archive_name(base):
            return "error", f"nested archive skipped: {name!r} (extract it and pass it as an input)"
        if is_image_name(base):
            return "read", None
        return "skip", "not an image suffix"

    def _tar_members(self, path: str) -> Iterator[InputItem]:
        try:
            tar = tarfile.open(path, mode="r|*", tarinfo=_TarInfo)  # noqa: SIM115 (finally)
        except _ARCHIVE_ERRORS as exc:
            yield InputItem(path, error=f"cannot read archive: {first_line(exc)}")
            return
        try:
            while True:
                try:
                    member = tar.next()
                    if member is None:
                        return
                    tar.members.clear()  # streaming: keep no member index
                    item = self._tar_member(tar, path, member)
                except _ARCHIVE_ERRORS as exc:
                    yield InputItem(path, error=f"cannot read archive: {first_line(exc)}")
                    return
                if item is not None:
                    yield item
        finally:
            tar.close()

    def _tar_member(
        self, tar: tarfile.TarFile, archive: str, member: tarfile.TarInfo
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
        action, detail = self._member_rule(source, member.name)
        if action == "skip":
            self.skipped(source, detail)
            return None
        if action == "error":
            return InputItem(source, error=detail)
        if member.size > MAX_MEMBER_BYTES:
            return InputItem(source, error=_too_large(member.size))
        if not self.read_data:
            return InputItem(source)
        data = tar.extractfile(member).read()  # streaming: the current member only
        return InputItem(source, data=data)

    def _zip_members(self, path: str) -> Iterator[InputItem]:
        try:
            archive = zipfile.ZipFile(path)
        except _ARCHIVE_ERRORS as exc:
            yield InputItem(path, error=f"cannot read archive: {first_line(exc)}")
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
                action, detail = self._member_rule(source, info.filename)
                if action == "skip":
                    self.skipped(source, detail)
                    continue
                if action == "error":
                    yield InputItem(source, error=detail)
                    continue
                if info.file_size > MAX_MEMBER_BYTES:
                    yield InputItem(source, error=_too_large(info.file_size))
                    continue
                if not self.read_data:
                    yield InputItem(source)
                    continue
                try:
                    with archive.open(info) as member:
                        data = member.read(MAX_MEMBER_BYTES + 1)
                except _ARCHIVE_ERRORS as exc:
                    yield InputItem(source, error=f"cannot read member: {first_line(exc)}")
                    continue
                if len(data) > MAX_MEMBER_BYTES:
                    yield InputItem(source, error=_too_large(len(data)))
                    continue
                yield InputItem(source, data=data)


def _stat_error(path: str, exc: OSError) -> str:
    what = "broken symlink" if os.path.islink(path) else "cannot read"
    return f"{what}: {exc.strerror or first_line(exc)}"


def _too_large(size: int) -> str:
    return f"cannot read member: {size} bytes is over the {MAX_MEMBER_BYTES}-byte member limit"
