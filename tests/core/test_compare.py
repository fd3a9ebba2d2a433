"""loda.compare: the one score comparator, checked against scipy and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau, pearsonr, rankdata, spearmanr

from loda.compare import (
    Bound,
    Tolerance,
    compare_scores,
    image_bounds,
    judge,
    spread_indices,
)
from loda.metrics import average_ranks, spearman, srcc


def test_spearman_known_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (0, 0, 1, -1): 1 - 6 * 2 / (4 * 15) = 0.8 (no ties, the textbook formula holds)
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    assert average_ranks([10.0, 30.0, 20.0, 30.0]).tolist() == [1.0, 3.5, 2.0, 3.5]


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for n in (3, 7, 30, 200):
        a = rng.integers(0, 6, n).astype(float)  # many ties
        b = np.round(a + rng.normal(0, 1.5, n))  # ties on both sides
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        np.testing.assert_array_equal(average_ranks(a), rankdata(a, method="average"))
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
        if n >= 4:
            assert srcc(a, b) == spearman(a, b)


def test_spearman_is_undefined_where_scipy_gives_nan_or_too_few():
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # constant
    assert spearman([1, 2], [1, 2]) is None  # two pairs: always +-1
    assert spearman([1, 2, np.nan], [1, 2, 3]) is None
    assert spearman([1, 2, np.inf, 4], [1, 2, 3, 4]) is None


def test_spread_indices():
    assert spread_indices(10, 4) == [0, 3, 6, 9]
    assert spread_indices(3, 5) == [0, 1, 2]
    assert spread_indices(5, 1) == [0] and spread_indices(5, 0) == []


def test_image_bounds():
    assert image_bounds(30, 15).tolist() == [0, 15, 30]
    assert image_bounds(31, 15).tolist() == [0, 15, 30]  # trailing partial image left out
    assert image_bounds(6, [1, 2, 3]).tolist() == [0, 1, 3, 6]
    with pytest.raises(ValueError, match="add up to 7"):
        image_bounds(7, [1, 2, 3])


def test_per_crop_and_per_image_figures_with_uneven_images():
    ref = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    cand = ref + np.array([0.1, -0.1, 0.0, 0.3, 0.0, -0.6])
    s = compare_scores(cand, ref, crops_per_image=[2, 1, 3], names=["a", "b", "c"])
    # image means by hand: a (0.05, 0.5 vs 0.5), b (2, 2), c ((3.3 + 4 + 4.4) / 3 = 3.9 vs 4)
    np.testing.assert_allclose(s.reference_images, [0.5, 2.0, 4.0])
    np.testing.assert_allclose(s.candidate_images, [0.5, 2.0, 3.9])
    assert (s.n_images, s.n_crops, s.n_nonfinite) == (3, 6, 0)
    assert s.max_abs_crop == pytest.approx(0.6) and s.worst_image == "c"
    assert s.worst_image_max == pytest.approx(0.6)
    assert s.mean_abs_crop == pytest.approx(1.1 / 6)
    assert s.p99_abs_crop == pytest.approx(np.percentile(np.abs(cand - ref), 99))
    assert s.max_abs_image == pytest.approx(0.1) and s.mean_abs_image == pytest.approx(0.1 / 3)
    assert s.spearman_crops == pytest.approx(spearmanr(cand, ref).statistic)
    assert s.spearman_images == pytest.approx(1.0)
    assert s.srcc is None and s.dsrcc is None  # no MOS


def test_two_d_scores_group_by_rows():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(5, 4))
    cand = ref + rng.normal(0, 0.01, size=(5, 4))
    s = compare_scores(cand, ref)
    np.testing.assert_array_equal(s.candidate_images, cand.mean(axis=1))
    assert s.n_images == 5 and s.n_crops == 20


def test_mos_figures_match_scipy():
    rng = np.random.default_rng(2)
    mos = rng.uniform(1, 5, 12)
    ref = np.repeat(mos[:, None], 3, axis=1) + rng.normal(0, 0.5, (12, 3))
    cand = ref + rng.normal(0, 0.3, (12, 3))
    s = compare_scores(cand, ref, mos=mos)
    img, ref_img = cand.mean(axis=1), ref.mean(axis=1)
    assert s.n_mos == 12 and s.mos_error is None
    assert s.srcc == pytest.approx(spearmanr(img, mos).statistic, abs=1e-12)
    assert s.srcc_reference == pytest.approx(spearmanr(ref_img, mos).statistic, abs=1e-12)
    assert s.dsrcc == pytest.approx(s.srcc - s.srcc_reference)
    assert s.plcc is None  # only with the logistic mapping
    full = compare_scores(cand, ref, mos=mos, logistic=True)
    assert full.krcc == pytest.approx(kendalltau(img, mos).statistic, abs=1e-12)
    assert -1 <= full.plcc <= 1 and full.dplcc == pytest.approx(full.plcc - full.plcc_reference)
    # A logistic fit is at least as good as a straight line on the same data.
    assert full.plcc >= abs(pearsonr(img, mos).statistic) - 1e-6


def test_undefined_mos_figures_say_why():
    ref = np.arange(12.0).reshape(4, 3)
    s = compare_scores(ref, ref, mos=[3.0, 3.0, 3.0, 3.0])
    assert s.srcc is None and "constant" in s.mos_error
    with pytest.raises(ValueError, match="3 MOS values for 4 images"):
        compare_scores(ref, ref, mos=[1, 2, 3])


def test_nonfinite_scores_are_infinite_differences_and_fail_first():
    ref = np.arange(8.0)
    cand = ref.copy()
    cand[3] = np.nan
    s = compare_scores(cand, ref, crops_per_image=4)
    assert s.nonfinite_candidate == 1 and s.max_abs_crop == np.inf
    assert s.mean_abs_crop == 0.0  # over the finite differences
    assert s.spearman_crops is None and s.max_abs_image == np.inf
    verdict = judge(s, Tolerance("x", max_abs_dscore_crop=Bound(1.0)))
    assert not verdict.passed and verdict.problems == ("1 non-finite (inf/NaN) crop score(s)",)


@pytest.mark.parametrize(
    ("bound", "value", "ok"),
    [
        (Bound(1e-4), 1e-4, True),  # <= is inclusive
        (Bound(1e-4), 1.0001e-4, False),
        (Bound(5e-4, inclusive=False), 5e-4, False),  # < excludes the limit
        (Bound(5e-4, inclusive=False), 4.999e-4, True),
        (Bound(0.99, at_least=True), 0.99, True),
        (Bound(0.99, at_least=True), 0.98999, False),
        (Bound(0.99, at_least=True), float("nan"), False),
    ],
)
def test_bound_boundaries(bound, value, ok):
    assert bound.ok(value) is ok


def test_verdict_against_tolerances():
    ref = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    mos = ref.copy()
    off = compare_scores(ref + np.array([0, 2e-4, 0, 0, 0]), ref, crops_per_image=1, mos=mos)
    fp32 = Tolerance("fp32", max_abs_dscore=Bound(1e-4), abs_dsrcc=Bound(5e-4, inclusive=False))
    verdict = judge(off, fp32)
    assert not verdict.passed and verdict.problems == ("max|d| 0.0002 not <= 0.0001",)
    assert verdict.needed == {"max_abs_dscore": pytest.approx(2e-4), "abs_dsrcc": 0.0}
    swap = compare_scores(ref[[1, 0, 2, 3, 4]], ref, crops_per_image=1, mos=mos)
    rho = Tolerance("int8", spearman=Bound(0.99, at_least=True), abs_dsrcc=Bound(1e-2))
    verdict = judge(swap, rho)
    assert verdict.problems == ("|dSRCC| 0.1 not <= 0.01", "Spearman 0.90000 < 0.99")
    assert "FAIL" in verdict.summary() and verdict.row()["passed"] is False
    constant = compare_scores(np.ones(4), ref[:4], crops_per_image=1)
    verdict = judge(constant, rho)
    assert verdict.undefined == ("abs_dsrcc", "spearman") and not verdict.passed
    assert judge(swap, Tolerance("none")).passed
