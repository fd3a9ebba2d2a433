"""INT8 LoDa graphs with explicit Q/DQ nodes, calibrated on real crops.

TensorRT 11 has no INT8 builder flag and no calibrator: INT8 lives in the graph as
QuantizeLinear/DequantizeLinear pairs, which the strongly typed build honours as is.
:func:`quantize_onnx_int8` makes such a graph from the FP32 export of :mod:`loda.export.onnx`
with ONNX Runtime's ``quantize_static`` (``QuantFormat.QDQ``):

- quantized: ``Conv``, ``MatMul`` and ``Gemm`` (weights per channel, symmetric int8); every other
  op (LayerNormalization, Softmax, GELU, the input normalisation, the cosine head's ReduceL2/Div)
  stays float;
- kept float on purpose (:func:`float_kept_nodes`), both measured on ``loda_micro`` and
  ``loda_tiny`` before being chosen:

  * the attention-probability MatMuls (``softmax(QK^T) @ V``, a MatMul fed by a Softmax).
    Probabilities lie in [0, 1] and, over ~200 tokens, mostly sit below one int8 step (1/127
    symmetric), so they round to zero: on a trained ``loda_micro`` quantizing them shifted
    every score by -0.16 (Spearman vs FP32 0.990); kept float, +0.006 (0.995);
  * the adapters' first projection ``learner.down_proj.N.fc1`` (module path from the
    exporter's ``namespace`` node metadata, :data:`FLOAT_MODULE_PATTERN`). It reads the raw,
    un-normalised ViT residual stream, whose per-tensor int8 range is set by a few outlier
    channels (every other ViT GEMM reads a LayerNorm, GELU or attention output). Quantizing
    it dominated the INT8 error: Spearman vs FP32 0.88 -> 0.994 (``loda_tiny``) and 0.94 ->
    0.999 (random-init ``loda_micro``) when kept float, for < 1 % of the GEMM FLOPs;
  * the convolutions that see the image itself (:data:`STEM_MODULE_PATTERN`: the ViT's patch
    embedding, the ResNet's stem), as post-training quantization usually keeps the first layer:
    its error reaches every later layer of both branches. On the demo's trained ``loda_micro``
    it cut the INT8 error by 57 % (mean |d score| vs FP32 0.019 -> 0.008; docs/experiments.md);

- calibration data: the crops of REAL images exactly as the runtime makes them
  (:func:`loda.preprocess.preprocess_image` with the preprocessing record stored in the ONNX
  metadata), fed one image (its crops form the batch) at a time, as uint8 ``crops``, through a
  :class:`CropReader`. No images means an error, never random data.

Targets (:data:`TARGETS`):

- ``tensorrt``: the settings NVIDIA ModelOpt passes to the same ORT function for TensorRT:
  ``QInt8`` activations and weights, ``ActivationSymmetric`` (zero point 0, as TensorRT
  requires), per-channel weights, ``AddQDQPairToWeight`` (float weights behind Q/DQ; TensorRT
  folds them), ``DedicatedQDQPair=False``, ``QuantizeBias=False``, ``ForceQuantizeNoInputCheck``,
  no Q/DQ on the outputs of quantized ops (``OpTypesToExcludeOutputQuantization``: TensorRT fuses
  the next op's input quantization instead), ``QDQDisableWeightAdjustForInt32Bias``.
- ``cpu``: what ONNX Runtime's x86 CPU kernels are made for: ``QUInt8`` (asymmetric)
  activations with ``QInt8`` weights (u8s8), per channel; output Q/DQ on Conv only (ORT fuses
  ``DQ -> Conv -> Q`` into ``QLinearConv``) while MatMul/Gemm outputs stay float (ORT runs
  ``DQ -> MatMul`` as ``MatMulIntegerToFloat``, with no quantize/dequantize round trip before the
  bias, GELU and residual adds); and, before quantizing, the GELUs fused into ONNX Runtime's
  ``Gelu``/``BiasGelu`` (:func:`fuse_gelu_for_onnxruntime`; the exporter's GELU form is one that
  ORT's own session-time fusion misses). The result runs on ONNX Runtime only (``loda-trt``
  refuses it with one line).

Why two targets: under ONNX Runtime's CPU provider the ``tensorrt`` graph runs slower than
FP32 and the ``cpu`` graph faster (docs/experiments.md, "INT8 targets on ONNX Runtime's CPU
provider", has the measurements).
``quant_pre_process`` is not used: its symbolic shape inference fails on the graph's ``Expand``
and its optimiser path adds Transposes and drops the exporter's ``namespace`` node metadata,
without a speed or accuracy gain.

Verification runs both graphs in ONNX Runtime (CPU) on HELD-OUT images (never the calibration
images) and requires Spearman(INT8 image scores, FP32 image scores) >= :data:`MIN_SPEARMAN`, no
inf/NaN; per-crop max and mean |d score| and, when the images come with MOS (a dataset or the
demo set), SRCC vs MOS of both graphs are reported. Histogram calibrators (entropy, percentile)
keep every calibrated tensor of a batch in memory, so calibration runs one image per
``collect_data`` call (``CalibStridedMinMax``), whatever the method.

Verification numbers hold for the CPU class they were measured on (:mod:`loda.cpu_isa`): ONNX
Runtime's u8s8 kernels saturate on x86 CPUs without VNNI/AMX, and an INT8 graph verified on a
VNNI CPU then scores worse elsewhere (Spearman vs eager 0.9751 on an AVX2 EPYC against 0.9947 on
a VNNI Xeon, issue 17). Both targets are affected on the CPU (ORT shifts s8 activations to u8).
Verification sessions, like the runtime's, therefore use ORT's exact u8u8 kernels on such CPUs
(``session.x64quantprecision``), so the numbers measure the graph on every x86 class, and the
record names the class it was verified on (``verification.cpu``); the runtime warns on another.

Written to ``metadata_props``: ``loda.precision = "int8"``, ``loda.int8`` (JSON: method, target,
calibration images/crops and their source, source ONNX sha256, quantization settings, INT8 share
of GEMM FLOPs, verification numbers and CPU); the ``loda`` record and the rest are carried over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loda.atomic import check_not_an_input, write_bytes_atomic
from loda.compare import spread_indices
from loda.errors import LodaError, first_line

from .verify import spearman_problems

if TYPE_CHECKING:
    import onnx

    from loda.data.images import VerificationImages
    from loda.preprocess import PreprocessConfig

    from .graph_stats import GemmStats

__all__ = [
    "DEFAULT_CALIB_IMAGES",
    "DEFAULT_VERIFY_IMAGES",
    "METHODS",
    "MIN_SPEARMAN",
    "MIN_VERIFY_IMAGES",
    "TARGETS",
    "CalibrationImage",
    "CropReader",
    "Int8Error",
    "Int8Report",
    "Int8Target",
    "compare_int8",
    "float_kept_nodes",
    "int8_gemm_share",
    "quantize_onnx_int8",
    "select_images",
]

DEFAULT_CALIB_IMAGES = 64
DEFAULT_VERIFY_IMAGES = 50
MIN_SPEARMAN = 0.99
MIN_VERIFY_IMAGES = 4  # a rank correlation over fewer images means nothing
QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
# Ops between a Softmax and the MatMul it feeds that do not change values.
_PASS_THROUGH = frozenset({"Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"})
# Module paths (the dynamo exporter's ``namespace`` node metadata) of GEMMs kept float: the
# adapters' first projection, which reads the raw, un-normalised ViT residual stream.
FLOAT_MODULE_PATTERN = re.compile(r"\blearner\.down_proj\.\d+\.fc1\b")
# ... and of the convolutions that see the image itself: the ViT's patch embedding and the
# ResNet's stem (its convs up to the stem's last BatchNorm, whose name the folded conv carries).
STEM_MODULE_PATTERN = re.compile(r"\bpatch_embed\.proj\b|\bfeature_model\.(conv1|bn1)\b")
ATTENTION_PROBS = "attention probabilities (softmax @ V)"
RESIDUAL_INPUTS = "adapter input projections (raw residual stream)"
IMAGE_STEM = "first layers on the image (patch embedding, CNN stem)"

#: --method -> onnxruntime.quantization.CalibrationMethod member name.
METHODS: dict[str, str] = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

log = logging.getLogger(__name__)


class Int8Error(LodaError):
    """INT8 quantization failed, or the INT8 graph failed its check against FP32."""

    def __init__(self, message: str, report: Int8Report | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Int8Target:
    """How to quantize for one runtime."""

    name: str
    what: str
    activation_type: str  # onnxruntime.quantization.QuantType member name
    weight_type: str
    reduce_range: bool
    extra_options: Mapping[str, Any]
    suffix: str  # default output name: <fp32 stem><suffix>
    next_command: str  # formatted with {onnx} and {stem}
    # Fuse GELU (and its bias Add) into ONNX Runtime's com.microsoft Gelu/BiasGelu before
    # quantizing (:func:`fuse_gelu_for_onnxruntime`): the graph then runs on ONNX Runtime only.
    ort_gelu_fusion: bool = False


#: The INT8 targets: drive --target, the quantization settings and the "next:" hint.
TARGETS: dict[str, Int8Target] = {
    "tensorrt": Int8Target(
        name="tensorrt",
        what="INT8 Q/DQ ONNX for TensorRT (s8 activations and weights, symmetric)",
        activation_type="QInt8",
        weight_type="QInt8",
        reduce_range=False,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "AddQDQPairToWeight": True,
            "DedicatedQDQPair": False,
            "QuantizeBias": False,
            "ForceQuantizeNoInputCheck": True,
            "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
            "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
            "QDQDisableWeightAdjustForInt32Bias": True,
            "CalibTensorRangeSymmetric": True,
        },
        suffix=".int8.onnx",
        next_command="loda-trt build {onnx} -o {stem}.engine",
    ),
    "cpu": Int8Target(
        name="cpu",
        what="INT8 Q/DQ ONNX for ONNX Runtime CPU (u8 activations, s8 weights)",
        activation_type="QUInt8",
        weight_type="QInt8",
        reduce_range=False,
        extra_options={
            "WeightSymmetric": True,
            # Float MatMul/Gemm outputs: ORT runs DQ -> MatMul as MatMulIntegerToFloat (no Q/DQ
            # round trip before the bias Add / GELU / residual Add); Conv keeps its output Q so
            # that ORT fuses DQ -> Conv -> Q into QLinearConv.
            "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
        },
        suffix=".int8-cpu.onnx",
        next_command="score {onnx} with ONNX Runtime's CPU provider (loda.export.onnx.ort_session)",
        ort_gelu_fusion=True,
    ),
}


# --------------------------------------------------------------------------------------------
# Calibration and verification images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationImage:
    """One real image: a file path or encoded bytes (archive member), with its MOS if known."""

    name: str
    source: Path | bytes
    mos: float | None = None

    def key(self) -> str:
        return str(self.source.resolve()) if isinstance(self.source, Path) else self.name


def _image_candidates(
    images: str | os.PathLike, n_wanted: int
) -> tuple[str, list[CalibrationImage]]:
    """Images of a folder (recursive; a demo set through its CSV, with MOS), an archive (the
    ``n_wanted`` members spread over the sorted names; with MOS from the manifest ``loda-data
    pack`` writes beside it) or one image file."""
    from loda.data.images import archive_images, folder_images, is_archive_file
    from loda.sources import ARCHIVE_SUFFIXES, IMAGE_SUFFIXES, read_manifest_mos

    root = Path(images)
    if is_archive_file(root):
        members = archive_images(root, n_wanted)
        mos = read_manifest_mos(root)  # written by loda-data pack
        return str(root), [CalibrationImage(name, data, mos.get(name)) for name, data in members]
    if root.is_dir():
        mos = _demo_mos(root)
        paths = folder_images(root)
        out = []
        for p in paths:
            name = p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
            out.append(CalibrationImage(name, p, mos.get(str(p.resolve()))))
        return str(root), out
    if root.is_file() and root.suffix.lower() in IMAGE_SUFFIXES:
        return str(root), [CalibrationImage(root.name, root)]
    if not root.exists():
        raise Int8Error(f"no images at {root}")
    raise Int8Error(f"{root}: not a folder, an image or an archive ({', '.join(ARCHIVE_SUFFIXES)})")


def _demo_mos(root: Path) -> dict[str, float]:
    """resolved path -> MOS for a demo set folder (its CSV), else empty."""
    from loda.data.demo import CSV_NAME, is_demo_dir

    if not (is_demo_dir(root) and (root / CSV_NAME).is_file()):
        return {}
    from loda.data.datasets import read_dataset

    return {str(s.path.resolve()): s.mos for s in read_dataset("csv", root / CSV_NAME).samples}


def _dataset_candidates(dataset: Any) -> tuple[str, list[CalibrationImage]]:
    return f"{dataset.name} ({dataset.root})", [
        CalibrationImage(s.name, Path(s.path), float(s.mos)) for s in dataset.samples
    ]


def select_images(
    images: str | os.PathLike | None = None,
    *,
    dataset: Any = None,
    verify_images: str | os.PathLike | None = None,
    n_calib: int = DEFAULT_CALIB_IMAGES,
    n_verify: int = DEFAULT_VERIFY_IMAGES,
    verify: bool = True,
) -> tuple[str, list[CalibrationImage], str, list[CalibrationImage]]:
    """Pick disjoint calibration and verification images.

    Source: ``images`` (folder, archive or image) or ``dataset`` (a
    :class:`loda.data.datasets.Dataset`, which brings MOS). Calibration takes ``n_calib`` images
    spread evenly over the sorted candidates. Verification takes ``n_verify`` images from
    ``verify_images`` (another folder/archive; files also used for calibration are dropped)
    or, without it, from the candidates that calibration did not take. When the source is
    too small for both, the split is logged: at least :data:`MIN_VERIFY_IMAGES` images are held
    out and the rest calibrates. Returns ``(calib_source, calib, verify_source, verify)``.
    """
    if n_calib < 1:
        raise Int8Error(f"calibration needs at least 1 image, got {n_calib}")
    if (images is None) == (dataset is None):
        raise Int8Error("name the calibration images: a folder/archive, or a dataset")
    split_here = verify and verify_images is None
    n_wanted = n_calib + (n_verify if split_here else 0)
    if dataset is not None:
        source, candidates = _dataset_candidates(dataset)
    else:
        source, candidates = _image_candidates(images, n_wanted)
    if not candidates:
        raise Int8Error(
            f"no images in {source}: INT8 calibration needs real images (never random data)"
        )
    chosen = [candidates[i] for i in spread_indices(len(candidates), n_wanted)]

    if not split_here:
        calib = [chosen[i] for i in spread_indices(len(chosen), n_calib)]
        held: list[CalibrationImage] = []
        verify_source = ""
        if verify:
            verify_source, vcands = _image_candidates(verify_images, n_verify + len(calib))
            used = {c.key() for c in calib}
            vcands = [c for c in vcands if c.key() not in used]
            if len(vcands) < MIN_VERIFY_IMAGES:
                raise Int8Error(
                    f"--verify-images {verify_images}: {len(vcands)} images not used for "
                    f"calibration; verification needs at least {MIN_VERIFY_IMAGES}"
                )
            held = [vcands[i] for i in spread_indices(len(vcands), n_verify)]
        return source, calib, verify_source, held

    total = len(chosen)
    if total < MIN_VERIFY_IMAGES + 1:
        raise Int8Error(
            f"{total} image(s) in {source}: need at least {MIN_VERIFY_IMAGES + 1} (1 to calibrate, "
            f"{MIN_VERIFY_IMAGES} held out to verify); pass more images, --verify-images DIR, "
            "or --no-verify"
        )
    if total < n_calib + n_verify:
        share = n_verify / (n_calib + n_verify)
        n_v = min(total - 1, max(MIN_VERIFY_IMAGES, round(total * share)))
        n_c = total - n_v
        log.info(
            f"only {total} images in {source}: calibrating on {n_c}, verifying on the other "
            f"{n_v} (asked for {n_calib} + {n_verify})"
        )
    else:
        n_c = n_calib
    calib_idx = set(spread_indices(total, n_c))
    calib = [c for i, c in enumerate(chosen) if i in calib_idx]
    held = [c for i, c in enumerate(chosen) if i not in calib_idx]
    return source, calib, source, held


class CropReader:
    """``onnxruntime.quantization`` calibration data reader: one image's uint8 crops per batch.

    Crops are made on demand (``preprocess_image`` with the model's preprocessing record), so
    memory holds one image at a time. ``__len__`` and ``set_range`` let ``quantize_static``
    collect in strides (``CalibStridedMinMax``).
    """

    def __init__(
        self,
        images: Sequence[CalibrationImage],
        cfg: PreprocessConfig,
        input_name: str = "crops",
    ) -> None:
        self.images = list(images)
        self.cfg = cfg
        self.input_name = input_name
        self.n_crops = 0
        self.n_done = 0
        self._pending: Iterator[CalibrationImage] = iter(self.images)
        self._progress_every = max(1, len(self.images) // 8)

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self.images[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        from loda.preprocess import preprocess_image

        image = next(self._pending, None)
        if image is None:
            return None
        crops = preprocess_image(image.source, self.cfg)
        self.n_crops += len(crops)
        self.n_done += 1
        if self.n_done % self._progress_every == 0 or self.n_done == len(self.images):
            log.info(f"calibrating: {self.n_done}/{len(self.images)} images")
        return {self.input_name: crops}

    def __iter__(self) -> CropReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def _load_crops(
    images: Sequence[CalibrationImage], cfg: PreprocessConfig, source: str
) -> VerificationImages:
    from loda.data.images import VerificationImages
    from loda.preprocess import preprocess_image

    return VerificationImages(
        source,
        tuple(i.name for i in images),
        tuple(preprocess_image(i.source, cfg) for i in images),
    )


# --------------------------------------------------------------------------------------------
# Graph helpers
# --------------------------------------------------------------------------------------------


def _namespace(node: onnx.NodeProto) -> str:
    return next((p.value for p in node.metadata_props if p.key == "namespace"), "")


def float_kept_nodes(model: onnx.ModelProto) -> dict[str, list[str]]:
    """GEMM nodes left unquantized on purpose, by reason (see the module docstring).

    :data:`ATTENTION_PROBS`: MatMuls fed by a Softmax (possibly through a reshape/cast).
    :data:`RESIDUAL_INPUTS`: MatMul/Gemm nodes whose module path (``namespace`` metadata,
    written by torch's dynamo exporter) matches :data:`FLOAT_MODULE_PATTERN`.
    :data:`IMAGE_STEM`: Conv nodes whose module path matches :data:`STEM_MODULE_PATTERN`.
    Graphs without that metadata keep only the first kind float.
    """
    producers = {o: n for n in model.graph.node for o in n.output}

    def from_softmax(name: str) -> bool:
        node = producers.get(name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producers.get(node.input[0])
        return node is not None and node.op_type == "Softmax"

    attention, residual, stem = [], [], []
    for node in model.graph.node:
        if node.op_type == "MatMul" and any(from_softmax(i) for i in node.input):
            attention.append(node.name)
        elif node.op_type in ("MatMul", "Gemm") and FLOAT_MODULE_PATTERN.search(_namespace(node)):
            residual.append(node.name)
        elif node.op_type == "Conv" and STEM_MODULE_PATTERN.search(_namespace(node)):
            stem.append(node.name)
    return {ATTENTION_PROBS: attention, RESIDUAL_INPUTS: residual, IMAGE_STEM: stem}


def int8_gemm_share(model: onnx.ModelProto, stats: GemmStats | None = None) -> tuple[float, int]:
    """Share of GEMM FLOPs (batch 1) whose two operands come from DequantizeLinear, and the
    number of such GEMM nodes.

    FLOPs come from ``stats`` when given (the GEMMs of the graph before quantization, matched by
    node name): ONNX shape inference stops at ONNX Runtime's com.microsoft ops, so the GEMMs
    after a fused GELU have no shapes in the quantized graph itself. Raises :class:`Int8Error`
    when some GEMM's FLOPs are unknown, rather than report a share of the known ones.
    """
    from .graph_stats import gemm_stats

    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    stats = stats if stats is not None else gemm_stats(model)
    if stats.unknown:
        raise Int8Error(
            f"cannot count the FLOPs of {len(stats.unknown)} GEMM node(s) (no inferred shapes), "
            f"e.g. {stats.unknown[0]}"
        )
    int8_flops, n_int8 = 0, 0
    for g in stats.nodes:
        node = by_name.get(g.name)
        if node is not None and all(producers.get(i) == "DequantizeLinear" for i in node.input[:2]):
            int8_flops += g.flops
            n_int8 += 1
    total = stats.total_flops
    return (int8_flops / total if total else 0.0), n_int8


GELU_FUSIONS = ("Gelu", "BiasGelu")  # com.microsoft ops made by fuse_gelu_for_onnxruntime


def fuse_gelu_for_onnxruntime(model: onnx.ModelProto) -> dict[str, int]:
    """Fuse the exported GELUs into ONNX Runtime's ``Gelu`` and ``BiasGelu`` (com.microsoft), in
    place; returns the number of fused nodes per op type.

    torch's exporter writes ``gelu(x)`` as ``x * (0.5 * (1 + erf(x / sqrt 2)))``, a form ONNX
    Runtime's own session-time GeluFusion does not match, so each GELU ran as five element-wise
    ops (plus the Linear's bias ``Add``). ONNX Runtime's transformer fusion classes
    (``onnxruntime.transformers``: ``FusionGelu``, then ``FusionBiasGelu`` for a GELU fed by
    ``MatMul -> Add(bias)``) match it. Only the ``cpu`` INT8 target uses this: the result is
    ONNX Runtime-only (TensorRT's parser does not know these ops).
    """
    import onnx
    import onnxruntime.transformers  # noqa: F401  (puts its sibling modules on sys.path)
    from onnxruntime.transformers.fusion_biasgelu import FusionBiasGelu
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(model)
    FusionGelu(wrapped).apply()
    FusionBiasGelu(wrapped, is_fastgelu=False).apply()
    wrapped.topological_sort()
    counts = {op: 0 for op in GELU_FUSIONS}
    for node in model.graph.node:
        if node.domain == "com.microsoft" and node.op_type in counts:
            counts[node.op_type] += 1
    if any(counts.values()) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return counts


@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """onnxruntime.quantization logs advice through the root logger; keep stderr readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Int8Report:
    method: str
    target: str
    calib_source: str
    calib_images: int
    calib_crops: int
    int8_share: float
    n_int8_gemms: int
    kept_float: dict[str, int]  # reason -> GEMM nodes left unquantized on purpose
    settings: dict[str, Any]  # what quantize_static was given
    n_qdq: int
    source_sha256: str
    calib_seconds: float = 0.0
    verify_source: str = ""
    n_images: int = 0
    n_crops: int = 0
    spearman: float | None = None
    max_abs: float | None = None
    mean_abs: float | None = None
    n_nonfinite: int = 0
    worst_image: str = ""
    srcc_int8: float | None = None  # vs MOS, when known
    srcc_fp32: float | None = None
    n_mos: int = 0
    min_spearman: float = MIN_SPEARMAN
    seconds: float = 0.0
    path: Path | None = None
    size_bytes: int = 0
    calib_names: tuple[str, ...] = ()
    verify_names: tuple[str, ...] = ()
    checks: list[str] = field(default_factory=list)
    verified_on: dict[str, Any] | None = None  # the CPU (loda.cpu_isa) verification ran on

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    @property
    def verified(self) -> bool:
        return self.spearman is not None

    @property
    def passed(self) -> bool:
        return not self.checks

    def summary(self) -> str:
        text = f"INT8 GEMM FLOPs {100 * self.int8_share:.1f}%"
        if self.verified:
            text += f", Spearman vs FP32 {self.spearman:.4f} on {self.n_images} held-out images"
            if self.srcc_int8 is not None:
                text += f", SRCC vs MOS {self.srcc_int8:.4f} (FP32 {self.srcc_fp32:.4f})"
        else:
            text += ", not verified"
        return text

    def table(self) -> str:
        rows = [
            ("target / method", f"{self.target} / {self.method}"),
            (
                "calibration",
                f"{self.calib_images} images, {self.calib_crops} crops ({self.calib_source})",
            ),
            ("GEMM FLOPs in INT8", f"{100 * self.int8_share:.2f}% ({self.n_int8_gemms} nodes)"),
            (
                "kept float",
                ", ".join(f"{n} {why}" for why, n in self.kept_float.items()) or "-",
            ),
            ("Q/DQ nodes", str(self.n_qdq)),
        ]
        if self.verified:
            rows += [
                (
                    "held-out images",
                    f"{self.n_images} / {self.n_crops} crops ({self.verify_source})",
                ),
                ("Spearman (images)", f"{self.spearman:.6f}  (goal >= {self.min_spearman})"),
                ("max |d| (crops)", f"{self.max_abs:.3e}"),
                ("mean |d| (crops)", f"{self.mean_abs:.3e}"),
                ("worst image", self.worst_image),
                ("inf/NaN scores", str(self.n_nonfinite)),
            ]
            if self.verified_on:
                cpu = self.verified_on
                rows.append(
                    ("verified on", f"{cpu['cpu'] or cpu['machine']} ({cpu['int8_class']})")
                )
            if self.srcc_int8 is not None:
                rows.append(
                    (
                        "SRCC vs MOS",
                        f"INT8 {self.srcc_int8:.4f}  FP32 {self.srcc_fp32:.4f}  "
                        f"({self.n_mos} images)",
                    )
                )
        rows.append(("result", "PASS" if self.passed else "FAIL: " + "; ".join(self.checks)))
        width = max(len(k) for k, _ in rows)
        title = "INT8 vs FP32, ONNX Runtime (CPU), held-out images"
        return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in rows)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target,
            "calibration": {
                "images": self.calib_images,
                "crops": self.calib_crops,
                "source": self.calib_source,
            },
            "source_onnx_sha256": self.source_sha256,
            "settings": dict(self.settings),
            "int8_gemm_flops_share": round(self.int8_share, 6),
            "int8_gemm_nodes": self.n_int8_gemms,
            "kept_float": dict(self.kept_float),
            "verification": None
            if not self.verified
            else {
                "images": self.n_images,
                "crops": self.n_crops,
                "source": self.verify_source,
                "spearman_vs_fp32": self.spearman,
                "max_abs_vs_fp32": self.max_abs,
                "mean_abs_vs_fp32": self.mean_abs,
                "srcc_vs_mos_int8": self.srcc_int8,
                "srcc_vs_mos_fp32": self.srcc_fp32,
                "cpu": self.verified_on,
            },
        }


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def compare_int8(
    fp32_model: str | os.PathLike | bytes,
    int8_model: str | os.PathLike | bytes,
    images: VerificationImages,
    mos: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """Score ``images`` with both graphs in ONNX Runtime (CPU).

    Image score = mean of its crop scores. Returns Spearman(INT8, FP32) over images, per-crop
    max/mean |d|, the inf/NaN count, the worst image, the image scores, and SRCC vs ``mos``
    for both graphs when every image has a MOS.
    """
    from .verify import compare_graphs, verification_numbers

    known = mos is not None and len(mos) == len(images.names) and all(m is not None for m in mos)
    stats = compare_graphs(fp32_model, int8_model, images, mos if known else None)
    out = verification_numbers(stats, MIN_VERIFY_IMAGES)
    out.update(
        scores_fp32=[float(v) for v in stats.reference_images],
        scores_int8=[float(v) for v in stats.candidate_images],
        srcc_int8=None,
        srcc_fp32=None,
        n_mos=0,
    )
    if not np.isnan(out["spearman"]) and stats.srcc is not None:
        out.update(srcc_int8=stats.srcc, srcc_fp32=stats.srcc_reference, n_mos=stats.n_mos)
    return out


# --------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------


def _read_fp32_model(path: Path) -> tuple[onnx.ModelProto, dict[str, str]]:
    import onnx

    from loda.artifacts import read_onnx_metadata
    from loda.onnx_files import check_onnx_file

    if not path.is_file():
        raise Int8Error(f"no ONNX file at {path}")
    check_onnx_file(path)  # damaged, or external data outside its folder: one line
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise Int8Error(f"{path} is not an ONNX model: {type(exc).__name__}") from None
    meta = read_onnx_metadata(model, source=path)
    if "loda" not in meta:
        raise Int8Error(
            f"{path} has no LoDa metadata (metadata_props 'loda'); quantize an FP32 ONNX made by "
            "loda-export onnx"
        )
    precision = meta.get("loda.precision", "fp32")
    ops = {n.op_type for n in model.graph.node}
    if precision != "fp32" or ops & {"QuantizeLinear", "DequantizeLinear"}:
        raise Int8Error(
            f"{path} is an {precision} graph{' with Q/DQ nodes' if 'QuantizeLinear' in ops else ''};"
            " quantize the FP32 export (loda-export onnx CKPT -o model.onnx)"
        )
    return model, meta


def _ort_quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "onnxruntime":
            raise  # onnx, which onnxruntime.quantization needs: the 'export' extra
        raise Int8Error(
            "INT8 calibration needs ONNX Runtime (onnxruntime.quantization): pip install "
            "'loda[cpu]' (or 'loda[gpu]')"
        ) from None
    return quantization


def _check_arguments(
    onnx_path: Path, output_path: Path, method: str, target: str, verify: bool, n_verify: int
) -> None:
    if method not in METHODS:
        raise Int8Error(f"unknown calibration method {method!r} (known: {', '.join(METHODS)})")
    if target not in TARGETS:
        raise Int8Error(f"unknown INT8 target {target!r} (known: {', '.join(TARGETS)})")
    if verify and n_verify < MIN_VERIFY_IMAGES:
        raise Int8Error(f"verification needs at least {MIN_VERIFY_IMAGES} images, got {n_verify}")
    if output_path.is_dir():
        raise Int8Error(f"output {output_path} is a directory; name a .onnx file")
    if output_path.resolve() == onnx_path.resolve():
        raise Int8Error(f"output {output_path} would overwrite the FP32 model")
    if not onnx_path.is_file():
        raise Int8Error(f"no ONNX file at {onnx_path}")


@dataclass
class _PreparedGraph:
    """The FP32 graph ready for ``quantize_static``, and what was decided about it."""

    model: onnx.ModelProto
    kept_float: dict[str, list[str]]
    flops: GemmStats
    fused: dict[str, int]

    @property
    def excluded(self) -> list[str]:
        return sorted({name for names in self.kept_float.values() for name in names})


def _prepare_graph(model: onnx.ModelProto, spec: Any) -> _PreparedGraph:
    """Name the nodes, choose the nodes that stay float, count the GEMM FLOPs (before any
    com.microsoft op, which shape inference cannot see) and fuse GELUs for the cpu target
    (after ``float_kept_nodes``: it reads MatMuls, which stay as they are)."""
    import onnx

    from .fp16 import _name_nodes
    from .graph_stats import gemm_stats

    work = onnx.ModelProto()
    work.CopyFrom(model)
    _name_nodes(work.graph)
    kept_float = float_kept_nodes(work)
    flops = gemm_stats(work)
    fused: dict[str, int] = {}
    if spec.ort_gelu_fusion:
        with _quiet_ort_logging():
            fused = fuse_gelu_for_onnxruntime(work)
    return _PreparedGraph(work, kept_float, flops, fused)


def _quantize(
    graph: _PreparedGraph,
    reader: CropReader,
    spec: Any,
    method: str,
    extra: dict[str, Any],
    calibration_cache: Path | None = None,
) -> onnx.ModelProto:
    """``quantize_static`` (QDQ, per-channel weights) on ``graph`` with ``reader``'s crops.

    ``calibration_cache``: ONNX Runtime's tensor-range cache file; when it exists the ranges are
    read from it instead of calibrating (the recipe comparison, scripts/int8_recipes.py)."""
    import onnx

    q = _ort_quantization()
    with tempfile.TemporaryDirectory(prefix="loda-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(graph.model, str(src))
        try:
            # ONNX Runtime's calibrators print progress chatter ("Collecting tensor data and
            # making histogram ..." once per image for entropy/percentile); failures raise.
            with (
                _quiet_ort_logging(),
                open(os.devnull, "w") as devnull,
                contextlib.redirect_stdout(devnull),
            ):
                q.quantize_static(
                    str(src),
                    str(dst),
                    reader,
                    quant_format=q.QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                    per_channel=True,
                    reduce_range=spec.reduce_range,
                    activation_type=getattr(q.QuantType, spec.activation_type),
                    weight_type=getattr(q.QuantType, spec.weight_type),
                    nodes_to_exclude=graph.excluded,
                    calibrate_method=getattr(q.CalibrationMethod, METHODS[method]),
                    calibration_providers=["CPUExecutionProvider"],
                    extra_options=extra,
                    **(
                        {}
                        if calibration_cache is None
                        else {"calibration_cache_path": calibration_cache}
                    ),
                )
        except LodaError:
            raise
        except Exception as exc:  # onnxruntime raises plain exceptions
            first = first_line(exc)
            raise Int8Error(f"quantize_static failed: {first}") from exc
        return onnx.load(str(dst))


def _check_int8_graph(quantized: onnx.ModelProto, crop_size: int) -> bytes:
    """onnx.checker, the LoDa interface, and that ONNX Runtime loads it; the graph's bytes."""
    import onnx

    from loda.artifacts import check_exported_graph, ort_session

    try:
        onnx.checker.check_model(quantized, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = first_line(exc)
        raise Int8Error(f"INT8 graph fails onnx.checker: {first}") from None
    check_exported_graph(quantized, crop_size=crop_size)  # I/O names, types, dynamic batch
    int8_bytes = quantized.SerializeToString()
    try:
        ort_session(int8_bytes)
    except LodaError:
        raise
    except Exception as exc:
        first = first_line(exc)
        raise Int8Error(f"ONNX Runtime cannot load the INT8 graph: {first}") from None
    return int8_bytes


def _verify(
    report: Int8Report,
    fp32_path: Path,
    int8_bytes: bytes,
    held: list[CalibrationImage],
    cfg: PreprocessConfig,
    verify_source: str,
) -> None:
    """Compare INT8 with FP32 on the held-out images; failed checks go to ``report.checks``.

    The CPU it ran on is recorded: ONNX Runtime's integer kernels give other numbers on CPUs of
    another INT8 class (:mod:`loda.cpu_isa`), so the numbers hold for that class."""
    from loda.cpu_isa import current_isa

    vimages = _load_crops(held, cfg, verify_source)
    log.info(f"comparing INT8 with FP32 on {vimages.n_crops} crops of {len(held)} held-out images")
    numbers = compare_int8(str(fp32_path), int8_bytes, vimages, [i.mos for i in held])
    report.verify_source = verify_source
    for key in ("n_images", "n_crops", "spearman", "max_abs", "mean_abs", "n_nonfinite"):
        setattr(report, key, numbers[key])
    report.worst_image = numbers["worst_image"]
    report.srcc_int8, report.srcc_fp32 = numbers["srcc_int8"], numbers["srcc_fp32"]
    report.n_mos = numbers["n_mos"]
    isa = current_isa()
    report.verified_on = {**isa.to_dict(), "onnxruntime_exact_u8u8": isa.saturating}
    report.checks += spearman_problems(report.n_nonfinite, report.spearman, report.min_spearman)


def _settings(spec: Any, method: str, extra: dict[str, Any], fused: dict[str, int]) -> dict:
    from loda.artifacts import tool_versions

    return {
        "quant_format": "QDQ",
        "op_types_to_quantize": list(QUANTIZED_OP_TYPES),
        "per_channel": True,
        "reduce_range": spec.reduce_range,
        "activation_type": spec.activation_type,
        "weight_type": spec.weight_type,
        "calibrate_method": METHODS[method],
        "extra_options": {k: v for k, v in extra.items() if k != "CalibStridedMinMax"},
        "onnxruntime_gelu_fusion": fused if spec.ort_gelu_fusion else None,
        "onnxruntime": tool_versions().get("onnxruntime", "?"),
    }


@dataclass(frozen=True)
class _Images:
    """The calibration and held-out verification images of one run (:func:`select_images`)."""

    calib_source: str
    calib: list[CalibrationImage]
    verify_source: str
    held: list[CalibrationImage]


def _select(
    images: str | os.PathLike | None,
    dataset: Any,
    verify_images: str | os.PathLike | None,
    n_calib: int,
    n_verify: int,
    verify: bool,
    output_path: Path,
) -> _Images:
    """Images first: with none there is nothing to do (and never random data instead)."""
    chosen = _Images(
        *select_images(
            images,
            dataset=dataset,
            verify_images=verify_images,
            n_calib=n_calib,
            n_verify=n_verify,
            verify=verify,
        )
    )
    check_not_an_input(
        output_path, [i.source for i in (*chosen.calib, *chosen.held)], "an image it reads"
    )
    return chosen


def _calibrate(
    onnx_path: Path,
    graph: _PreparedGraph,
    images: _Images,
    cfg: PreprocessConfig,
    spec: Int8Target,
    method: str,
) -> tuple[onnx.ModelProto, CropReader, dict[str, Any], float]:
    """Run ``quantize_static`` on the calibration images' crops; (graph, reader, options, s)."""
    from loda.artifacts import INPUT_NAME

    reader = CropReader(images.calib, cfg, INPUT_NAME)
    extra = {**spec.extra_options, "CalibStridedMinMax": 1}  # one image per call: bounded memory
    if method == "percentile":
        extra.setdefault("CalibPercentile", 99.999)
    kept = ", ".join(f"{len(v)} {k}" for k, v in graph.kept_float.items())
    log.info(
        f"quantizing {onnx_path} for {spec.name} ({method} calibration on {len(images.calib)} images "
        f"of {images.calib_source}; kept float: {kept})"
    )
    if graph.fused:
        log.info(
            "fused for ONNX Runtime: " + ", ".join(f"{n} {op}" for op, n in graph.fused.items())
        )
    t0 = time.perf_counter()
    quantized = _quantize(graph, reader, spec, method, extra)
    return quantized, reader, extra, time.perf_counter() - t0


def _new_report(
    quantized: onnx.ModelProto,
    graph: _PreparedGraph,
    reader: CropReader,
    extra: dict[str, Any],
    images: _Images,
    source_sha256: str,
    **fields: Any,
) -> Int8Report:
    """The report of a quantized graph, before verification (``fields``: method, target, ...)."""
    share, n_int8 = int8_gemm_share(quantized, graph.flops)
    report = Int8Report(
        calib_source=images.calib_source,
        calib_images=reader.n_done,
        calib_crops=reader.n_crops,
        int8_share=share,
        n_int8_gemms=n_int8,
        kept_float={k: len(v) for k, v in graph.kept_float.items()},
        settings=_settings(TARGETS[fields["target"]], fields["method"], extra, graph.fused),
        n_qdq=sum(
            n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in quantized.graph.node
        ),
        source_sha256=source_sha256,
        calib_names=tuple(i.name for i in images.calib),
        verify_names=tuple(i.name for i in images.held),
        **fields,
    )
    if n_int8 == 0:
        report.checks.append("no Conv/MatMul/Gemm was quantized")
    return report


def _stamp_and_save(
    report: Int8Report,
    quantized: onnx.ModelProto,
    source: onnx.ModelProto,
    metadata: dict[str, str],
    output_path: Path,
) -> None:
    """Raise with the report when a check failed; else stamp the ``loda.int8`` record and write
    the file (atomically)."""
    from loda.artifacts import stamp_precision

    if report.checks:
        raise Int8Error("INT8 model failed: " + "; ".join(report.checks), report)
    stamp_precision(quantized, source, metadata, "int8", report.to_dict())
    output_path.parent.mkdir(parents=True, exist_ok=True)
    report.size_bytes = write_bytes_atomic(output_path, quantized.SerializeToString())
    report.path = output_path


def quantize_onnx_int8(
    onnx_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    dataset: Any = None,
    method: str = "minmax",
    target: str = "tensorrt",
    calib_images: int = DEFAULT_CALIB_IMAGES,
    verify: bool = True,
    verify_images: str | os.PathLike | None = None,
    n_verify: int = DEFAULT_VERIFY_IMAGES,
    min_spearman: float = MIN_SPEARMAN,
) -> Int8Report:
    """Quantize the FP32 LoDa graph at ``onnx_path`` to INT8 Q/DQ and write ``output_path``.

    Calibration images come from ``images`` (folder, archive, image) or ``dataset``; held-out
    verification images from ``verify_images`` or the rest of the same source (see
    :func:`select_images`). The steps: select images -> prepare the graph -> quantize -> check
    -> verify -> stamp metadata -> save. The file is written only when every check passes;
    failures raise :class:`Int8Error` (with the report as ``.report`` once there is one).
    Progress goes to the ``loda.calib.int8`` logger.
    """
    from loda.artifacts import sha256_file
    from loda.metadata import CheckpointMeta

    start = time.perf_counter()
    onnx_path, output_path = Path(onnx_path), Path(output_path)
    _ort_quantization()
    _check_arguments(onnx_path, output_path, method, target, verify, n_verify)
    chosen = _select(images, dataset, verify_images, calib_images, n_verify, verify, output_path)
    model, metadata = _read_fp32_model(onnx_path)
    cfg = CheckpointMeta.from_json(metadata["loda"]).preprocess
    graph = _prepare_graph(model, TARGETS[target])
    quantized, reader, extra, calib_seconds = _calibrate(
        onnx_path, graph, chosen, cfg, TARGETS[target], method
    )
    int8_bytes = _check_int8_graph(quantized, cfg.crop_size)
    report = _new_report(
        quantized, graph, reader, extra, chosen, sha256_file(onnx_path),
        method=method, target=target, calib_seconds=calib_seconds, min_spearman=min_spearman,
    )  # fmt: skip
    if verify and not report.checks:
        _verify(report, onnx_path, int8_bytes, chosen.held, cfg, chosen.verify_source)
    report.seconds = time.perf_counter() - start
    _stamp_and_save(report, quantized, model, metadata, output_path)
    report.seconds = time.perf_counter() - start
    return report
