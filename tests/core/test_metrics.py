"""Tests for loda.metrics, checked against scipy / hand computations as the reference."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import scipy.stats

from loda import metrics
from loda.metrics import (
    LogisticFit,
    MetricError,
    evaluate,
    fit_logistic,
    krcc,
    logistic4,
    plcc,
    rmse,
    srcc,
)

TRUE_PARAMS = (80.0, 20.0, 0.5, 0.12)


def _failing_curve_fit(*args, **kwargs):
    """Stand-in for scipy.optimize.curve_fit that fails like a non-converging fit."""
    raise RuntimeError("Optimal parameters not found: forced failure")


@pytest.fixture
def tied() -> tuple[np.ndarray, np.ndarray]:
    """Predictions and MOS that both contain ties (MOS on a coarse 1..5 grid)."""
    rng = np.random.default_rng(7)
    pred = np.round(rng.normal(size=60), 1)
    mos = np.clip(np.round(pred + rng.normal(scale=0.8, size=60)), -2, 2) + 3
    assert len(np.unique(pred)) < pred.size and len(np.unique(mos)) < mos.size
    return pred, mos


@pytest.fixture
def logistic_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, noisy y = logistic4(x, TRUE_PARAMS) + noise, and the noise-free curve."""
    rng = np.random.default_rng(1234)
    x = rng.uniform(0.0, 1.0, size=400)
    b1, b2, b3, b4 = TRUE_PARAMS
    clean = (b1 - b2) / (1.0 + np.exp(-(x - b3) / abs(b4))) + b2  # written out, not logistic4
    y = clean + rng.normal(scale=1.5, size=x.size)
    return x, y, clean


# ---------------------------------------------------------------- SRCC / KRCC


def test_srcc_matches_scipy_with_ties(tied):
    pred, mos = tied
    expected = scipy.stats.spearmanr(pred, mos).statistic
    assert srcc(pred, mos) == pytest.approx(expected, abs=1e-12)


def test_srcc_matches_textbook_formula_without_ties():
    rng = np.random.default_rng(3)
    pred = rng.permutation(50).astype(float) + rng.uniform(0, 0.5, 50)
    mos = pred + rng.normal(scale=8.0, size=50)
    assert len(np.unique(pred)) == 50 and len(np.unique(mos)) == 50
    n = pred.size
    rank_p = np.argsort(np.argsort(pred)) + 1
    rank_m = np.argsort(np.argsort(mos)) + 1
    d = (rank_p - rank_m).astype(float)
    textbook = 1.0 - 6.0 * np.sum(d**2) / (n * (n**2 - 1))
    assert srcc(pred, mos) == pytest.approx(textbook, abs=1e-12)


def test_srcc_monotone_decreasing_is_minus_one_exactly():
    rng = np.random.default_rng(5)
    mos = rng.uniform(1, 5, size=97)
    pred = -np.exp(mos)  # strictly decreasing function of MOS
    assert srcc(pred, mos) == -1.0
    assert srcc(-pred, mos) == 1.0
    assert krcc(pred, mos) == pytest.approx(-1.0, abs=1e-12)


def test_krcc_matches_scipy_tau_b_with_ties(tied):
    pred, mos = tied
    expected = scipy.stats.kendalltau(pred, mos, variant="b").statistic
    assert krcc(pred, mos) == pytest.approx(expected, abs=1e-12)


def test_lists_and_column_vectors_are_accepted(tied):
    pred, mos = tied
    expected = scipy.stats.spearmanr(pred, mos).statistic
    assert srcc(pred.tolist(), mos.reshape(-1, 1)) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- PLCC / logistic


def test_logistic4_uses_abs_b4():
    x = np.linspace(-1, 2, 11)
    b1, b2, b3, b4 = TRUE_PARAMS
    expected = (b1 - b2) / (1.0 + np.exp(-(x - b3) / b4)) + b2
    np.testing.assert_allclose(logistic4(x, b1, b2, b3, b4), expected, rtol=1e-12)
    np.testing.assert_allclose(logistic4(x, b1, b2, b3, -b4), expected, rtol=1e-12)


def test_fit_recovers_parameters(logistic_data):
    x, y, _ = logistic_data
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit = fit_logistic(x, y)
    assert fit.kind == "logistic" and fit.coef is None
    b1, b2, b3, b4 = fit.params
    assert b1 == pytest.approx(TRUE_PARAMS[0], abs=1.5)
    assert b2 == pytest.approx(TRUE_PARAMS[1], abs=1.5)
    assert b3 == pytest.approx(TRUE_PARAMS[2], abs=0.02)
    assert abs(b4) == pytest.approx(TRUE_PARAMS[3], abs=0.02)


def test_plcc_close_to_noise_free_curve(logistic_data):
    x, y, clean = logistic_data
    reference = scipy.stats.pearsonr(y, clean).statistic
    assert plcc(x, y) == pytest.approx(reference, abs=2e-3)
    # the logistic mapping beats the raw linear correlation on a sigmoid relation
    assert plcc(x, y) > plcc(x, y, fit=False) + 0.01


def test_plcc_without_fit_matches_scipy_pearson(tied):
    pred, mos = tied
    expected = scipy.stats.pearsonr(pred, mos).statistic
    assert plcc(pred, mos, fit=False) == pytest.approx(expected, abs=1e-12)


def test_linear_fallback_when_curve_fit_raises(monkeypatch, tied):
    pred, mos = tied

    monkeypatch.setattr(metrics, "curve_fit", _failing_curve_fit)
    with pytest.warns(RuntimeWarning, match="logistic fit failed.*linear"):
        fit = fit_logistic(pred, mos)
    assert fit.kind == "linear" and fit.params is None
    slope, intercept = scipy.stats.linregress(pred, mos)[:2]
    assert fit.coef == pytest.approx((slope, intercept), rel=1e-9)

    expected = scipy.stats.pearsonr(pred, mos).statistic
    with pytest.warns(RuntimeWarning, match="logistic fit failed"):
        assert plcc(pred, mos) == pytest.approx(expected, abs=1e-12)


def test_linear_fallback_with_tiny_maxfev(logistic_data):
    x, y, _ = logistic_data
    with pytest.warns(RuntimeWarning, match="logistic fit failed"):
        fit = fit_logistic(x, y, max_iter=2)
    assert fit.kind == "linear"


# ---------------------------------------------------------------- RMSE / evaluate


def test_rmse_zero_for_exact_logistic():
    x = np.linspace(0.0, 1.0, 200)
    y = logistic4(x, *TRUE_PARAMS)
    assert rmse(x, y) == pytest.approx(0.0, abs=1e-6)
    assert plcc(x, y) == pytest.approx(1.0, abs=1e-12)


def test_rmse_matches_hand_computed_linear_fit(monkeypatch):
    pred = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    mos = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    # least-squares line by hand: slope = Sxy/Sxx = 8/10, intercept = 3 - 0.8*3 = 0.6
    fitted = 0.8 * pred + 0.6
    expected = math.sqrt(np.mean((mos - fitted) ** 2))  # residuals -0.4, 0.8, -1.0, 1.2, -0.6
    assert expected == pytest.approx(math.sqrt(3.6 / 5))

    monkeypatch.setattr(metrics, "curve_fit", _failing_curve_fit)
    with pytest.warns(RuntimeWarning):
        assert rmse(pred, mos) == pytest.approx(expected, rel=1e-12)


def test_evaluate_reports_all_metrics_with_one_fit(logistic_data, monkeypatch):
    x, y, _ = logistic_data
    calls = []
    real_curve_fit = metrics.curve_fit

    def counting_curve_fit(*args, **kwargs):
        calls.append(1)
        return real_curve_fit(*args, **kwargs)

    monkeypatch.setattr(metrics, "curve_fit", counting_curve_fit)
    result = evaluate(x, y)
    assert len(calls) == 1
    assert set(result) == {"srcc", "plcc", "krcc", "rmse", "n", "fit"}
    assert result["n"] == x.size and isinstance(result["n"], int)
    for key in ("srcc", "plcc", "krcc", "rmse"):
        assert isinstance(result[key], float)
    assert result["srcc"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert result["krcc"] == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
    mapped = result["fit"](x)
    assert result["plcc"] == pytest.approx(scipy.stats.pearsonr(y, mapped).statistic, abs=1e-12)
    assert result["rmse"] == pytest.approx(math.sqrt(np.mean((y - mapped) ** 2)), rel=1e-12)
    assert result["rmse"] == pytest.approx(1.5, abs=0.2)  # the injected noise level


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("func", [srcc, krcc, plcc, rmse, fit_logistic, evaluate])
@pytest.mark.parametrize(
    ("pred", "mos", "pattern"),
    [
        ([1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0], r"pred is constant"),
        ([1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 3.0, 3.0, 3.0, 3.0], r"mos is constant"),
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], r"at least 4 .*got 3"),
        (
            [1.0, 2.0, np.nan, 4.0, np.nan],
            [1.0, 2.0, 3.0, 4.0, 5.0],
            r"pred .*2 non-finite.*index 2",
        ),
        ([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, np.inf, 3.0, 4.0, 5.0], r"mos .*1 non-finite.*index 1"),
        (list(range(10)), list(range(9)), r"pred has 10 values but mos has 9"),
    ],
    ids=["const-pred", "const-mos", "too-few", "nan", "inf", "length"],
)
def test_invalid_inputs_raise_metric_error(func, pred, mos, pattern):
    with pytest.raises(MetricError, match=pattern):
        func(pred, mos)


def test_metric_error_is_value_error_and_rejects_2d():
    assert issubclass(MetricError, ValueError)
    with pytest.raises(MetricError, match="1-D"):
        srcc(np.ones((4, 2)), np.arange(8.0))


# ---------------------------------------------------------------- serialisation


@pytest.mark.parametrize("kind", ["logistic", "linear"])
def test_fit_dict_round_trip(kind, logistic_data, monkeypatch):
    x, y, _ = logistic_data
    if kind == "linear":
        monkeypatch.setattr(metrics, "curve_fit", _failing_curve_fit)
        with pytest.warns(RuntimeWarning):
            fit = fit_logistic(x, y)
    else:
        fit = fit_logistic(x, y)
    assert fit.kind == kind
    restored = LogisticFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert restored == fit
    probe = np.linspace(-0.5, 1.5, 101)
    np.testing.assert_array_equal(restored(probe), fit(probe))
