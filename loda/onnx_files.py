"""Check an ONNX file before anything loads it: a damaged file or external data outside the
model's folder is one line, and no file outside that folder is ever read (torch-free, and
free of the ``onnx`` package, which the runtime does not install).

An ONNX model may keep its tensors in *external data* files named by a ``location`` relative
to the model. A hostile model can name ``../../etc/passwd`` or ``/dev/zero`` there; ONNX Runtime
refuses most such names, but with a long multi-line error, and other loaders differ. So every
command that opens a model (``loda-score``, ``loda-export verify``, ``loda-calib``,
``loda-trt build``, ``loda-parity``, ``loda info``) calls :func:`check_onnx_file` first.

The check walks the protobuf wire format of ``ModelProto`` directly (graphs, subgraphs in
node attributes, functions, sparse tensors): tensor bytes are skipped by their length, so a
multi-GB model costs milliseconds, and nothing but the model file itself is opened (the
external data files are only ``stat``-ed to check their sizes).
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

from .errors import LodaError

__all__ = ["ModelFileError", "check_onnx_file"]


class ModelFileError(LodaError):
    """A model file is missing, damaged or unsafe to load; the message is one line."""


# Field numbers of onnx.proto3 that can lead to a TensorProto.
_MODEL_IR_VERSION, _MODEL_GRAPH, _MODEL_FUNCTIONS = 1, 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL = 8, 13
_MAX_DEPTH = 64


class _Damaged(Exception):
    pass


def _varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Damaged("a number runs past its message")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire type, value start, value end)`` of one message; varints as their span."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Damaged("field number 0")
        if wire == 0:
            _, j = _varint(buf, i, end)
        elif wire == 1:
            j = i + 8
        elif wire == 2:
            n, i = _varint(buf, i, end)
            j = i + n
        elif wire == 5:
            j = i + 4
        else:
            raise _Damaged(f"wire type {wire}")
        if j > end:
            raise _Damaged("a field runs past its message")
        yield field, wire, i, j
        i = j


def _sub(buf: memoryview, start: int, end: int, wanted: dict[int, str]):
    for field, wire, i, j in _fields(buf, start, end):
        if field in wanted and wire == 2:
            yield wanted[field], i, j


def _tensors(buf: memoryview, kind: str, start: int, end: int, depth: int = 0):
    """Every TensorProto (start, end) reachable from a message of ``kind``."""
    if depth > _MAX_DEPTH:
        raise _Damaged("graphs nested too deep")
    if kind == "tensor":
        yield start, end
        return
    wanted = {
        "model": {_MODEL_GRAPH: "graph", _MODEL_FUNCTIONS: "function"},
        "graph": {_GRAPH_NODE: "node", _GRAPH_INITIALIZER: "tensor", _GRAPH_SPARSE: "sparse"},
        "function": {_FUNCTION_NODE: "node"},
        "node": {_NODE_ATTRIBUTE: "attribute"},
        "attribute": {
            _ATTR_T: "tensor",
            _ATTR_G: "graph",
            _ATTR_TENSORS: "tensor",
            _ATTR_GRAPHS: "graph",
            _ATTR_SPARSE: "sparse",
            _ATTR_SPARSES: "sparse",
        },
        "sparse": {_SPARSE_VALUES: "tensor", _SPARSE_INDICES: "tensor"},
    }[kind]
    for sub, i, j in _sub(buf, start, end, wanted):
        yield from _tensors(buf, sub, i, j, depth + 1)


def _text(buf: memoryview, i: int, j: int) -> str:
    try:
        return bytes(buf[i:j]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Damaged("a name is not UTF-8") from None


def _external(buf: memoryview, start: int, end: int) -> tuple[str, dict[str, str]]:
    name, entries = "", {}
    for field, wire, i, j in _fields(buf, start, end):
        if wire != 2:
            continue
        if field == _TENSOR_NAME:
            name = _text(buf, i, j)
        elif field == _TENSOR_EXTERNAL:
            key = value = ""
            for f, w, a, b in _fields(buf, i, j):
                if w == 2 and f == 1:
                    key = _text(buf, a, b)
                elif w == 2 and f == 2:
                    value = _text(buf, a, b)
            entries[key] = value
    return name, entries


def _check_location(model: Path, tensor: str, entries: dict[str, str]) -> None:
    where = f"{model}: tensor {tensor!r} keeps its data in"
    location = entries.get("location", "")
    if not location or "\0" in location:
        raise ModelFileError(f"{where} an external file with no usable name")
    win = PureWindowsPath(location)
    if os.path.isabs(location) or win.is_absolute() or win.drive or location.startswith("\\"):
        raise ModelFileError(
            f"{where} {location!r}, an absolute path: external data must be a file inside "
            "the model's folder; refused"
        )
    parts = location.replace("\\", "/").split("/")
    if ".." in parts or os.path.normpath(location) != location:
        raise ModelFileError(
            f"{where} {location!r}, which is not a plain path inside the model's folder "
            "(.. or an unnormalised path); refused"
        )
    folder = model.resolve().parent
    target = (folder / location).resolve()
    if folder not in target.parents:
        raise ModelFileError(
            f"{where} {location!r}, which leads outside the model's folder (a link?); refused"
        )
    try:
        st = os.stat(target)
    except OSError as exc:
        raise ModelFileError(f"{where} {location!r}, which is missing: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{where} {location!r}, which is not a regular file; refused")
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else st.st_size - offset
    except ValueError:
        raise ModelFileError(f"{where} {location!r} at a bad offset or length") from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise ModelFileError(
            f"{where} {location!r} at bytes {offset}..{offset + length}, past its "
            f"{st.st_size} bytes (truncated)"
        )


def check_onnx_file(path: str | os.PathLike) -> None:
    """Raise :class:`ModelFileError` (one line) unless ``path`` is an intact ONNX file whose
    external data files, if any, are regular files inside its folder and hold the bytes the
    model names. Reads only ``path``; it is opened without blocking (a FIFO is refused)."""
    model = Path(path)
    try:
        fd = os.open(model, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if isinstance(exc, FileNotFoundError | NotADirectoryError):
            raise ModelFileError(f"no ONNX model at {model}") from None
        raise ModelFileError(f"cannot read the model {model}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"the model {model} is not a regular file")
        if st.st_size == 0:
            raise ModelFileError(f"the model {model} is empty: not an ONNX model")
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as buf:
            _check_model(model, buf)
    finally:
        os.close(fd)


def _check_model(model: Path, buf: memoryview) -> None:
    try:
        top = {field for field, _, _, _ in _fields(buf, 0, len(buf))}
        if _MODEL_IR_VERSION not in top or _MODEL_GRAPH not in top:
            raise _Damaged("no ir_version or no graph")
        for start, end in _tensors(buf, "model", 0, len(buf)):
            name, entries = _external(buf, start, end)
            if entries:
                _check_location(model, name, entries)
    except _Damaged as exc:
        raise ModelFileError(
            f"the model {model} is damaged or not an ONNX model ({exc}); re-export it"
        ) from None
