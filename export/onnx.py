"""ONNX export of a LoDa checkpoint, with the input normalisation inside the graph.

The exported graph takes what :mod:`loda.preprocess` produces and every runtime already has::

    crops  uint8   [batch, 224, 224, 3]   RGB, NHWC (``preprocess_image`` output)
    score  float32 [batch]                 one quality score per crop (``LoDa.score``)

:class:`ExportWrapper` casts to float, divides by 255, subtracts the checkpoint's mean and
divides by its std (the operation order of :func:`loda.preprocess.normalize`, so the torch side
and the ONNX side see bit-identical inputs), permutes to NCHW and calls ``LoDa.score``.

:func:`export_onnx` uses the dynamo exporter (``torch.onnx.export(dynamo=True)``) with a
symbolic batch dimension (traced at batch 2: ``torch.export`` specialises size-1 dims), opset
>= 17 so every LayerNorm stays one ``LayerNormalization`` node (asserted), one self-contained
file (no external data; models of 2 GB or more are refused), ``onnx.checker`` and
``metadata_props``:

- ``loda``: the checkpoint's metadata record (JSON, :class:`loda.metadata.CheckpointMeta`),
- ``loda.source_sha256``: SHA-256 of the checkpoint file,
- ``loda.tool_versions``: JSON of the torch, onnx, onnxscript, onnxruntime, timm, loda versions,
- ``loda.precision``: ``"fp32"`` (``"fp16"`` after :mod:`loda.calib.fp16`),
- ``loda.io``: JSON description of the input and output tensors.

timm's fused attention needs nothing special: the exporter lowers
``scaled_dot_product_attention`` to MatMul/Mul/Softmax/MatMul (no ``Attention`` op).

Verification (:func:`verify_onnx`; ``loda-export verify CKPT MODEL.onnx`` for an existing file)
scores REAL crops, never random tensors: images from a folder or archive (``.zip``, ``.tar``,
``.tar.gz``...) the user names, else a built-in demo set made in a temporary directory. Every
crop goes through :class:`ExportWrapper` in torch and through ONNX Runtime (CPU provider,
default graph optimisations); the check passes when max |score difference| <=
:data:`PARITY_ATOL`. Batch sizes 1 and 7 are also run in ONNX Runtime, so a batch dimension
that was silently fixed at export fails here. The output file is written only when every
check has passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from loda.atomic import check_not_an_input, write_bytes_atomic
from loda.errors import LodaError
from loda.preprocess import PreprocessConfig
from loda.runtime.inputs import (  # one list of suffixes for every image reader
    ARCHIVE_SUFFIXES,
    IMAGE_SUFFIXES,
    is_archive_name,
    is_image_name,
)

if TYPE_CHECKING:  # onnx and onnxruntime are imported where they are used
    import onnx

    from loda.calib.fp16 import Fp16Report
    from loda.model import LoDa

__all__ = [
    "BATCH_DIM",
    "DEFAULT_OPSET",
    "DEFAULT_VERIFY_IMAGES",
    "INPUT_NAME",
    "MAX_ONNX_BYTES",
    "OUTPUT_NAME",
    "PARITY_ATOL",
    "ExportError",
    "ExportReport",
    "ExportWrapper",
    "ParityError",
    "ParityReport",
    "VerificationImages",
    "check_exported_graph",
    "export_onnx",
    "load_verification_images",
    "ort_scores",
    "ort_session",
    "read_onnx_metadata",
    "set_metadata",
    "sha256_file",
    "tool_versions",
    "torch_scores",
    "verify_onnx",
    "verify_onnx_against_checkpoint",
]

INPUT_NAME = "crops"
OUTPUT_NAME = "score"
BATCH_DIM = "batch"
DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization is an ONNX op from opset 17 on
MAX_OPSET = 23  # the highest opset torch 2.14's exporter targets
TRACE_BATCH = 2  # torch.export specialises size-1 dims: trace with batch >= 2
PARITY_ATOL = 1e-4
DEFAULT_VERIFY_IMAGES = 16
EXTRA_BATCH_SIZES = (1, 7)  # run in ONNX Runtime besides the per-image batch of crops
MAX_ONNX_BYTES = 2**31  # protobuf's hard limit for one serialised message
DEMO_REFERENCES = 8
_ORT_HINT = "pip install 'loda[cpu]' (onnxruntime) or 'loda[gpu]' (onnxruntime-gpu)"
_TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "timm", "loda")

Log = Callable[[str], None]


class ExportError(LodaError):
    """The checkpoint cannot be exported, or the exported graph is not what it must be."""


class ParityError(ExportError):
    """The exported model's scores differ from PyTorch's beyond the tolerance."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The exported module
# --------------------------------------------------------------------------------------------


class ExportWrapper(nn.Module):
    """uint8 NHWC RGB crops ``[batch, H, W, 3]`` -> float32 scores ``[batch]``.

    Cast to float32, /255, -mean, /std (mean/std from the checkpoint's
    :class:`~loda.preprocess.PreprocessConfig`, stored as constants), NCHW, ``model.score``.
    """

    def __init__(self, model: LoDa, preprocess: PreprocessConfig) -> None:
        super().__init__()
        self.model = model
        # float32 constants, as numpy's normalize casts them; NHWC broadcast shape.
        mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 1, 1, 3)
        std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 1, 1, 3)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        # The order of loda.preprocess.normalize: float32(x) / 255, - mean, / std. The ops are
        # elementwise, so the result is bit-identical to the numpy path. The cast comes before
        # the layout change: TensorRT's Shuffle (transpose) layer does not take uint8 inputs.
        x = crops.to(torch.float32)
        x = x / 255.0
        x = (x - self.mean) / self.std
        x = x.permute(0, 3, 1, 2)
        # Contiguous NCHW, as loda.inference feeds the model: a permuted (channels-last) tensor
        # would make torch pick other conv kernels. A no-op in the exported graph.
        return self.model.score(x.contiguous())


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tool_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of the export toolchain (packages that are absent are left out)."""
    out = {}
    for name in (*_TOOLS, *extra):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"ONNX Runtime is needed to verify the export; {_ORT_HINT}") from None
    return onnxruntime


def ort_session(model: str | os.PathLike | bytes) -> Any:
    """An ONNX Runtime CPU session with default options (the verification reference)."""
    ort = _import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no fp16 "cast inserted" chatter
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ort_scores(session: Any, crops: np.ndarray) -> np.ndarray:
    """Scores (float32 [n]) of uint8 NHWC crops, in one run."""
    name = session.get_inputs()[0].name
    (out,) = session.run(None, {name: np.ascontiguousarray(crops)})
    return np.asarray(out)


def torch_scores(wrapper: Any, crops: np.ndarray) -> np.ndarray:
    """Scores (float32 [n]) of uint8 NHWC crops through ``wrapper`` in torch."""
    with torch.inference_mode():
        return wrapper(torch.from_numpy(np.ascontiguousarray(crops))).numpy()


def _elem_type_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "undefined"


def _dims(value_info: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_param"):
            dims.append(d.dim_param)
        elif d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            dims.append("?")
    return dims


#: metadata_props entries that hold a JSON object (the others are plain strings).
JSON_PROPS = ("loda", "loda.io", "loda.fp16", "loda.int8", "loda.tool_versions")


def read_onnx_metadata(model: onnx.ModelProto, *, source: object = None) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict.

    With ``source`` (a path or a name for messages) the :data:`JSON_PROPS` present are checked
    to be JSON objects: a damaged record is a one-line :class:`ExportError` naming the key.
    """
    meta = {p.key: p.value for p in model.metadata_props}
    for key in JSON_PROPS if source is not None else ():
        if key not in meta:
            continue
        try:
            record = json.loads(meta[key])
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise ExportError(f"{source}: metadata_props '{key}' is not a JSON object (damaged?)")
    return meta


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set (or replace) ``metadata_props`` entries."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for graph_nodes in [model.graph.node, *(f.node for f in model.functions)]:
        for node in graph_nodes:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# --------------------------------------------------------------------------------------------
# Graph checks
# --------------------------------------------------------------------------------------------


def check_exported_graph(
    model: onnx.ModelProto,
    *,
    crop_size: int,
    expected_layernorms: int | None = None,
    input_elem_type: int | None = None,
    output_elem_type: int | None = None,
) -> dict[str, int]:
    """Assert the LoDa ONNX interface and return the op counts.

    One input ``crops`` uint8 ``[batch, crop, crop, 3]`` whose dim 0 is symbolic
    (``dim_param``), one output ``score`` float32 ``[batch]`` with the same symbol, and (when
    ``expected_layernorms`` is given) that many ``LayerNormalization`` nodes: a LayerNorm that
    was decomposed into ReduceMean/Sub/Pow/Sqrt/Div would lose precision in FP16.
    """
    import onnx

    in_type = onnx.TensorProto.UINT8 if input_elem_type is None else input_elem_type
    out_type = onnx.TensorProto.FLOAT if output_elem_type is None else output_elem_type
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    problems = []
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ExportError(
            f"exported graph has inputs {[i.name for i in inputs]} and outputs "
            f"{[o.name for o in graph.output]}; expected ['{INPUT_NAME}'] and ['{OUTPUT_NAME}']"
        )
    (inp,), (out,) = inputs, graph.output
    in_dims, out_dims = _dims(inp), _dims(out)
    if inp.type.tensor_type.elem_type != in_type:
        problems.append(f"input type {_elem_type_name(inp.type.tensor_type.elem_type)}")
    if out.type.tensor_type.elem_type != out_type:
        problems.append(f"output type {_elem_type_name(out.type.tensor_type.elem_type)}")
    batch_dim = inp.type.tensor_type.shape.dim[0] if in_dims else None
    if batch_dim is None or not batch_dim.HasField("dim_param"):
        problems.append(f"input batch dimension is not symbolic (input shape {in_dims})")
    if in_dims[1:] != [crop_size, crop_size, 3]:
        problems.append(f"input shape {in_dims}, expected [batch, {crop_size}, {crop_size}, 3]")
    if len(out_dims) != 1 or not isinstance(out_dims[0], str) or out_dims[:1] != in_dims[:1]:
        problems.append(f"output shape {out_dims}, expected [{in_dims[0] if in_dims else '?'}]")
    counts = _op_counts(model)
    n_ln = counts.get("LayerNormalization", 0)
    if expected_layernorms is not None and n_ln != expected_layernorms:
        problems.append(
            f"{n_ln} LayerNormalization nodes for {expected_layernorms} LayerNorm modules "
            "(decomposed LayerNorm; export with opset >= 17)"
        )
    if problems:
        raise ExportError("exported graph is wrong: " + "; ".join(problems))
    return counts


def _count_layernorms(module: Any) -> int:
    import torch.nn as nn

    return sum(isinstance(m, nn.LayerNorm) for m in module.modules())


# --------------------------------------------------------------------------------------------
# Verification images (real photographs, never random tensors)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationImages:
    """Where the verification crops came from and the crops, one uint8 NHWC stack per image."""

    source: str
    names: tuple[str, ...]
    crops: tuple[np.ndarray, ...]

    @property
    def n_crops(self) -> int:
        return sum(len(c) for c in self.crops)


def _spread(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them if fewer)."""
    if n >= n_total:
        return list(range(n_total))
    return sorted({round(float(i)) for i in np.linspace(0, n_total - 1, n)})


def _is_archive(path: Path) -> bool:
    return path.is_file() and is_archive_name(path.name)


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and is_image_name(base)


def _read_archive(path: Path, n_images: int) -> list[tuple[str, bytes]]:
    """``n_images`` image members of a zip or tar archive (spread over the sorted names)."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                names = sorted(
                    i.filename
                    for i in zf.infolist()
                    if not i.is_dir() and _is_image_name(i.filename)
                )
                chosen = [names[i] for i in _spread(len(names), n_images)]
                return [(name, zf.read(name)) for name in chosen]
        with tarfile.open(path) as tf:
            members = sorted(
                (m for m in tf.getmembers() if m.isfile() and _is_image_name(m.name)),
                key=lambda m: m.name,
            )
            out = []
            for i in _spread(len(members), n_images):
                f = tf.extractfile(members[i])
                if f is not None:
                    out.append((members[i].name, f.read()))
            return out
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise ExportError(f"cannot read image archive {path}: {exc}") from None


def _folder_images(root: Path) -> list[Path]:
    from loda.demo_data import CSV_NAME, is_demo_dir

    if is_demo_dir(root) and (root / CSV_NAME).is_file():
        from loda.datasets import read_dataset

        return [s.path for s in read_dataset("csv", root / CSV_NAME).samples]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def load_verification_images(
    images: str | os.PathLike | None,
    n_images: int,
    cfg: PreprocessConfig,
    *,
    log: Log | None = None,
) -> VerificationImages:
    """Crops of ``n_images`` real images, spread evenly over the sorted candidates.

    ``images``: a folder (searched recursively; a demo set folder is read through its CSV), an
    archive (zip or tar), or ``None`` for the built-in demo set (``DEMO_REFERENCES`` reference
    photographs with their distortions, made in a temporary directory), or, when the demo
    photographs are not installed, generated images (:mod:`loda.generated`; the source says so).
    """
    from loda.preprocess import preprocess_image

    if n_images < 1:
        raise ExportError(f"verification needs at least 1 image, got {n_images}")
    log = log or (lambda _m: None)
    if images is None:
        from loda.demo_data import list_references, make_demo_set

        with tempfile.TemporaryDirectory(prefix="loda-verify-") as tmp:
            refs = list_references()[:DEMO_REFERENCES]
            if not refs:
                from loda.generated import DESCRIPTION, generate_images

                log(
                    "no --images and no demo reference photos (pip install 'loda[demo]'): "
                    f"verifying on {n_images} generated images"
                )
                paths = generate_images(Path(tmp), n_images)
                crops = tuple(preprocess_image(p, cfg) for p in paths)
                names = tuple(p.name for p in paths)
                return VerificationImages(f"generated: {DESCRIPTION}", names, crops)
            log(f"making the built-in demo set ({len(refs)} references) for verification")
            csv_path = make_demo_set(Path(tmp) / "demo", references=refs)
            paths = _folder_images(csv_path.parent)
            chosen = [paths[i] for i in _spread(len(paths), n_images)]
            crops = tuple(preprocess_image(p, cfg) for p in chosen)
            names = tuple(p.relative_to(csv_path.parent).as_posix() for p in chosen)
            return VerificationImages("built-in demo set", names, crops)
    root = Path(images)
    if _is_archive(root):
        members = _read_archive(root, n_images)
        if not members:
            raise ExportError(f"no images in archive {root} ({', '.join(sorted(IMAGE_SUFFIXES))})")
        crops = tuple(preprocess_image(data, cfg) for _, data in members)
        return VerificationImages(str(root), tuple(name for name, _ in members), crops)
    if root.is_dir():
        paths = _folder_images(root)
        if not paths:
            raise ExportError(
                f"no images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        chosen = [paths[i] for i in _spread(len(paths), n_images)]
        names = tuple(
            p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p) for p in chosen
        )
        return VerificationImages(str(root), names, tuple(preprocess_image(p, cfg) for p in chosen))
    if root.is_file() and root.suffix.lower() in IMAGE_SUFFIXES:
        return VerificationImages(str(root), (root.name,), (preprocess_image(root, cfg),))
    raise ExportError(
        f"--images {root}: not a folder, an image or an archive ({', '.join(ARCHIVE_SUFFIXES)})"
    )


# --------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityReport:
    """Per-crop |score difference| between PyTorch and ONNX Runtime on real crops."""

    source: str
    n_images: int
    n_crops: int
    max_abs: float
    mean_abs: float
    p99_abs: float
    worst_image: str
    worst_image_max: float
    batch_max_abs: dict[int, float]  # extra ORT batch sizes -> max |d| vs torch
    atol: float = PARITY_ATOL
    seconds: float = 0.0

    @property
    def overall_max(self) -> float:
        return max([self.max_abs, *self.batch_max_abs.values()])

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.overall_max) and self.overall_max <= self.atol)

    def summary(self) -> str:
        return f"parity max|d| {self.overall_max:.2e} on {self.n_crops} crops"

    def table(self) -> str:
        batches = ", ".join(f"batch {b}: {v:.2e}" for b, v in self.batch_max_abs.items())
        rows = [
            ("images", f"{self.n_images} ({self.source})"),
            ("crops", str(self.n_crops)),
            ("max |d|", f"{self.max_abs:.3e}  (tolerance {self.atol:.0e})"),
            ("mean |d|", f"{self.mean_abs:.3e}"),
            ("p99 |d|", f"{self.p99_abs:.3e}"),
            ("worst image", f"{self.worst_image}  (max |d| {self.worst_image_max:.3e})"),
            ("other batch sizes", batches or "-"),
            ("result", "PASS" if self.passed else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        title = "PyTorch vs ONNX Runtime (CPU), per-crop score"
        return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in rows)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n_images": self.n_images,
            "n_crops": self.n_crops,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "p99_abs": self.p99_abs,
            "worst_image": self.worst_image,
            "batch_max_abs": {str(k): v for k, v in self.batch_max_abs.items()},
            "atol": self.atol,
            "passed": self.passed,
        }


def verify_onnx(
    wrapper: Any,
    onnx_model: str | os.PathLike | bytes,
    images: VerificationImages,
    *,
    atol: float = PARITY_ATOL,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Score ``images`` with ``wrapper`` in torch and with ``onnx_model`` in ONNX Runtime (CPU).

    One run per image (its crops form the batch), then batch sizes 1 and 7 on the first
    image's crops. Raises :class:`ParityError` (with the report) when max |d| > ``atol`` or
    any score is not finite, unless ``raise_on_failure`` is false.
    """
    start = time.perf_counter()
    session = ort_session(onnx_model)
    diffs, per_image = [], []
    for name, crops in zip(images.names, images.crops, strict=True):
        d = np.abs(
            ort_scores(session, crops).astype(np.float64)
            - torch_scores(wrapper, crops).astype(np.float64)
        )
        d[~np.isfinite(d)] = np.inf
        diffs.append(d)
        per_image.append((float(d.max()), name))
    all_d = np.concatenate(diffs)
    first = images.crops[0]
    reference = torch_scores(wrapper, first).astype(np.float64)
    batch_max = {}
    for b in EXTRA_BATCH_SIZES:
        chunks = [ort_scores(session, first[i : i + b]) for i in range(0, len(first), b)]
        got = np.concatenate(chunks).astype(np.float64)
        d = np.abs(got - reference)
        batch_max[b] = float(np.inf if not np.all(np.isfinite(d)) else d.max())
    worst_max, worst_name = max(per_image)
    report = ParityReport(
        source=images.source,
        n_images=len(images.names),
        n_crops=int(all_d.size),
        max_abs=float(all_d.max()),
        mean_abs=float(all_d.mean()),
        p99_abs=float(np.percentile(all_d, 99)),
        worst_image=worst_name,
        worst_image_max=worst_max,
        batch_max_abs=batch_max,
        atol=atol,
        seconds=time.perf_counter() - start,
    )
    if raise_on_failure and not report.passed:
        raise ParityError(
            f"ONNX Runtime scores differ from PyTorch: max |d| {report.overall_max:.3e} > "
            f"{atol:.0e} on {report.n_crops} crops (worst image {report.worst_image})",
            report,
        )
    return report


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What :func:`export_onnx` made."""

    path: Path
    precision: str
    opset: int
    size_bytes: int
    export_seconds: float
    total_seconds: float
    op_counts: dict[str, int]
    metadata: dict[str, str]
    parity: ParityReport | None = None
    fp16: Fp16Report | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def _check_checkpoint(path: Path) -> None:
    from loda.errors import CheckpointError
    from loda.metadata import read_safetensors_metadata

    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a LoDa checkpoint (.safetensors)")
    read_safetensors_metadata(path)  # one-line CheckpointError for non-LoDa files


def _export_proto(wrapper: Any, crop_size: int, opset: int) -> onnx.ModelProto:
    example = torch.randint(0, 256, (TRACE_BATCH, crop_size, crop_size, 3), dtype=torch.uint8)
    # The exporter prints progress lines to stdout; stdout is for data, so send them to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        program = torch.onnx.export(
            wrapper,
            (example,),
            f=None,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={INPUT_NAME: {0: BATCH_DIM}},
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def _save_bytes(data: bytes, path: Path) -> int:
    """Write atomically (a failed run never leaves a half-written model at ``path``)."""
    return write_bytes_atomic(path, data)


def _io_record(crop_size: int, precision: str) -> str:
    return json.dumps(
        {
            "input": {
                "name": INPUT_NAME,
                "dtype": "uint8",
                "shape": [BATCH_DIM, crop_size, crop_size, 3],
                "layout": "NHWC RGB crops from loda.preprocess (normalisation is in the graph)",
            },
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [BATCH_DIM]},
            "precision": precision,
        },
        sort_keys=True,
    )


def export_onnx(
    checkpoint_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    verify: bool = True,
    images: str | os.PathLike | None = None,
    verify_images: int | None = None,
    atol: float = PARITY_ATOL,
    log: Log | None = _log_stderr,
) -> ExportReport:
    """Export a LoDa checkpoint to one self-contained ONNX file.

    ``precision="fp16"`` exports FP32 first (verified against PyTorch when ``verify``), then
    converts with :func:`loda.calib.fp16.convert_onnx_fp16` and checks FP16 against FP32 in ONNX
    Runtime. ``verify_images`` defaults to :data:`DEFAULT_VERIFY_IMAGES` (FP32) or
    :data:`loda.calib.fp16.DEFAULT_FP16_VERIFY_IMAGES` (FP16). The output file is written only
    when every check passes; failures raise :class:`ExportError` / :class:`ParityError` /
    :class:`loda.calib.fp16.Fp16Error`.
    """
    import onnx

    log = log or (lambda _m: None)
    start = time.perf_counter()
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"precision must be fp32 or fp16, got {precision!r}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} (opset >= 17 keeps "
            "LayerNorm one LayerNormalization node)"
        )
    from loda.calib.fp16 import DEFAULT_FP16_VERIFY_IMAGES, MIN_VERIFY_IMAGES

    n = verify_images
    if n is None:
        n = DEFAULT_FP16_VERIFY_IMAGES if precision == "fp16" else DEFAULT_VERIFY_IMAGES
    if verify and precision == "fp16" and n < MIN_VERIFY_IMAGES:
        raise ExportError(
            f"FP16 verification needs at least {MIN_VERIFY_IMAGES} images, got {n} "
            "(--verify-images)"
        )
    checkpoint_path, output_path = Path(checkpoint_path), Path(output_path)
    _check_checkpoint(checkpoint_path)
    if output_path.is_dir():
        raise ExportError(f"output {output_path} is a directory; name a .onnx file")
    check_not_an_input(output_path, [checkpoint_path], "the checkpoint")
    output_path.parent.mkdir(parents=True, exist_ok=True)

    from loda.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint_path)
    wrapper = ExportWrapper(model, meta.preprocess).eval()
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if n_bytes >= MAX_ONNX_BYTES:
        raise ExportError(
            f"the model holds {n_bytes / 2**30:.2f} GiB of tensors; one ONNX file must stay under "
            "2 GiB (protobuf limit) and this exporter writes no external data files"
        )
    crop_size = meta.preprocess.crop_size

    t0 = time.perf_counter()
    log(f"exporting {checkpoint_path} ({meta.model.name}) with torch.onnx.export(dynamo=True)")
    proto = _export_proto(wrapper, crop_size, opset)
    export_seconds = time.perf_counter() - t0
    counts = check_exported_graph(
        proto, crop_size=crop_size, expected_layernorms=_count_layernorms(model)
    )
    proto.doc_string = (
        f"LoDa {meta.model.name}: uint8 NHWC RGB crops -> per-crop quality score "
        "(higher is better); image score = mean over its crops"
    )
    metadata = {
        "loda": meta.to_json(),
        "loda.source_sha256": sha256_file(checkpoint_path),
        "loda.tool_versions": json.dumps(tool_versions(), sort_keys=True),
        "loda.precision": "fp32",
        "loda.io": _io_record(crop_size, "fp32"),
    }
    set_metadata(proto, metadata)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported graph fails onnx.checker: {exc}") from None
    fp32_bytes = proto.SerializeToString()
    if len(fp32_bytes) >= MAX_ONNX_BYTES:
        raise ExportError(f"exported graph is {len(fp32_bytes) / 2**30:.2f} GiB, over 2 GiB")

    parity = None
    vimages = None
    if verify:
        vimages = load_verification_images(images, n, meta.preprocess, log=log)
        log(
            f"verifying on {vimages.n_crops} crops of {len(vimages.names)} images "
            f"({vimages.source})"
        )
        parity = verify_onnx(wrapper, fp32_bytes, vimages, atol=atol)

    report = ExportReport(
        path=output_path,
        precision=precision,
        opset=opset,
        size_bytes=0,
        export_seconds=export_seconds,
        total_seconds=0.0,
        op_counts=counts,
        metadata=metadata,
        parity=parity,
    )
    if precision == "fp16":
        from loda.calib.fp16 import convert_onnx_fp16

        fp16_model, fp16_report = convert_onnx_fp16(
            onnx.load_from_string(fp32_bytes), images=vimages, fp32_model=fp32_bytes, log=log
        )
        report.fp16 = fp16_report
        report.metadata = read_onnx_metadata(fp16_model)
        report.size_bytes = _save_bytes(fp16_model.SerializeToString(), output_path)
    else:
        report.size_bytes = _save_bytes(fp32_bytes, output_path)
    report.total_seconds = time.perf_counter() - start
    return report


def verify_onnx_against_checkpoint(
    checkpoint_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    verify_images: int = DEFAULT_VERIFY_IMAGES,
    atol: float = PARITY_ATOL,
    log: Log | None = _log_stderr,
) -> ParityReport:
    """Check an existing FP32 ONNX file against the checkpoint it was exported from."""
    import onnx

    checkpoint_path, onnx_path = Path(checkpoint_path), Path(onnx_path)
    _check_checkpoint(checkpoint_path)
    if not onnx_path.is_file():
        raise ExportError(f"no ONNX file at {onnx_path}")
    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ExportError(f"{onnx_path} is not an ONNX model: {type(exc).__name__}") from None
    onnx_meta = read_onnx_metadata(proto, source=onnx_path)
    if "loda" not in onnx_meta:
        raise ExportError(
            f"{onnx_path} has no LoDa metadata (metadata_props 'loda'): not made by loda-export"
        )
    precision = onnx_meta.get("loda.precision", "fp32")
    if precision != "fp32":
        raise ExportError(
            f"{onnx_path} is an {precision} graph; loda-export verify checks FP32 exports to "
            f"1e-4 (compare {precision} graphs with PyTorch using loda-parity)"
        )
    from loda.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint_path)
    check_exported_graph(proto, crop_size=meta.preprocess.crop_size)
    wrapper = ExportWrapper(model, meta.preprocess).eval()
    vimages = load_verification_images(images, verify_images, meta.preprocess, log=log)
    return verify_onnx(wrapper, str(onnx_path), vimages, atol=atol)
