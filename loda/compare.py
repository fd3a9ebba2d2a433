"""Compare a candidate's scores with a reference's: one comparator for every parity check.

In the spirit of Polygraphy's comparator, running and judging are apart: callers run the two
models on the same crops (PyTorch, ONNX Runtime, TensorRT, FP16 or INT8 graphs...), then

- :func:`compare_scores` turns the two sets of crop scores into one :class:`ScoreStats`: |d| per
  crop and per image, Spearman over crops and over images, the worst image and, with MOS, SRCC
  (and PLCC/KRCC after the logistic mapping, when asked) of both and their differences;
- :func:`judge` holds the stats against a :class:`Tolerance` and gives a :class:`Comparison`
  (the verdict, what failed, the smallest tolerance that would have passed, a one-line summary
  and a table row);
- :class:`ParityError` is raised by the callers whose check must stop the run.

An image's score is the mean of its crop scores (in float64), as the runtime computes it.
Differences with a NaN/inf on either side count as infinite; means of |d| are taken over the
finite ones. Only numpy is needed (scipy only for the logistic PLCC/KRCC), so the GPU check,
which runs where scipy is missing, imports this module from the source tree.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import LodaError, first_line
from .metrics import MetricError, spearman, srcc

__all__ = [
    "Bound",
    "Comparison",
    "ParityError",
    "ScoreStats",
    "Tolerance",
    "compare_scores",
    "image_bounds",
    "judge",
    "mos_metrics",
    "nonfinite_problem",
    "spread_indices",
]


class ParityError(LodaError):
    """Scores differ from the reference's beyond the tolerance (``report``: what was measured)."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


def spread_indices(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them if fewer)."""
    if n >= n_total:
        return list(range(n_total))
    return sorted({round(float(i)) for i in np.linspace(0, n_total - 1, n)})


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def image_bounds(n_crops: int, crops_per_image: int | Sequence[int]) -> np.ndarray:
    """Crop index bounds of the images: image ``i`` owns crops ``b[i]:b[i + 1]``.

    An int is the same count for every image (a trailing partial image is left out of the
    per-image figures); a sequence gives each image's count and must add up to ``n_crops``.
    """
    if isinstance(crops_per_image, (int, np.integer)):
        k = int(crops_per_image)
        if k < 1:
            raise ValueError(f"crops per image must be >= 1, got {k}")
        return np.arange(0, (n_crops // k) * k + 1, k)
    counts = np.asarray(crops_per_image, dtype=np.int64)
    if counts.ndim != 1 or (counts < 1).any() or int(counts.sum()) != n_crops:
        raise ValueError(f"crop counts per image must be >= 1 and add up to {n_crops} crops")
    return np.concatenate([[0], np.cumsum(counts)])


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ok = np.isfinite(a) & np.isfinite(b)
    return np.where(ok, np.abs(np.where(ok, a, 0.0) - np.where(ok, b, 0.0)), np.inf)


def _finite_mean(d: np.ndarray) -> float:
    finite = d[np.isfinite(d)]
    return float(finite.mean()) if finite.size else math.inf


def mos_metrics(
    scores: Any, mos: Any, *, logistic: bool = False
) -> tuple[dict[str, float], list[str]]:
    """SRCC vs MOS (with ``logistic``: also PLCC after the 4-parameter logistic, and KRCC).

    Returns the figures and the first lines of any warnings (a logistic fit that fell back to a
    line). Raises :class:`loda.metrics.MetricError` where they are undefined.
    """
    if not logistic:
        return {"srcc": srcc(scores, mos)}, []
    from .metrics import evaluate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = evaluate(scores, mos)
    return {k: float(m[k]) for k in ("srcc", "plcc", "krcc")}, [
        str(w.message).splitlines()[0] for w in caught
    ]


@dataclass(frozen=True)
class ScoreStats:
    """What :func:`compare_scores` measured; ``None``: undefined or not asked for."""

    n_images: int
    n_crops: int
    nonfinite_candidate: int
    nonfinite_reference: int
    max_abs_crop: float
    mean_abs_crop: float
    p99_abs_crop: float
    max_abs_image: float
    mean_abs_image: float
    p99_abs_image: float
    worst_image: str  # the image with the largest crop |d|
    worst_image_max: float
    spearman_crops: float | None
    spearman_images: float | None
    candidate_images: np.ndarray = field(repr=False)
    reference_images: np.ndarray = field(repr=False)
    n_mos: int = 0
    srcc: float | None = None
    srcc_reference: float | None = None
    plcc: float | None = None
    plcc_reference: float | None = None
    krcc: float | None = None
    krcc_reference: float | None = None
    mos_error: str | None = None  # why the figures vs MOS are missing
    mos_warnings: tuple[str, ...] = ()

    @property
    def n_nonfinite(self) -> int:
        return self.nonfinite_candidate + self.nonfinite_reference

    @property
    def dsrcc(self) -> float | None:
        if self.srcc is None or self.srcc_reference is None:
            return None
        return self.srcc - self.srcc_reference

    @property
    def dplcc(self) -> float | None:
        if self.plcc is None or self.plcc_reference is None:
            return None
        return self.plcc - self.plcc_reference


def compare_scores(
    candidate: Any,
    reference: Any,
    *,
    crops_per_image: int | Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    mos: Any = None,
    logistic: bool = False,
) -> ScoreStats:
    """Compare a candidate's crop scores with the reference's, per crop and per image.

    ``candidate`` / ``reference``: crop scores, flat (then ``crops_per_image`` groups them,
    see :func:`image_bounds`) or ``[n_images, crops]``. ``names``: the images' names (for the
    worst image; default their indices). ``mos``: one value per image; SRCC of both sides vs
    MOS, and with ``logistic`` PLCC/KRCC too (:func:`mos_metrics`); figures that are undefined
    (too few images, NaN, constant scores) stay ``None`` with the reason in ``mos_error``.
    """
    cand = np.asarray(candidate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if cand.shape != ref.shape:
        raise ValueError(f"candidate has {cand.shape} scores, the reference {ref.shape}")
    if cand.ndim == 2 and crops_per_image is None:
        crops_per_image = cand.shape[1]
    cand, ref = cand.reshape(-1), ref.reshape(-1)
    bounds = image_bounds(cand.size, cand.size if crops_per_image is None else crops_per_image)
    n_images = len(bounds) - 1
    if names is not None and len(names) != n_images:
        raise ValueError(f"{len(names)} names for {n_images} images")

    groups = list(itertools.pairwise(int(b) for b in bounds))
    d_crop = _abs_diff(cand, ref)
    cand_img = np.array([cand[a:b].mean() for a, b in groups])
    ref_img = np.array([ref[a:b].mean() for a, b in groups])
    d_img = _abs_diff(cand_img, ref_img)
    label = list(names) if names is not None else [str(i) for i in range(n_images)]
    worst = max(
        ((float(d_crop[a:b].max()), label[i]) for i, (a, b) in enumerate(groups)),
        default=(math.nan, ""),
    )
    empty = d_crop.size == 0
    figures: dict[str, Any] = {}
    if mos is not None:
        figures = _mos_figures(cand_img, ref_img, mos, logistic)
    with np.errstate(invalid="ignore"):  # a percentile between two infs is NaN
        p99_crop = math.nan if empty else float(np.percentile(d_crop, 99))
        p99_img = float(np.percentile(d_img, 99)) if n_images else math.nan
    return ScoreStats(
        n_images=n_images,
        n_crops=int(cand.size),
        nonfinite_candidate=int((~np.isfinite(cand)).sum()),
        nonfinite_reference=int((~np.isfinite(ref)).sum()),
        max_abs_crop=math.nan if empty else float(d_crop.max()),
        mean_abs_crop=_finite_mean(d_crop),
        p99_abs_crop=p99_crop,
        max_abs_image=float(d_img.max()) if n_images else math.nan,
        mean_abs_image=_finite_mean(d_img),
        p99_abs_image=p99_img,
        worst_image=worst[1],
        worst_image_max=worst[0],
        spearman_crops=spearman(cand, ref),
        spearman_images=spearman(cand_img, ref_img),
        candidate_images=cand_img,
        reference_images=ref_img,
        **figures,
    )


def _mos_figures(cand: np.ndarray, ref: np.ndarray, mos: Any, logistic: bool) -> dict[str, Any]:
    mos = np.asarray(mos, dtype=np.float64).reshape(-1)
    if mos.size != cand.size:
        raise ValueError(f"{mos.size} MOS values for {cand.size} images")
    out: dict[str, Any] = {"n_mos": int(mos.size)}
    try:
        ref_m, _ = mos_metrics(ref, mos, logistic=logistic)
        cand_m, out["mos_warnings"] = mos_metrics(cand, mos, logistic=logistic)
    except MetricError as exc:
        out["mos_error"] = first_line(exc)
        return out
    out["mos_warnings"] = tuple(out["mos_warnings"])
    for key, value in cand_m.items():
        out[key], out[f"{key}_reference"] = value, ref_m[key]
    return out


# --------------------------------------------------------------------------------------------
# Tolerances and the verdict
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """``value <= limit`` (``inclusive``) or ``value < limit``; ``at_least``: ``>=`` / ``>``."""

    limit: float
    inclusive: bool = True
    at_least: bool = False

    @property
    def op(self) -> str:
        return (">" if self.at_least else "<") + ("=" if self.inclusive else "")

    def ok(self, value: float) -> bool:
        if self.at_least:
            return value >= self.limit if self.inclusive else value > self.limit
        return value <= self.limit if self.inclusive else value < self.limit

    def problem(self, label: str, value: float) -> str:
        if self.at_least:
            return f"{label} {value:.5f} < {self.limit}"
        return f"{label} {value:.3g} not {self}"

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "limit": self.limit}


#: Tolerance field -> (label, the ScoreStats figure it bounds).
CHECKS: dict[str, tuple[str, Any]] = {
    "max_abs_dscore": ("max|d|", lambda s: s.max_abs_image),
    "max_abs_dscore_crop": ("max|d| crops", lambda s: s.max_abs_crop),
    "abs_dsrcc": ("|dSRCC|", lambda s: None if s.dsrcc is None else abs(s.dsrcc)),
    "spearman": ("Spearman", lambda s: s.spearman_images),
    "spearman_crops": ("Spearman crops", lambda s: s.spearman_crops),
}


@dataclass(frozen=True)
class Tolerance:
    """What a candidate must meet; ``None``: not checked. |d| per image unless said otherwise."""

    precision: str
    max_abs_dscore: Bound | None = None
    abs_dsrcc: Bound | None = None
    max_abs_dscore_crop: Bound | None = None
    spearman: Bound | None = None  # over images
    spearman_crops: Bound | None = None

    def bounds(self) -> dict[str, Bound]:
        return {k: b for k in CHECKS if (b := getattr(self, k)) is not None}

    def describe(self) -> str:
        return ", ".join(f"{CHECKS[k][0]} {b}" for k, b in self.bounds().items())

    def to_dict(self) -> dict[str, Any]:
        return {k: None if (b := getattr(self, k)) is None else b.to_dict() for k in CHECKS}


@dataclass(frozen=True)
class Comparison:
    """The one parity report: the stats, the tolerance, and what failed."""

    stats: ScoreStats
    tolerance: Tolerance | None
    problems: tuple[str, ...]
    needed: dict[str, float]  # check -> the observed value, the smallest passing limit
    undefined: tuple[str, ...] = ()  # checks whose figure is undefined (they fail)

    @property
    def passed(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: sizes, figures, verdict."""
        s = self.stats
        parts = [f"{s.n_images} images / {s.n_crops} crops", f"max|d| {s.max_abs_image:.2e}"]
        if s.spearman_images is not None:
            parts.append(f"Spearman {s.spearman_images:.5f}")
        if s.dsrcc is not None:
            parts.append(f"dSRCC {s.dsrcc:+.5f}")
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.problems)
        return ", ".join(parts) + f": {verdict}"

    def row(self) -> dict[str, Any]:
        """The figures and the verdict as one flat JSON-ready table row (non-finite -> None)."""
        s = self.stats
        values = {
            "n_images": s.n_images,
            "n_crops": s.n_crops,
            "n_nonfinite": s.n_nonfinite,
            "max_abs_dscore": s.max_abs_image,
            "mean_abs_dscore": s.mean_abs_image,
            "max_abs_dscore_crop": s.max_abs_crop,
            "mean_abs_dscore_crop": s.mean_abs_crop,
            "spearman": s.spearman_images,
            "spearman_crops": s.spearman_crops,
            "srcc": s.srcc,
            "srcc_reference": s.srcc_reference,
            "dsrcc": s.dsrcc,
            "dplcc": s.dplcc,
            "passed": self.passed,
            "problems": list(self.problems),
        }
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in values.items()
        }


def nonfinite_problem(n: int) -> str:
    """The one wording of the first failure of all: scores that are NaN or inf."""
    return f"{n} non-finite (inf/NaN) crop score(s)"


def judge(stats: ScoreStats, tolerance: Tolerance) -> Comparison:
    """Hold ``stats`` against ``tolerance``. Non-finite scores fail before anything else; a
    bounded figure that is undefined fails too."""
    if stats.n_nonfinite:
        return Comparison(stats, tolerance, (nonfinite_problem(stats.n_nonfinite),), {})
    problems: list[str] = []
    needed: dict[str, float] = {}
    undefined: list[str] = []
    for key, bound in tolerance.bounds().items():
        label, get = CHECKS[key]
        value = get(stats)
        if value is None or math.isnan(value):
            undefined.append(key)
            problems.append(f"{label} undefined")
            continue
        needed[key] = value
        if not bound.ok(value):
            problems.append(bound.problem(label, value))
    return Comparison(stats, tolerance, tuple(problems), needed, tuple(undefined))
