"""Image-quality-assessment metrics as used by LoDa (CVPR 2024) and the NR-IQA literature.

All metrics compare model predictions ``pred`` with mean opinion scores ``mos`` (one value
per image) and need only numpy and scipy, so they can run in the torch-free runtime.

SRCC (Spearman rank-order correlation)
    Pearson correlation of the *ranks* of ``pred`` and ``mos``. Tied values get the average
    of the ranks they span (:func:`average_ranks`, numpy only, so the scipy-free GPU check
    runs the same code), which is exactly what ``scipy.stats.spearmanr`` computes. The
    paper's eq. 6, ``1 - 6 * sum(d_t**2) / (T * (T**2 - 1))`` (its ``d_t`` should be squared), is the
    shortcut that holds only when there are no ties; MOS values in IQA datasets are often
    tied, so we always use the average-rank definition.

KRCC (Kendall rank-order correlation)
    Kendall's tau-b, which corrects for ties (``scipy.stats.kendalltau``).

PLCC (Pearson linear correlation) and RMSE
    Following VQEG practice (the paper's eq. 8), predictions are first mapped onto the MOS
    scale by the 4-parameter logistic

        y' = (b1 - b2) / (1 + exp(-(y - b3) / |b4|)) + b2

    fitted by least squares (scipy ``curve_fit``, trust-region) on standardised predictions
    z = (y - mean) / std from the start values b1 = max(MOS), b2 = min(MOS), b3 = 0, b4 = 1
    (b3 and b4 are mapped back to the scale of y afterwards), with ``|b4| >= 0.05 std``
    (:data:`MIN_SLOPE_WIDTH`): without that floor a weak predictor's fit collapses into a
    step whose PLCC jumps with float noise, so an exported model and its PyTorch source got
    PLCCs 0.02-0.08 apart from scores 1e-7 apart. PLCC is the Pearson correlation between MOS and the mapped
    predictions and RMSE is the root-mean-square error between them. If the nonlinear fit
    fails, a straight line (``np.polyfit`` degree 1) is used instead and a
    ``RuntimeWarning`` says so; the linear PLCC equals the raw Pearson correlation.

Every function validates its inputs the same way (see :func:`check_pairs`) and raises
:class:`MetricError` (a ``ValueError``) with a one-line message for unusable data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "LogisticFit",
    "MetricError",
    "average_ranks",
    "check_pairs",
    "evaluate",
    "fit_logistic",
    "krcc",
    "logistic4",
    "plcc",
    "rmse",
    "spearman",
    "srcc",
]

MIN_PAIRS = 4
"""Fewest (pred, mos) pairs accepted: the logistic mapping has 4 parameters."""

DEFAULT_MAX_ITER = 10_000
"""Default bound on function evaluations (``maxfev``) for the logistic fit."""


class MetricError(ValueError):
    """Raised when predictions/MOS cannot be scored (bad shape, too few, NaN, constant)."""


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _as_vector(values: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricError(f"{name} cannot be converted to float numbers: {exc}") from None
    if arr.ndim != 1:
        # Accept column/row vectors such as (N, 1) or (1, N); reject anything else.
        if arr.ndim > 1 and sum(dim != 1 for dim in arr.shape) <= 1:
            arr = arr.reshape(-1)
        else:
            raise MetricError(f"{name} must be a 1-D sequence of scores, got shape {arr.shape}")
    return arr


def check_pairs(pred: Any, mos: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``pred`` and ``mos`` to equal-length 1-D float64 arrays.

    Raises :class:`MetricError` on a length mismatch, fewer than 4 pairs, any NaN/inf, or
    constant values (for which every correlation is undefined).
    """
    p = _as_vector(pred, "pred")
    m = _as_vector(mos, "mos")
    if p.size != m.size:
        raise MetricError(f"pred has {p.size} values but mos has {m.size}")
    if p.size < MIN_PAIRS:
        raise MetricError(
            f"metrics need at least {MIN_PAIRS} (pred, mos) pairs, got {p.size} "
            "(the logistic mapping has 4 parameters)"
        )
    for name, arr in (("pred", p), ("mos", m)):
        bad = ~np.isfinite(arr)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise MetricError(
                f"{name} contains {int(bad.sum())} non-finite value(s) (NaN/inf); "
                f"first at index {first} ({arr[first]})"
            )
    for name, arr in (("pred", p), ("mos", m)):
        if arr[0] == arr[-1] and np.all(arr == arr[0]):
            raise MetricError(
                f"{name} is constant (all {arr.size} values equal {arr[0]:g}); "
                "correlation is undefined"
            )
    return p, m


# --------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two finite vectors; 0.0 if either is constant."""
    xc = x - x.mean()
    yc = y - y.mean()
    denom = math.sqrt(float(np.dot(xc, xc)) * float(np.dot(yc, yc)))
    if denom == 0.0:
        return 0.0
    return float(min(1.0, max(-1.0, float(np.dot(xc, yc)) / denom)))


def average_ranks(values: Any) -> np.ndarray:
    """Ranks 1..n of a 1-D array; tied values share the average of the ranks they span."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(a, kind="mergesort")
    ordered = a[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], a.size]  # exclusive
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


#: Fewest pairs :func:`spearman` ranks: the rank correlation of 2 pairs is always +-1.
MIN_SPEARMAN_PAIRS = 3


def spearman(a: Any, b: Any) -> float | None:
    """Spearman's rho with average ranks for ties; None where it is undefined.

    Undefined: fewer than :data:`MIN_SPEARMAN_PAIRS` pairs, a NaN/inf, or a constant input.
    The one rank correlation of the project: :func:`srcc` is this after :func:`check_pairs`.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.size != y.size:
        raise MetricError(f"spearman: {x.size} values against {y.size}")
    if x.size < MIN_SPEARMAN_PAIRS or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    if np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return _pearson(average_ranks(x), average_ranks(y))


def srcc(pred: Any, mos: Any) -> float:
    """Spearman rank-order correlation, ties given average ranks (= ``scipy.stats.spearmanr``)."""
    p, m = check_pairs(pred, mos)
    rho = spearman(p, m)
    assert rho is not None  # check_pairs refused what leaves it undefined
    return rho


def krcc(pred: Any, mos: Any) -> float:
    """Kendall rank-order correlation, tau-b (= ``scipy.stats.kendalltau``)."""
    from scipy.stats import kendalltau

    p, m = check_pairs(pred, mos)
    return float(kendalltau(p, m).statistic)


# --------------------------------------------------------------------------------------
# logistic mapping
# --------------------------------------------------------------------------------------


def logistic4(x: Any, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic: ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    from scipy.special import expit

    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (b1 - b2) * expit((x - b3) / abs(b4)) + b2


@dataclass(frozen=True)
class LogisticFit:
    """A fitted mapping from raw predictions onto the MOS scale.

    ``kind == "logistic"``: ``params`` holds ``(b1, b2, b3, b4)`` for :func:`logistic4`
    (``b4`` stored as its absolute value) and ``coef`` is None.
    ``kind == "linear"``: ``coef`` holds ``(slope, intercept)`` and ``params`` is None.
    """

    params: tuple[float, float, float, float] | None
    kind: Literal["logistic", "linear"] = "logistic"
    coef: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind == "logistic":
            if self.params is None or len(self.params) != 4 or self.coef is not None:
                raise ValueError("a logistic fit needs 4 params and no linear coef")
            object.__setattr__(self, "params", tuple(float(v) for v in self.params))
        elif self.kind == "linear":
            if self.coef is None or len(self.coef) != 2 or self.params is not None:
                raise ValueError("a linear fit needs coef=(slope, intercept) and params=None")
            object.__setattr__(self, "coef", tuple(float(v) for v in self.coef))
        else:
            raise ValueError(f"kind must be 'logistic' or 'linear', got {self.kind!r}")

    def __call__(self, pred: Any) -> np.ndarray:
        """Map raw predictions (any shape) onto the MOS scale."""
        x = np.asarray(pred, dtype=np.float64)
        if self.kind == "logistic":
            assert self.params is not None
            return logistic4(x, *self.params)
        assert self.coef is not None
        slope, intercept = self.coef
        return slope * x + intercept

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly representation (plain floats and lists)."""
        return {
            "kind": self.kind,
            "params": None if self.params is None else list(self.params),
            "coef": None if self.coef is None else list(self.coef),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogisticFit:
        """Inverse of :meth:`to_dict`."""
        kind = data.get("kind")
        params = data.get("params")
        coef = data.get("coef")
        return cls(
            params=None if params is None else tuple(float(v) for v in params),
            kind=kind,
            coef=None if coef is None else tuple(float(v) for v in coef),
        )


def _linear_fit(p: np.ndarray, m: np.ndarray) -> LogisticFit:
    slope, intercept = np.polyfit(p, m, 1)
    return LogisticFit(params=None, kind="linear", coef=(float(slope), float(intercept)))


#: Smallest logistic width ``b4`` in units of the predictions' standard deviation.
MIN_SLOPE_WIDTH = 0.05


def curve_fit(*args: Any, **kwargs: Any) -> Any:
    """``scipy.optimize.curve_fit``, imported on first use."""
    from scipy.optimize import curve_fit as scipy_curve_fit

    return scipy_curve_fit(*args, **kwargs)


def _try_logistic(p: np.ndarray, m: np.ndarray, max_iter: int) -> tuple[LogisticFit | None, str]:
    from scipy.optimize import OptimizeWarning

    # Fit on standardised predictions (z = (p - mean) / std, start b3 = 0, b4 = 1), then map
    # b3, b4 back: the same model, but the start values fit any score scale. b4 >= 0.05 std
    # keeps the curve from collapsing into a step (a step's PLCC jumps with float noise, so an
    # ONNX export and PyTorch would get different PLCCs from near-identical scores).
    mu, sd = float(p.mean()), float(p.std())
    if not sd > 0.0:
        return None, "constant predictions"
    z = (p - mu) / sd
    p0 = [float(m.max()), float(m.min()), 0.0, 1.0]
    try:
        with warnings.catch_warnings():
            # "Covariance of the parameters could not be estimated" says nothing about the fit
            # itself (we never use the covariance); other optimiser warnings are failures.
            warnings.simplefilter("error", OptimizeWarning)
            warnings.filterwarnings("ignore", "Covariance of the parameters", OptimizeWarning)
            popt, _ = curve_fit(
                logistic4,
                z,
                m,
                p0=p0,
                bounds=([-np.inf, -np.inf, -np.inf, MIN_SLOPE_WIDTH], np.inf),
                max_nfev=max_iter,
            )
    except (RuntimeError, ValueError, OptimizeWarning, FloatingPointError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    popt = np.asarray(popt, dtype=np.float64)
    if not np.all(np.isfinite(popt)) or popt[3] == 0.0:
        return None, f"non-finite or degenerate parameters {popt.tolist()}"
    b1, b2, b3z, b4z = (float(v) for v in popt)
    fit = LogisticFit(params=(b1, b2, mu + sd * b3z, sd * abs(b4z)), kind="logistic")
    mapped = fit(p)
    if not np.all(np.isfinite(mapped)):
        return None, "non-finite mapped predictions"
    if np.all(mapped == mapped[0]):
        return None, "constant mapped predictions"
    return fit, ""


def fit_logistic(pred: Any, mos: Any, max_iter: int = DEFAULT_MAX_ITER) -> LogisticFit:
    """Fit the paper's eq. 8 logistic mapping ``pred -> mos`` by least squares.

    Uses the VQEG start values and at most ``max_iter`` function evaluations. If the fit
    fails, emits a ``RuntimeWarning`` and returns a linear (``np.polyfit`` degree 1) fit.
    """
    p, m = check_pairs(pred, mos)
    fit, reason = _try_logistic(p, m, int(max_iter))
    if fit is not None:
        return fit
    warnings.warn(
        f"logistic fit failed ({reason}); using a linear fit, so PLCC/RMSE are linear",
        RuntimeWarning,
        stacklevel=2,
    )
    return _linear_fit(p, m)


def _plcc_rmse(p: np.ndarray, m: np.ndarray, fit: LogisticFit) -> tuple[float, float]:
    mapped = fit(p)
    return _pearson(mapped, m), float(np.sqrt(np.mean((m - mapped) ** 2)))


def plcc(pred: Any, mos: Any, fit: bool = True) -> float:
    """Pearson correlation between MOS and logistic-mapped predictions (raw if ``fit=False``)."""
    p, m = check_pairs(pred, mos)
    if not fit:
        return _pearson(p, m)
    return _plcc_rmse(p, m, fit_logistic(p, m))[0]


def rmse(pred: Any, mos: Any) -> float:
    """Root-mean-square error between MOS and logistic-mapped predictions."""
    p, m = check_pairs(pred, mos)
    return _plcc_rmse(p, m, fit_logistic(p, m))[1]


def evaluate(pred: Any, mos: Any, max_iter: int = DEFAULT_MAX_ITER) -> dict[str, Any]:
    """All metrics at once, fitting the logistic mapping only once.

    Returns ``{"srcc", "plcc", "krcc", "rmse"}`` as floats, ``"n"`` as int and ``"fit"``, the
    :class:`LogisticFit` used for PLCC/RMSE (``fit.to_dict()`` for JSON).
    """
    p, m = check_pairs(pred, mos)
    fit = fit_logistic(p, m, max_iter=max_iter)
    plcc_value, rmse_value = _plcc_rmse(p, m, fit)
    return {
        "srcc": srcc(p, m),
        "plcc": plcc_value,
        "krcc": krcc(p, m),
        "rmse": rmse_value,
        "n": int(p.size),
        "fit": fit,
    }
