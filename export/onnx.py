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
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from loda.artifacts import (
    BATCH_DIM,
    INPUT_NAME,
    OUTPUT_NAME,
    ArtifactError,
    check_exported_graph,
    ort_scores,
    ort_session,
    read_onnx_metadata,
    set_metadata,
    sha256_file,
    tool_versions,
)
from loda.atomic import check_not_an_input, write_bytes_atomic
from loda.compare import (
    Bound,
    Comparison,
    ParityError,
    Tolerance,
    compare_scores,
    judge,
)
from loda.data.images import (
    VerificationImages,
    load_verification_images,
)
from loda.preprocess import PreprocessConfig

if TYPE_CHECKING:  # onnx and onnxruntime are imported where they are used
    import onnx

    from loda.calib.fp16 import Fp16Report
    from loda.metadata import CheckpointMeta
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
    "OnnxParity",
    "ParityError",
    "VerificationImages",
    "check_exported_graph",
    "export_onnx",
    "fold_shape_arithmetic",
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

DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization is an ONNX op from opset 17 on
MAX_OPSET = 23  # the highest opset torch 2.14's exporter targets
TRACE_BATCH = 2  # torch.export specialises size-1 dims: trace with batch >= 2
PARITY_ATOL = 1e-4
DEFAULT_VERIFY_IMAGES = 16
EXTRA_BATCH_SIZES = (1, 7)  # run in ONNX Runtime besides the per-image batch of crops
MAX_ONNX_BYTES = 2**31  # protobuf's hard limit for one serialised message

log = logging.getLogger(__name__)


# The checkpoint cannot be exported, or the exported graph is not what it must be: the same
# class as the torch-free graph checks raise (loda.artifacts), so one except catches both.
ExportError = ArtifactError


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


def torch_scores(wrapper: Any, crops: np.ndarray) -> np.ndarray:
    """Scores (float32 [n]) of uint8 NHWC crops through ``wrapper`` in torch."""
    with torch.inference_mode():
        return wrapper(torch.from_numpy(np.ascontiguousarray(crops))).numpy()


def _count_layernorms(module: Any) -> int:
    import torch.nn as nn

    return sum(isinstance(m, nn.LayerNorm) for m in module.modules())


# --------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxParity:
    """PyTorch vs ONNX Runtime on real crops: every image's crops as one batch, and the first
    image's crops at the other batch sizes (each a :class:`loda.compare.Comparison`)."""

    source: str
    crops: Comparison
    batches: dict[int, Comparison]  # extra ORT batch size -> the first image's crops
    atol: float = PARITY_ATOL
    seconds: float = 0.0

    @property
    def n_crops(self) -> int:
        return self.crops.stats.n_crops

    @property
    def max_abs(self) -> float:
        return self.crops.stats.max_abs_crop

    @property
    def batch_max_abs(self) -> dict[int, float]:
        return {b: c.stats.max_abs_crop for b, c in self.batches.items()}

    @property
    def overall_max(self) -> float:
        return max([self.max_abs, *self.batch_max_abs.values()])

    @property
    def passed(self) -> bool:
        return self.crops.passed and all(c.passed for c in self.batches.values())

    def summary(self) -> str:
        return f"parity max|d| {self.overall_max:.2e} on {self.n_crops} crops"

    def table(self) -> str:
        batches = ", ".join(f"batch {b}: {v:.2e}" for b, v in self.batch_max_abs.items())
        s = self.crops.stats
        rows = [
            ("images", f"{s.n_images} ({self.source})"),
            ("crops", str(s.n_crops)),
            ("max |d|", f"{s.max_abs_crop:.3e}  (tolerance {self.atol:.0e})"),
            ("mean |d|", f"{s.mean_abs_crop:.3e}"),
            ("p99 |d|", f"{s.p99_abs_crop:.3e}"),
            ("worst image", f"{s.worst_image}  (max |d| {s.worst_image_max:.3e})"),
            ("other batch sizes", batches or "-"),
            ("result", "PASS" if self.passed else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        title = "PyTorch vs ONNX Runtime (CPU), per-crop score"
        return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in rows)])

    def to_dict(self) -> dict[str, Any]:
        s = self.crops.stats
        return {
            "source": self.source,
            "n_images": s.n_images,
            "n_crops": s.n_crops,
            "max_abs": s.max_abs_crop,
            "mean_abs": s.mean_abs_crop,
            "p99_abs": s.p99_abs_crop,
            "worst_image": s.worst_image,
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
) -> OnnxParity:
    """Score ``images`` with ``wrapper`` in torch and with ``onnx_model`` in ONNX Runtime (CPU).

    One run per image (its crops form the batch), then batch sizes 1 and 7 on the first
    image's crops. Raises :class:`loda.compare.ParityError` (with the report) when max |d| >
    ``atol`` or any score is not finite, unless ``raise_on_failure`` is false.
    """
    start = time.perf_counter()
    session = ort_session(onnx_model)
    got = [ort_scores(session, crops) for crops in images.crops]
    want = [torch_scores(wrapper, crops) for crops in images.crops]
    tolerance = Tolerance("fp32", max_abs_dscore_crop=Bound(atol))
    stats = compare_scores(
        np.concatenate(got),
        np.concatenate(want),
        crops_per_image=[len(c) for c in images.crops],
        names=images.names,
    )
    first = images.crops[0]
    batches = {}
    for b in EXTRA_BATCH_SIZES:
        chunks = [ort_scores(session, first[i : i + b]) for i in range(0, len(first), b)]
        batches[b] = judge(compare_scores(np.concatenate(chunks), want[0]), tolerance)
    report = OnnxParity(
        source=images.source,
        crops=judge(stats, tolerance),
        batches=batches,
        atol=atol,
        seconds=time.perf_counter() - start,
    )
    if raise_on_failure and not report.passed:
        raise ParityError(
            f"ONNX Runtime scores differ from PyTorch: max |d| {report.overall_max:.3e} > "
            f"{atol:.0e} on {report.n_crops} crops (worst image {stats.worst_image})",
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
    parity: OnnxParity | None = None
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


def fold_shape_arithmetic(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with the shape arithmetic torch.onnx leaves behind folded, by onnxslim.

    onnxslim folds constants and shape computations it can resolve symbolically, removes
    dead and identity nodes and merges chains of shape ops; the symbolic batch dimension stays
    (:func:`check_exported_graph` checks it afterwards), and the exported graph is verified
    against PyTorch after this, so folding cannot change the scores unnoticed. Fewer nodes also
    means fewer TensorRT layers (docs/tensorrt-rtx.md has the counts).
    """
    import onnx
    import onnxslim

    before = len(model.graph.node)
    # onnxslim drops the nodes' metadata_props; loda-calib int8 reads their module paths
    # (``namespace``), so they are copied back onto the nodes that keep their names.
    node_props = {
        n.name: [(p.key, p.value) for p in n.metadata_props]
        for n in model.graph.node
        if n.metadata_props
    }
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for data
        folded = onnxslim.slim(model)
    if not isinstance(folded, type(model)):
        raise ExportError("onnxslim returned no model")
    for node in folded.graph.node:
        if not node.metadata_props and node.name in node_props:
            for key, value in node_props[node.name]:
                entry = node.metadata_props.add()
                entry.key, entry.value = key, value
    # onnxslim's own shape annotations confuse the FP16 conversion (a Conv weight typed float16
    # beside a float32 annotation): keep ONNX's standard inference instead.
    del folded.graph.value_info[:]
    folded = onnx.shape_inference.infer_shapes(folded)
    log.info(
        "folded shape arithmetic with onnxslim %s: %d -> %d nodes",
        onnxslim.__version__,
        before,
        len(folded.graph.node),
    )
    return folded


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


def _images_to_verify(precision: str, opset: int, verify: bool, verify_images: int | None) -> int:
    """Refuse a bad precision, opset or image count; the number of verification images."""
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
    return n


def _load_for_export(checkpoint_path: Path, output_path: Path) -> tuple[LoDa, CheckpointMeta]:
    """The checkpoint's model and metadata, once the paths and the model's size are fine."""
    _check_checkpoint(checkpoint_path)
    if output_path.is_dir():
        raise ExportError(f"output {output_path} is a directory; name a .onnx file")
    check_not_an_input(output_path, [checkpoint_path], "the checkpoint")
    output_path.parent.mkdir(parents=True, exist_ok=True)

    from loda.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint_path)
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if n_bytes >= MAX_ONNX_BYTES:
        raise ExportError(
            f"the model holds {n_bytes / 2**30:.2f} GiB of tensors; one ONNX file must stay under "
            "2 GiB (protobuf limit) and this exporter writes no external data files"
        )
    return model, meta


def _stamp(proto: onnx.ModelProto, meta: CheckpointMeta, checkpoint_path: Path) -> dict[str, str]:
    """Doc string and ``metadata_props`` (the LoDa record, provenance, precision, I/O) on the
    FP32 graph, then ``onnx.checker``; returns the metadata."""
    import onnx

    crop_size = meta.preprocess.crop_size
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
    return metadata


def _serialize(proto: onnx.ModelProto) -> bytes:
    data = proto.SerializeToString()
    if len(data) >= MAX_ONNX_BYTES:
        raise ExportError(f"exported graph is {len(data) / 2**30:.2f} GiB, over 2 GiB")
    return data


def _verify_fp32(
    wrapper: ExportWrapper,
    fp32_bytes: bytes,
    images: str | os.PathLike | None,
    n_images: int,
    preprocess: PreprocessConfig,
    atol: float,
) -> tuple[VerificationImages, OnnxParity]:
    vimages = load_verification_images(images, n_images, preprocess, log=log.info)
    log.info(
        "verifying on %d crops of %d images (%s)",
        vimages.n_crops,
        len(vimages.names),
        vimages.source,
    )
    return vimages, verify_onnx(wrapper, fp32_bytes, vimages, atol=atol)


def _save_fp16(fp32_bytes: bytes, vimages: VerificationImages | None, report: ExportReport) -> None:
    """Convert to FP16 (checked against FP32 when there are images) and save it."""
    import onnx

    from loda.calib.fp16 import convert_onnx_fp16

    fp16_model, fp16_report = convert_onnx_fp16(
        onnx.load_from_string(fp32_bytes), images=vimages, fp32_model=fp32_bytes, log=log.info
    )
    report.fp16 = fp16_report
    report.metadata = read_onnx_metadata(fp16_model)
    report.size_bytes = _save_bytes(fp16_model.SerializeToString(), report.path)


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
    fold: bool = True,
) -> ExportReport:
    """Export a LoDa checkpoint to one self-contained ONNX file.

    ``fold`` (default on) folds the exporter's shape arithmetic (:func:`fold_shape_arithmetic`);
    off only to measure what folding changes.

    ``precision="fp16"`` exports FP32 first (verified against PyTorch when ``verify``), then
    converts with :func:`loda.calib.fp16.convert_onnx_fp16` and checks FP16 against FP32 in ONNX
    Runtime. ``verify_images`` defaults to :data:`DEFAULT_VERIFY_IMAGES` (FP32) or
    :data:`loda.calib.fp16.DEFAULT_FP16_VERIFY_IMAGES` (FP16). The output file is written only
    when every check passes; failures raise :class:`ExportError` / :class:`ParityError` /
    :class:`loda.calib.fp16.Fp16Error`. Progress goes to this module's logger.
    """
    start = time.perf_counter()
    n_images = _images_to_verify(precision, opset, verify, verify_images)
    checkpoint_path, output_path = Path(checkpoint_path), Path(output_path)
    model, meta = _load_for_export(checkpoint_path, output_path)
    wrapper = ExportWrapper(model, meta.preprocess).eval()
    crop_size = meta.preprocess.crop_size

    t0 = time.perf_counter()
    log.info(
        "exporting %s (%s) with torch.onnx.export(dynamo=True)", checkpoint_path, meta.model.name
    )
    proto = _export_proto(wrapper, crop_size, opset)
    if fold:
        proto = fold_shape_arithmetic(proto)
    export_seconds = time.perf_counter() - t0
    counts = check_exported_graph(
        proto, crop_size=crop_size, expected_layernorms=_count_layernorms(model)
    )
    metadata = _stamp(proto, meta, checkpoint_path)
    fp32_bytes = _serialize(proto)

    parity = vimages = None
    if verify:
        vimages, parity = _verify_fp32(wrapper, fp32_bytes, images, n_images, meta.preprocess, atol)
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
        _save_fp16(fp32_bytes, vimages, report)
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
) -> OnnxParity:
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
    vimages = load_verification_images(images, verify_images, meta.preprocess, log=log.info)
    return verify_onnx(wrapper, str(onnx_path), vimages, atol=atol)
