"""INPUTs named by URI for ``loda-score-ray`` (``s3://``, ``gs://``, ``file://``, ...): torch-free.

The filesystems are pyarrow's (``pyarrow.fs``, what Ray Data reads with): ``FileSystem.from_uri``
resolves a URI (credentials and endpoints from the usual environment: ``AWS_*`` variables,
``AWS_ENDPOINT_URL`` for an S3-compatible server, ...), or one filesystem given by the caller
serves every URI. The rules are ``loda.runtime.inputs``'s, applied to the objects of the store:

* the source of a row is the URI as given, extended the way ``loda-score`` extends a path
  (``s3://b/dir`` -> ``s3://b/dir/sub/x.jpg``; ``s3://b/shard.tar`` -> ``s3://b/shard.tar::x.jpg``);
* a folder (a prefix) is listed recursively, in ``loda-score``'s order (depth first, the entries
  of a folder sorted by name), hidden names and non-image suffixes skipped the same way;
* archives are read member by member by the runtime's own tar/zip reader over a buffered
  pyarrow file (streamed; never downloaded whole, never extracted);
* ``@LIST`` may itself be a URI; its lines may be local paths or URIs; a listed URI that does
  not exist is the error row ``input not found``.

Object stores have no links, FIFOs or devices: those rules of local paths do not arise. A key
collision check (a file named like a member of an archive beside it) is done for local paths
only.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from loda.errors import first_line

from .inputs import (
    DEFAULT_MAX_MEMBER_BYTES,
    InputError,
    InputItem,
    _Enumerator,
    _ignore,
    _list_encoding_error,
    _list_lines,
    check_specs,
    is_archive_name,
    is_image_name,
)

__all__ = ["UriFiles", "check_inputs", "is_uri", "iter_any"]

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BUFFER = 1 << 20  # one read of an object store is one request: read ahead 1 MiB
_PATH_ONLY = {"file", "local", "hdfs", "viewfs"}  # schemes whose host is not part of the path


def is_uri(spec: str) -> bool:
    """``scheme://...`` (a Windows drive ``C:\\x`` or a relative path is not a URI)."""
    return bool(_URI.match(spec))


class UriFiles:
    """URI -> ``(pyarrow filesystem, path)``; picklable (tasks get it), caching per store.

    ``filesystem``: one filesystem for every URI (e.g. an ``S3FileSystem`` with its own endpoint
    and credentials); None: ``FileSystem.from_uri`` once per scheme and host.
    """

    def __init__(self, filesystem: Any = None) -> None:
        self.filesystem = filesystem
        self._cache: dict[tuple[str, str], Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"filesystem": self.filesystem, "_cache": {}}

    def resolve(self, uri: str) -> tuple[Any, str]:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        path = parts.path if scheme in _PATH_ONLY else parts.netloc + parts.path
        if self.filesystem is not None:
            return self.filesystem, path.rstrip("/") or "/"
        key = (scheme, parts.netloc)
        if key not in self._cache:
            from pyarrow.fs import FileSystem

            self._cache[key] = FileSystem.from_uri(uri)[0]
        return self._cache[key], path.rstrip("/") or "/"

    def info(self, uri: str) -> Any:
        fs, path = self.resolve(uri)
        return fs.get_file_info(path)

    def open(self, uri: str, name: str | None = None) -> io.BufferedReader:
        """A seekable, buffered binary file of the object (``OSError`` if it cannot be read),
        named ``name`` (default: the URI) in messages, as ``inputs.open_regular`` names files."""
        fs, path = self.resolve(uri)
        return io.BufferedReader(_ObjectFile(fs.open_input_file(path), name or uri), _BUFFER)


class _ObjectFile(io.RawIOBase):
    """A pyarrow random-access file as a raw OS-like file: it has a ``name`` and, like an OS
    file, seeks past its end (then reads nothing), which decoders probing a short file do."""

    def __init__(self, f: Any, name: str) -> None:
        super().__init__()
        self._f = f
        self._size = f.size()
        self._pos = 0
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        if n:
            data = self._f.read_at(n, self._pos)
            n = len(data)
            b[:n] = data
            self._pos += n
        return n

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + pos < 0:
            raise OSError(f"{self.name}: negative seek position {base + pos}")
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def check_inputs(specs: Sequence[str], files: UriFiles) -> None:
    """``check_specs`` for a mix of local paths and URIs: ``InputError`` for a missing INPUT."""
    from pyarrow.fs import FileType

    local = [s for s in specs if not is_uri(s.removeprefix("@"))]
    check_specs(local)
    for spec in specs:
        uri = spec.removeprefix("@")
        if not is_uri(uri):
            continue
        try:
            kind = files.info(uri).type
        except (OSError, ValueError) as exc:
            raise InputError(f"input not readable: {uri}: {first_line(exc)}") from None
        if spec.startswith("@") and kind != FileType.File:
            raise InputError(f"input list not found: {uri} (@FILE must name a file of paths)")
        if kind == FileType.NotFound:
            raise InputError(f"input not found: {uri} (pass an existing object, prefix or archive)")


def iter_any(
    specs: Sequence[str],
    files: UriFiles,
    *,
    skipped: Any = None,
    read_data: bool = True,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Iterator[InputItem]:
    """``iter_inputs`` over local paths and URIs alike (``loda.runtime.inputs``'s rules)."""
    check_inputs(specs, files)
    return _UriEnumerator(
        files, skipped=skipped or _ignore, read_data=read_data, max_member_bytes=max_member_bytes
    ).run(list(specs))


class _UriEnumerator(_Enumerator):
    """The runtime's enumerator, with the filesystem calls of URIs done through pyarrow."""

    def __init__(self, files: UriFiles, **kwargs: Any) -> None:
        super().__init__(stdin=io.StringIO(), recursive=True, **kwargs)
        self.files = files

    def run(self, specs: list[str]) -> Iterator[InputItem]:
        for spec in specs:
            if spec.startswith("@") and is_uri(spec[1:]):
                yield from self._uri_list(spec[1:])
            else:
                yield from super().run([spec])

    def _uri_list(self, uri: str) -> Iterator[InputItem]:
        try:
            f = self.files.open(uri)
            why = _list_encoding_error(f.peek(4096)[:4096])
        except OSError as exc:
            raise InputError(f"cannot read input list {uri}: {first_line(exc)}") from None
        with f:
            if why:
                raise InputError(f"input list {uri} is not UTF-8: {why}; save it as UTF-8")
            for path in _list_lines(f, uri):
                yield from self._listed(path)

    def _listed(self, path: str) -> Iterator[InputItem]:
        if not is_uri(path):
            yield from super()._listed(path)
            return
        from pyarrow.fs import FileType

        try:
            missing = self.files.info(path).type == FileType.NotFound
        except (OSError, ValueError):
            missing = False  # _explicit turns the error into the row
        if missing:
            yield from self._emit(InputItem(path, error="input not found"))
        else:
            yield from self._explicit(path)

    def _explicit(self, path: str) -> Iterator[InputItem]:
        if not is_uri(path):
            yield from super()._explicit(path)
            return
        from pyarrow.fs import FileType

        try:
            kind = self.files.info(path).type
        except (OSError, ValueError) as exc:
            yield from self._emit(InputItem(path, error=f"cannot read: {first_line(exc)}"))
            return
        if kind == FileType.Directory:
            yield from self._walk(path)
        elif kind == FileType.NotFound:
            yield from self._emit(InputItem(path, error="cannot read: No such file or directory"))
        elif is_archive_name(path):
            yield from self._archive(path)
        else:
            yield from self._emit(InputItem(path, path=path))

    def _walk(self, top: str) -> Iterator[InputItem]:
        if not is_uri(top):
            yield from super()._walk(top)
            return
        from pyarrow.fs import FileSelector, FileType

        fs, base = self.files.resolve(top)
        try:
            infos = fs.get_file_info(FileSelector(base, recursive=True))
        except (OSError, ValueError) as exc:
            error = f"cannot read directory: {first_line(exc)}"
            yield from self._emit(InputItem(top, error=error))
            return
        prefix = top.rstrip("/") + "/"
        cut = len(base.rstrip("/")) + 1
        files = [info.path[cut:] for info in infos if info.type == FileType.File]
        # loda-score's walk: depth first, each folder's entries sorted by name
        files.sort(key=lambda rel: rel.split("/"))
        hidden_dirs: set[str] = set()
        for rel in files:
            yield from self._walk_object(prefix, rel, hidden_dirs)

    def _walk_object(self, prefix: str, rel: str, hidden_dirs: set[str]) -> Iterator[InputItem]:
        parts = rel.split("/")
        for i, part in enumerate(parts[:-1]):
            if part.startswith("."):  # a hidden folder: skipped with everything below it
                folder = prefix + "/".join(parts[: i + 1])
                if folder not in hidden_dirs:
                    hidden_dirs.add(folder)
                    self.skipped(folder, "hidden")
                return
        uri, name = prefix + rel, parts[-1]
        if name.startswith("."):
            self.skipped(uri, "hidden")
        elif is_archive_name(name):
            yield from self._archive(uri)
        elif is_image_name(name):
            yield from self._emit(InputItem(uri, path=uri))
        else:
            self.skipped(uri, "not an image suffix")

    def _archive(self, path: str) -> Iterator[InputItem]:
        if not is_uri(path):
            yield from super()._archive(path)
            return
        if path in self.seen_archives:
            return
        self.seen_archives.add(path)
        try:
            f = self.files.open(path)
        except (OSError, ValueError) as exc:
            yield from self._emit(InputItem(path, error=f"cannot read: {first_line(exc)}"))
            return
        yield from self._archive_items(path, f)


def local_path(spec: str) -> str:
    """A local INPUT made absolute (tasks run in other folders); a URI as it is."""
    return spec if is_uri(spec) else os.path.abspath(spec)
