"""Parity of exported artifacts with the PyTorch FP32 reference (``loda-parity``).

Every image is preprocessed once (the checkpoint's :class:`~loda.preprocess.PreprocessConfig`,
grid layout, 15 crops by default) and the same uint8 crops go to the reference (the checkpoint
in PyTorch FP32, :func:`loda.inference.score_crops`, TF32 off) and to every artifact through the
torch-free runtime (:func:`loda.runtime.scorer.open_backend`: ``.onnx`` -> ONNX Runtime,
``.engine`` -> TensorRT, ``.safetensors`` -> PyTorch). An image's score is the mean of its crop
scores.

Running is separate from judging, as in Polygraphy: :func:`run_parity` produces one
:class:`BackendRun` per artifact (crop scores and inference time, or why it could not run), and
:func:`compare` judges a run against the reference with the :data:`TOLERANCES` of its precision,
giving a :class:`ParityRow` that also records the smallest tolerance that would have passed (the
observed max |dscore| and |dSRCC|). :class:`ParityReport` formats the rows as an aligned table,
Markdown, JSON or CSV.

Definitions (all on per-image scores unless said otherwise):

- SRCC / PLCC / KRCC: against the MOS (:func:`loda.metrics.evaluate`; PLCC after the
  4-parameter logistic);
- dSRCC / dPLCC: the artifact's SRCC / PLCC minus the reference's;
- max / mean / p99 |dscore|: absolute differences of image scores to the reference's (the
  per-crop maximum is kept in the JSON as ``max_abs_dscore_crop``);
- images/s: images divided by the time spent in inference alone (decoding and cropping
  excluded), after one untimed warm-up batch.

Statuses: ``REF`` (the reference row), ``PASS``, ``FAIL`` (outside the tolerance, or the artifact
is missing, corrupt, from another model / preprocessing, or fails while running) and ``SKIP``
(its backend is unavailable here, e.g. no TensorRT; not a failure).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .compare import (
    Bound,
    ParityError,
    Tolerance,
    compare_scores,
    judge,
    mos_metrics,
    nonfinite_problem,
)
from .compare import spread_indices as spread_indices
from .data.datasets import Dataset, DatasetError, Sample
from .errors import LodaError, first_line, one_line
from .metadata import CheckpointMeta

__all__ = [
    "FORMATS",
    "MIN_IMAGES",
    "TOLERANCES",
    "BackendRun",
    "Bound",
    "ParityFailed",
    "ParityReport",
    "ParityRow",
    "Tolerance",
    "compare",
    "metadata_mismatch",
    "reference_row",
    "run_parity",
    "select_samples",
    "spread_indices",
    "tolerance_for",
]

log = logging.getLogger(__name__)

#: Fewest images accepted: SRCC/PLCC need 4 (pred, MOS) pairs (see :mod:`loda.metrics`).
MIN_IMAGES = 4
FORMATS = ("table", "markdown", "json", "csv")
DEFAULT_BATCH_CROPS = 60  # four 15-crop images per backend call, as the runtime


#: At least one artifact failed its parity check (raised after the report was printed).
ParityFailed = ParityError

# --------------------------------------------------------------------------------------------
# Tolerances: one table, per precision (Bound and Tolerance live in loda.compare)
# --------------------------------------------------------------------------------------------

#: The parity tolerances (|dscore| on per-image scores; dSRCC against the reference's SRCC).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance("fp32", max_abs_dscore=Bound(1e-4), abs_dsrcc=Bound(5e-4, inclusive=False)),
    "fp16": Tolerance("fp16", abs_dsrcc=Bound(2e-3)),
    "int8": Tolerance("int8", abs_dsrcc=Bound(1e-2)),
}


def tolerance_for(
    precision: str, tolerances: dict[str, Tolerance] = TOLERANCES
) -> Tolerance | None:
    """The tolerance of a backend's precision label (``fp16-autocast`` is judged as fp16)."""
    return tolerances.get(precision.removesuffix("-autocast"))


# --------------------------------------------------------------------------------------------
# Which images
# --------------------------------------------------------------------------------------------


def _check_enough(n_images: int) -> None:
    if n_images < MIN_IMAGES:
        raise DatasetError(
            f"parity needs at least {MIN_IMAGES} images with MOS (SRCC/PLCC), got {n_images}"
        )


def select_samples(
    dataset: Dataset,
    *,
    splits: Any | None = None,
    split_index: int = 0,
    subset: str = "all",
    limit: int | None = None,
) -> tuple[tuple[Sample, ...], str]:
    """The images to compare on, and a description of the choice.

    ``splits`` (a :class:`loda.data.splits.Splits`) with ``subset`` ``"test"`` or ``"train"`` picks
    that side of split ``split_index``; ``limit`` keeps that many, spread evenly.
    """
    chosen: tuple[Sample, ...] = tuple(dataset.samples)
    what = "all images"
    if subset not in ("all", "train", "test"):
        raise DatasetError(f"subset must be all, train or test, got {subset!r}")
    if subset != "all":
        if splits is None:
            raise DatasetError(f"--subset {subset} needs a split file")
        train, test = splits.select(dataset, split_index)
        chosen = test if subset == "test" else train
        what = f"{subset} images of split {split_index}"
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"limit must be >= 1, got {limit}")
        if limit < len(chosen):
            chosen = tuple(chosen[i] for i in spread_indices(len(chosen), limit))
            what += f", {len(chosen)} spread evenly"
    _check_enough(len(chosen))
    return chosen, what


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class BackendRun:
    """One artifact run on the shared crops, or why it did not run (``status`` set)."""

    artifact: str
    backend: str
    precision: str = "-"
    device: str = "-"
    size_mb: float | None = None
    crop_scores: np.ndarray | None = None  # float64 [n_images, crops]
    seconds: float | None = None  # inference only, after warm-up
    status: str | None = None  # None: ran; "SKIP" / "FAIL": did not run
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def images_per_s(self) -> float | None:
        if self.crop_scores is None or not self.seconds:
            return None
        return len(self.crop_scores) / self.seconds


def _size_mb(path: Path) -> float | None:
    try:
        return path.stat().st_size / 1e6 if path.is_file() else None
    except OSError:
        return None


def _describe_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = [f"{k} {a.get(k)!r} != {b.get(k)!r}" for k in keys[:3]]
    return "; ".join(shown) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def metadata_mismatch(artifact: CheckpointMeta, checkpoint: CheckpointMeta) -> str | None:
    """Why an artifact's LoDa record does not belong to the checkpoint, or ``None``."""
    if artifact.model != checkpoint.model:
        diff = _describe_diff(artifact.model.to_dict(), checkpoint.model.to_dict())
        return f"artifact was exported from another model ({diff}; artifact != checkpoint)"
    if artifact.preprocess != checkpoint.preprocess:
        diff = _describe_diff(artifact.preprocess.to_dict(), checkpoint.preprocess.to_dict())
        return f"artifact's preprocessing differs from the checkpoint's ({diff})"
    return None


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """The reference is strict FP32 on CUDA too (torch allows TF32 convolutions by default)."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _Timed:
    """Runs ``infer`` per batch: the first batch once untimed (warm-up), then timed."""

    def __init__(self, run: BackendRun, infer: Callable[[np.ndarray], np.ndarray]) -> None:
        self.run = run
        self.infer = infer
        self.warm = False
        self.seconds = 0.0
        self.parts: list[np.ndarray] = []

    def __call__(self, crops: np.ndarray) -> None:
        if not self.warm:
            self.infer(crops)
            self.warm = True
        start = time.perf_counter()
        scores = np.asarray(self.infer(crops), dtype=np.float64).reshape(-1)
        self.seconds += time.perf_counter() - start
        if scores.shape != (len(crops),):
            raise LodaError(f"{self.run.backend} returned {scores.size} scores for {len(crops)}")
        self.parts.append(scores)

    def finish(self, n_images: int) -> None:
        scores = np.concatenate(self.parts) if self.parts else np.zeros(0)
        self.run.crop_scores = scores.reshape(n_images, -1)
        self.run.seconds = self.seconds


def _built_not_run(run: BackendRun, path: Path) -> None:
    """An engine that cannot run here (e.g. a TensorRT-RTX plan built without a GPU) was still
    built: its row says so, with the flavor and precision its sidecar records."""
    from loda.trt_common import TrtError, read_sidecar

    if run.backend != "tensorrt":
        return
    with contextlib.suppress(TrtError):
        side = read_sidecar(path)
        if side:
            run.backend = "tensorrt-rtx" if side.get("flavor") == "rtx" else "tensorrt"
            run.precision = str(side.get("precision", run.precision))
            run.reason = f"built, not run: {run.reason}"


def _open_artifact(path: Path, meta: CheckpointMeta, device: str) -> tuple[BackendRun, Any | None]:
    from loda.runtime.backend import BackendError, BackendUnavailable
    from loda.runtime.scorer import backend_for_path, open_backend

    run = BackendRun(artifact=str(path), backend="?", size_mb=_size_mb(path))
    with contextlib.suppress(BackendError):
        run.backend = backend_for_path(path)
    try:
        backend = open_backend(path, device=device)
    except BackendUnavailable as exc:
        run.status, run.reason = "SKIP", first_line(exc)
        _built_not_run(run, path)
        return run, None
    except (LodaError, OSError) as exc:
        run.status, run.reason = "FAIL", first_line(exc)
        return run, None
    info = backend.info
    run.backend, run.precision, run.device = backend.name, info.precision, info.device
    run.details = dict(info.details)
    mismatch = metadata_mismatch(info.meta, meta)
    if mismatch:
        backend.close()
        run.status, run.reason = "FAIL", mismatch
        return run, None
    return run, backend


def _reference_device(device: str) -> str:
    """The torch device of the reference for ``auto`` / ``cpu`` / ``cuda``."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise LodaError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LodaError("--device cuda: torch sees no CUDA GPU here")
    return device


def _open_artifacts(
    artifacts: Sequence[str | os.PathLike], meta: CheckpointMeta, device: str
) -> tuple[list[BackendRun], list[tuple[_Timed, Any]]]:
    """A run per artifact, and the timed backends of those that opened (to be closed)."""
    runs: list[BackendRun] = []
    opened: list[tuple[_Timed, Any]] = []
    try:
        for path in artifacts:
            run, backend = _open_artifact(Path(path), meta, device)
            runs.append(run)
            if backend is not None:
                opened.append((_Timed(run, backend.infer), backend))
                log.info(
                    "opened %s: %s %s on %s", run.artifact, run.backend, run.precision, run.device
                )
            else:
                log.info("%s: %s (%s)", run.artifact, run.status, run.reason)
    except BaseException:
        for _, backend in opened:
            backend.close()
        raise
    return runs, opened


def _score_batch(crops: np.ndarray, ref: _Timed, opened: list[tuple[_Timed, Any]]) -> None:
    """One batch of crops through the reference and every artifact still running."""
    with _no_tf32():
        ref(crops)
    for timed, backend in opened:
        if timed.run.status is not None:
            continue
        try:
            timed(crops)
        except Exception as exc:  # a corrupt artifact may fail in its runtime's code
            what = (
                first_line(exc)
                if isinstance(exc, LodaError)
                else one_line(exc, with_type=True, limit=300)
            )
            timed.run.status, timed.run.reason = "FAIL", f"inference failed: {what}"
            backend.close()


def _score_all(
    samples: Sequence[Sample],
    cfg: Any,
    ref: _Timed,
    opened: list[tuple[_Timed, Any]],
    batch_crops: int,
) -> None:
    """Every image through the reference and the artifacts, ``batch_crops`` crops at a time."""
    from .preprocess import preprocess_image

    per_batch = max(1, batch_crops // cfg.num_crops)
    n = len(samples)
    log.info(
        "scoring %d images x %d grid crops: reference torch fp32 on %s, %d artifact(s)",
        n,
        cfg.num_crops,
        ref.run.device,
        len(opened),
    )
    for start in range(0, n, per_batch):
        crops = np.concatenate(
            [preprocess_image(s.path, cfg) for s in samples[start : start + per_batch]]
        )
        _score_batch(crops, ref, opened)
    ref.finish(n)
    for timed, _ in opened:
        if timed.run.status is None:
            timed.finish(n)


def run_parity(
    checkpoint: str | os.PathLike,
    samples: Sequence[Sample],
    artifacts: Sequence[str | os.PathLike],
    *,
    device: str = "auto",
    num_crops: int | None = None,
    batch_crops: int = DEFAULT_BATCH_CROPS,
    data: str = "",
    tolerances: dict[str, Tolerance] = TOLERANCES,
) -> ParityReport:
    """Score ``samples`` with the checkpoint (reference) and each artifact; judge the artifacts.

    ``device``: ``auto`` / ``cpu`` / ``cuda`` for the reference and the backends that take one.
    ``num_crops``: grid crops per image (default: the checkpoint's, 15). Progress goes to this
    module's logger.
    """
    import torch

    from .checkpoint import load_checkpoint
    from .inference import score_crops

    _check_enough(len(samples))
    if batch_crops < 1:
        raise LodaError(f"batch size must be >= 1 crop, got {batch_crops}")
    ref_device = _reference_device(device)
    checkpoint = Path(checkpoint)
    model, meta = load_checkpoint(checkpoint, device=ref_device)
    cfg = dataclasses.replace(
        meta.preprocess, layout="grid", num_crops=num_crops or meta.preprocess.num_crops
    )
    reference = BackendRun(
        artifact=str(checkpoint),
        backend="torch",
        precision="fp32",
        device=ref_device,
        size_mb=_size_mb(checkpoint),
        details={"torch": torch.__version__, "tf32": False},
    )
    runs, opened = _open_artifacts(artifacts, meta, device)
    try:
        ref = _Timed(reference, lambda c: score_crops(model, c, cfg, batch_size=batch_crops))
        _score_all(samples, cfg, ref, opened, batch_crops)
    finally:
        for _, backend in opened:
            backend.close()

    mos = np.array([s.mos for s in samples], dtype=np.float64)
    ref_row = reference_row(reference, mos)
    rows = [ref_row, *(compare(ref_row, r, mos, tolerances) for r in runs)]
    return ParityReport(
        checkpoint=str(checkpoint),
        data=data,
        names=tuple(s.name for s in samples),
        mos=mos,
        num_crops=cfg.num_crops,
        rows=tuple(rows),
        tolerances=tolerances,
    )


# --------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------


@dataclass
class ParityRow:
    """One line of the report: a run, its metrics and differences, and the verdict."""

    artifact: str
    backend: str
    precision: str
    device: str
    status: str  # REF | PASS | FAIL | SKIP
    reason: str | None = None
    size_mb: float | None = None
    srcc: float | None = None
    plcc: float | None = None
    krcc: float | None = None
    dsrcc: float | None = None
    dplcc: float | None = None
    max_abs_dscore: float | None = None
    mean_abs_dscore: float | None = None
    p99_abs_dscore: float | None = None
    max_abs_dscore_crop: float | None = None
    images_per_s: float | None = None
    tolerance: Tolerance | None = None
    needed: dict[str, float] = field(default_factory=dict)
    image_scores: np.ndarray | None = None
    crop_scores: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def needed_text(self) -> str:
        """The smallest tolerance that would have passed, for the checks of its precision."""
        names = {"max_abs_dscore": "max|d|", "abs_dsrcc": "|dSRCC|"}
        return ", ".join(f"{names[k]} <= {v:.2g}" for k, v in self.needed.items())


def reference_row(run: BackendRun, mos: np.ndarray) -> ParityRow:
    """The reference's row: its metrics against the MOS (a MetricError here is the user's)."""
    assert run.crop_scores is not None
    scores = run.crop_scores.mean(axis=1)
    details = dict(run.details)
    metrics, caught = mos_metrics(scores, mos, logistic=True)
    if caught:  # a logistic fit that fell back to a line
        details["metric_warnings"] = caught
    return ParityRow(
        artifact=run.artifact,
        backend=run.backend,
        precision=run.precision,
        device=run.device,
        status="REF",
        reason="PyTorch fp32 reference",
        size_mb=run.size_mb,
        images_per_s=run.images_per_s(),
        image_scores=scores,
        crop_scores=run.crop_scores,
        details=details,
        **metrics,
    )


def compare(
    reference: ParityRow,
    run: BackendRun,
    mos: np.ndarray,
    tolerances: dict[str, Tolerance] = TOLERANCES,
) -> ParityRow:
    """Judge one run against the reference row with the tolerance of its precision."""
    row = ParityRow(
        artifact=run.artifact,
        backend=run.backend,
        precision=run.precision,
        device=run.device,
        status=run.status or "PASS",
        reason=run.reason,
        size_mb=run.size_mb,
        tolerance=None if run.status else tolerance_for(run.precision, tolerances),
        details=dict(run.details),
    )
    if run.status is not None or run.crop_scores is None:
        return row
    assert reference.crop_scores is not None and reference.image_scores is not None
    stats = compare_scores(run.crop_scores, reference.crop_scores, mos=mos, logistic=True)
    row.crop_scores, row.image_scores = run.crop_scores, stats.candidate_images
    row.images_per_s = run.images_per_s()
    if stats.nonfinite_candidate:
        row.status, row.reason = "FAIL", nonfinite_problem(stats.nonfinite_candidate)
        return row
    row.max_abs_dscore = stats.max_abs_image
    row.mean_abs_dscore = stats.mean_abs_image
    row.p99_abs_dscore = stats.p99_abs_image
    row.max_abs_dscore_crop = stats.max_abs_crop
    if stats.mos_warnings:
        row.details["metric_warnings"] = list(stats.mos_warnings)
    if stats.mos_error is not None:
        row.status, row.reason = "FAIL", f"metrics undefined: {stats.mos_error}"
        return row
    row.srcc, row.plcc, row.krcc = stats.srcc, stats.plcc, stats.krcc
    row.dsrcc, row.dplcc = stats.dsrcc, stats.dplcc

    tol = row.tolerance
    if tol is None:
        known = ", ".join(tolerances)
        row.status = "FAIL"
        row.reason = f"no tolerance for precision {run.precision!r} (known: {known})"
        return row
    verdict = judge(stats, tol)
    row.needed.update(verdict.needed)
    if not verdict.passed:
        row.status, row.reason = "FAIL", f"{tol.precision}: " + "; ".join(verdict.problems)
    return row


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

#: (JSON/CSV key, table heading, formatter)
_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("artifact", "artifact", str),
    ("backend", "backend", str),
    ("precision", "precision", str),
    ("device", "device", str),
    ("status", "status", str),
    ("size_mb", "size MB", lambda v: f"{v:.1f}"),
    ("srcc", "SRCC", lambda v: f"{v:.4f}"),
    ("plcc", "PLCC", lambda v: f"{v:.4f}"),
    ("krcc", "KRCC", lambda v: f"{v:.4f}"),
    ("dsrcc", "dSRCC", lambda v: _signed(v)),
    ("dplcc", "dPLCC", lambda v: _signed(v)),
    ("max_abs_dscore", "max|d|", lambda v: f"{v:.2e}"),
    ("mean_abs_dscore", "mean|d|", lambda v: f"{v:.2e}"),
    ("p99_abs_dscore", "p99|d|", lambda v: f"{v:.2e}"),
    ("images_per_s", "img/s", lambda v: f"{v:.1f}"),
)


@dataclass
class ParityReport:
    checkpoint: str
    data: str
    names: tuple[str, ...]
    mos: np.ndarray
    num_crops: int
    rows: tuple[ParityRow, ...]
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(TOLERANCES))

    @property
    def failed(self) -> list[ParityRow]:
        return [r for r in self.rows if r.failed]

    @property
    def passed(self) -> bool:
        return not self.failed

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in ("PASS", "FAIL", "SKIP")}

    def heading(self) -> str:
        data = f" of {self.data}" if self.data else ""
        return (
            f"parity vs PyTorch fp32 ({self.checkpoint}) on {len(self.names)} images{data}, "
            f"{self.num_crops} grid crops each; |d| = |dscore| on per-image scores"
        )

    def summary(self) -> str:
        c = self.counts()
        return f"{c['PASS']} PASS, {c['FAIL']} FAIL, {c['SKIP']} SKIP"

    # -- cells ---------------------------------------------------------------------------------

    def _cells(self, row: ParityRow) -> list[str]:
        cells = []
        for key, _, fmt in _COLUMNS:
            value = getattr(row, key)
            cells.append("-" if value is None else fmt(value))
        cells.append(row.needed_text() or "-")
        cells.append(row.reason or "")
        return cells

    def _headings(self) -> list[str]:
        return [h for _, h, _ in _COLUMNS] + ["needs (smallest passing tolerance)", "note"]

    def _tolerance_lines(self) -> list[list[str]]:
        return [
            [
                name,
                "-" if t.max_abs_dscore is None else str(t.max_abs_dscore),
                "-" if t.abs_dsrcc is None else str(t.abs_dsrcc),
            ]
            for name, t in self.tolerances.items()
        ]

    # -- formats -------------------------------------------------------------------------------

    def format(self, kind: str, *, per_image: bool = False) -> str:
        if kind == "table":
            return self.to_table()
        if kind == "markdown":
            return self.to_markdown()
        if kind == "json":
            return json.dumps(self.to_dict(per_image=per_image), indent=2)
        if kind == "csv":
            return self.to_csv()
        raise ValueError(f"unknown format {kind!r} (known: {', '.join(FORMATS)})")

    def to_table(self) -> str:
        lines = [self.heading(), ""]
        lines += _aligned([self._headings(), *(self._cells(r) for r in self.rows)])
        lines += ["", self.summary(), "", "tolerances (per precision; |d| on per-image scores)"]
        lines += _aligned([["precision", "max|d|", "|dSRCC|"], *self._tolerance_lines()])
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [self.heading(), ""]
        lines += _markdown([self._headings(), *(self._cells(r) for r in self.rows)])
        lines += [
            "",
            self.summary(),
            "",
            "Tolerances (per precision; |d| on per-image scores):",
            "",
        ]
        lines += _markdown([["precision", "max|d|", "|dSRCC|"], *self._tolerance_lines()])
        return "\n".join(lines)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        keys = [k for k, _, _ in _COLUMNS]
        writer.writerow([*keys, "max_abs_dscore_crop", "tolerance", "needed", "reason"])
        for r in self.rows:
            values = [getattr(r, k) for k in keys]
            writer.writerow(
                [
                    *("" if v is None else _csv_number(v) for v in values),
                    "" if r.max_abs_dscore_crop is None else repr(r.max_abs_dscore_crop),
                    "" if r.tolerance is None else r.tolerance.describe(),
                    r.needed_text(),
                    r.reason or "",
                ]
            )
        return out.getvalue().rstrip("\n")

    def to_dict(self, *, per_image: bool = False) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d: dict[str, Any] = {k: _json_value(getattr(r, k)) for k, _, _ in _COLUMNS}
            d.update(
                reason=r.reason,
                max_abs_dscore_crop=_json_value(r.max_abs_dscore_crop),
                tolerance=None if r.tolerance is None else r.tolerance.precision,
                needed={k: _json_value(v) for k, v in r.needed.items()},
                details=r.details,
            )
            if per_image:
                d["image_scores"] = (
                    None if r.image_scores is None else [float(v) for v in r.image_scores]
                )
            rows.append(d)
        doc: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "data": self.data,
            "n_images": len(self.names),
            "crops_per_image": self.num_crops,
            "layout": "grid",
            "dscore_on": "per-image scores (mean of crop scores)",
            "passed": self.passed,
            "counts": self.counts(),
            "rows": rows,
            "tolerances": {k: t.to_dict() for k, t in self.tolerances.items()},
        }
        if per_image:
            doc["images"] = [
                {"name": n, "mos": float(m)} for n, m in zip(self.names, self.mos, strict=True)
            ]
        return doc


def _signed(value: float) -> str:
    return f"{round(value, 5) + 0.0:+.5f}"  # + 0.0: no "-0.00000"


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _csv_number(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown(rows: list[list[str]]) -> list[str]:
    head, *body = rows
    lines = ["| " + " | ".join(_md_escape(c) for c in head) + " |"]
    lines.append("|" + "|".join("---" for _ in head) + "|")
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in body]
    return lines
