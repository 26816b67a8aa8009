"""Decision-threshold statistics: order-statistic thresholds, Clopper-Pearson, cross-validated FRR, F1 thresholds."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from patchbank.errors import InputError
from patchbank_builder.thresholds import (
    FRREstimate,
    clopper_pearson,
    cross_validated_frr,
    f1_threshold,
    threshold_at_frr,
)


def _f1(labels: np.ndarray, called_ng: np.ndarray) -> float:
    """2 TP / (2 TP + FP + FN), computed the way f1_threshold does (so equality is exact)."""
    tp = int(np.count_nonzero(called_ng & labels))
    return 2.0 * tp / (int(np.count_nonzero(called_ng)) + int(np.count_nonzero(labels)))


# --- threshold_at_frr ------------------------------------------------------------------------------------


def test_order_statistic_on_200_uniform_goods() -> None:
    x = np.random.default_rng(1).uniform(size=200)
    fit = threshold_at_frr(x, 0.01)
    # floor(0.01 * 201) = 2 goods may lie above: k = 199, the second largest
    assert fit.value == np.sort(x)[198]
    assert "order statistic 199 of 200" in fit.rule
    assert np.mean(x > fit.value) <= 0.01
    fit5 = threshold_at_frr(x, 0.05)  # floor(0.05 * 201) = 10: k = 191
    assert fit5.value == np.sort(x)[190]
    assert np.mean(x > fit5.value) <= 0.05


@pytest.mark.parametrize("target", [0.5, 0.3, 0.29, 0.2, 0.1, 0.07, 0.05, 0.01, 0.003])
def test_order_statistic_is_the_smallest_valid_k(target: float) -> None:
    """Against a brute force in exact decimal arithmetic, for every n from 2 to 400."""
    t = Fraction(str(target))
    rng = np.random.default_rng(0)
    for n in range(2, 401):
        k = next((k for k in range(1, n + 2) if Fraction(n + 1 - k, n + 1) <= t), n + 1)
        x = rng.permutation(n).astype(float)  # x(k) == k - 1
        fit = threshold_at_frr(x, target)
        if k <= n:
            assert fit.value == k - 1, (n, target)
            assert np.mean(x > fit.value) <= target
        else:
            assert fit.rule.startswith("normal prediction bound"), (n, target)
            assert fit.value >= n - 1


def test_quantile_needs_99_goods_at_1_percent() -> None:
    x = np.random.default_rng(2).normal(size=99)
    fit = threshold_at_frr(x, 0.01)
    assert fit.value == x.max()
    assert "order statistic 99 of 99" in fit.rule
    assert threshold_at_frr(x[:98], 0.01).rule.startswith("normal prediction bound")


def test_small_n_falls_back_to_the_normal_prediction_bound() -> None:
    x = np.random.default_rng(3).normal(5.0, 2.0, size=10)
    fit = threshold_at_frr(x, 0.01)
    t = stats.t.ppf(0.99, 9) * np.sqrt(1 + 1 / 10)
    assert fit.value == pytest.approx(x.mean() + t * x.std(ddof=1), rel=1e-12)
    assert fit.value >= x.max()
    assert fit.rule == (
        "normal prediction bound (mean + 2.96 std) of 10 goods: too few for an empirical 1% quantile "
        "(needs >= 99)"
    )


def test_the_prediction_bound_meets_the_target_on_normal_goods() -> None:
    """Unlike the plug-in mean + z std (about 2.6% at n = 10), the prediction bound's FRR on fresh normal goods
    is the target: 4000 draws of 10 goods, each threshold's exceedance probability computed exactly."""
    rng = np.random.default_rng(5)
    p = [stats.norm.sf(threshold_at_frr(rng.normal(size=10), 0.01).value) for _ in range(4000)]
    assert np.mean(p) == pytest.approx(0.01, abs=0.0015)


def test_small_n_fallback_never_below_the_maximum() -> None:
    x = np.array([0.0] * 19 + [20.0])  # mean 1, std sqrt(20): the bound 1 + 2.60 std = 12.6 < 20
    assert 1.0 + stats.t.ppf(0.99, 19) * np.sqrt(1.05) * np.sqrt(20.0) < 20.0
    fit = threshold_at_frr(x, 0.01)
    assert fit.value == 20.0
    assert "raised to the largest good score" in fit.rule
    assert threshold_at_frr([2.0, 2.0], 0.01).value == 2.0  # std 0: the maximum


def test_average_frr_on_fresh_goods_matches_target() -> None:
    """2000 draws of 300 normal goods; each threshold's FRR measured on 1000 fresh goods.

    Theory: the threshold x(298) is exceeded by a new good with probability 3/301 = 0.00997 on average. The
    per-draw FRR has variance Var Beta(3, 298) + E[p (1 - p)] / 1000 = 3.3e-5 + 1.0e-5, so the mean of 2000
    has a standard deviation of 1.5e-4; the tolerance 5e-4 is 3.4 of them. np.quantile(x, 0.99), the naive
    rule, interpolates between x(297) and x(298) and averages 0.0133: far outside it, as is an off-by-one
    k (0.0066 or 0.0133).
    """
    rng = np.random.default_rng(4)
    goods = rng.normal(size=(2000, 300))
    fresh = rng.normal(size=(2000, 1000))
    ours = np.array([threshold_at_frr(g, 0.01).value for g in goods])
    naive = np.quantile(goods, 0.99, axis=1)
    frr = np.mean(fresh > ours[:, None], axis=1)
    frr_naive = np.mean(fresh > naive[:, None], axis=1)
    assert abs(frr.mean() - 3 / 301) < 5e-4
    assert abs(frr.mean() - 0.01) < 5e-4
    assert frr_naive.mean() > 0.01 + 2e-3
    # the exact tail probability of each threshold (infinitely many fresh goods) agrees
    assert abs(stats.norm.sf(ours).mean() - 3 / 301) < 5e-4


# --- clopper_pearson -------------------------------------------------------------------------------------


def test_clopper_pearson_known_values() -> None:
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-10))
    assert clopper_pearson(10, 10) == (pytest.approx(0.025 ** (1 / 10), rel=1e-10), 1.0)
    low, high = clopper_pearson(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.1871, 0.8129)
    ci = stats.binomtest(1, 100).proportion_ci(0.95, method="exact")
    assert clopper_pearson(1, 100) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_clopper_pearson_tails_hold_alpha_over_two() -> None:
    low, high = clopper_pearson(3, 50, confidence=0.9)
    assert stats.binom.sf(2, 50, low) == pytest.approx(0.05, rel=1e-8)  # P(X >= 3 | low) = alpha / 2
    assert stats.binom.cdf(3, 50, high) == pytest.approx(0.05, rel=1e-8)  # P(X <= 3 | high) = alpha / 2


def test_frr_estimate_describe_and_contains() -> None:
    low, high = clopper_pearson(1, 100)
    est = FRREstimate(0.01, low, high, 1, 100, 10)
    assert est.describe() == "FRR 0.010 (1/100, 95% CI 0.000-0.054, 10-fold CV)"
    assert est.contains(0.01) and est.contains(0.05)
    assert not est.contains(0.06)
    assert not est.contains(0.0002)
    loo = FRREstimate(0.0, 0.0, 0.168, 0, 20, 20)
    assert loo.describe() == "FRR 0.000 (0/20, 95% CI 0.000-0.168, leave-one-out CV)"


# --- cross_validated_frr ---------------------------------------------------------------------------------


def _recording(scores: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], object]:
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def fold_scores(train_idx: np.ndarray, test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append((train_idx.copy(), test_idx.copy()))
        return scores[train_idx], scores[test_idx]

    return calls, fold_scores


@pytest.mark.parametrize(
    ("n", "folds", "expected_folds"), [(20, None, 20), (21, None, 10), (137, None, 10), (50, 5, 5)]
)
def test_cv_folds_partition_the_goods(n: int, folds: int | None, expected_folds: int) -> None:
    calls, fold_scores = _recording(np.random.default_rng(5).normal(size=n))
    est = cross_validated_frr(n, fold_scores, 0.01, folds=folds)
    assert len(calls) == est.folds == expected_folds
    assert est.n == n
    tested = np.concatenate([test for _, test in calls])
    assert np.array_equal(np.sort(tested), np.arange(n))  # every index tested exactly once
    for train, test in calls:
        assert np.intersect1d(train, test).size == 0
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))


def test_cv_split_is_seeded() -> None:
    scores = np.random.default_rng(6).normal(size=100)
    runs = []
    for seed in (0, 0, 1):
        calls, fold_scores = _recording(scores)
        cross_validated_frr(100, fold_scores, 0.01, seed=seed)
        runs.append([test.tolist() for _, test in calls])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_cv_counts_test_goods_above_the_train_threshold() -> None:
    """Train goods score in [0, 1], so every fold's threshold is <= 1; test goods i % 7 == 0 score 5."""

    def fold_scores(train_idx: np.ndarray, test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.linspace(0.0, 1.0, train_idx.size), np.where(test_idx % 7 == 0, 5.0, -1.0)

    est = cross_validated_frr(100, fold_scores, 0.01)
    assert (est.rejects, est.n, est.folds) == (15, 100, 10)
    assert est.rate == 0.15
    assert (est.low, est.high) == clopper_pearson(15, 100)
    assert not est.contains(0.01)


def test_cv_threshold_comes_from_the_train_scores_only() -> None:
    """fold_scores normalises with the train goods' statistics; the test goods' raw scores never set it."""
    raw = np.random.default_rng(7).normal(10.0, 3.0, size=200)
    seen: list[float] = []

    def fold_scores(train_idx: np.ndarray, test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, sd = raw[train_idx].mean(), raw[train_idx].std()
        seen.append(mu)
        return (raw[train_idx] - mu) / sd, (raw[test_idx] - mu) / sd

    est = cross_validated_frr(200, fold_scores, 0.05, folds=4)
    assert len(seen) == 4 and len(set(seen)) == 4
    assert est.contains(0.05)


def test_cv_interval_covers_the_target_on_normal_goods() -> None:
    """200 seeded samples of 1000 normal goods, 10 folds (900 train goods: a test good exceeds x(892) with
    probability 9/901, so 1000 * 9/901 = 9.99 rejects are expected). The pooled count depends only on the
    ranks and is far less variable than a binomial (always >= 9, variance ~0.6 against 9.9 in 2000 samples),
    so the interval contains 0.01 almost always. The mean rate over 200 samples has a standard deviation of
    ~6e-5: 3e-4 is ~5 of them. A leaky threshold set on all 1000 goods would give 9/1000 every time."""
    rng = np.random.default_rng(8)
    rates, covered = [], 0
    for rep in range(200):
        x = rng.normal(size=1000)
        est = cross_validated_frr(1000, lambda tr, te, x=x: (x[tr], x[te]), 0.01, seed=rep)
        rates.append(est.rate)
        covered += est.contains(0.01)
    assert covered / 200 >= 0.9
    assert min(rates) >= 0.009
    assert abs(np.mean(rates) - 9 / 901) < 3e-4


def test_cv_exposes_the_normal_tail_fit_on_skewed_goods() -> None:
    """20 goods (leave-one-out: 19 train goods, the normal prediction bound). On normal goods its FRR is about
    the target; on exponential goods (a heavier tail than the normal fit assumes) it is several times it. Pooled over 200
    seeded samples (4000 tested goods: binomial standard deviation ~0.2% and ~0.3%)."""
    rng = np.random.default_rng(11)

    def pooled(draw: object) -> float:
        rejects = 0
        for rep in range(200):
            x = draw(size=20)
            rejects += cross_validated_frr(20, lambda tr, te, x=x: (x[tr], x[te]), 0.01, seed=rep).rejects
        return rejects / 4000

    assert pooled(rng.normal) < 0.025
    assert pooled(rng.exponential) > 0.03


# --- f1_threshold ----------------------------------------------------------------------------------------


def test_f1_threshold_hand_example() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    # lowest NG score 0.35: TP 3, FP 1 (0.4), FN 0 -> F1 = 6/7; the next lower score is 0.2
    thr, f1 = f1_threshold(labels, scores)
    assert thr == pytest.approx(0.275)
    assert f1 == pytest.approx(6 / 7)
    assert _f1(labels == 1, scores > thr) == f1


def test_f1_threshold_ties_pick_the_fewest_ng_calls() -> None:
    # lowest NG 4: TP 1, FP 0, FN 1 -> 2/3; lowest NG 1: TP 2, FP 2 -> 2/3 as well
    thr, f1 = f1_threshold([1, 0, 0, 1], [4.0, 3.0, 2.0, 1.0])
    assert (thr, f1) == (3.5, pytest.approx(2 / 3))


def test_f1_threshold_all_called_ng() -> None:
    labels = np.array([True, True, False])
    scores = np.array([1.0, 2.0, 3.0])
    thr, f1 = f1_threshold(labels, scores)
    assert thr < 1.0 and thr > 1.0 - 1e-3
    assert f1 == pytest.approx(0.8)
    assert _f1(labels, scores > thr) == f1
    thr0, f10 = f1_threshold([0, 1], [0.0, 0.0])  # one distinct score, zero scale
    assert thr0 < 0.0
    assert f10 == pytest.approx(2 / 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_f1_threshold_adjacent_floats(dtype: type) -> None:
    lo = dtype(1.0)
    scores = np.array([lo, np.nextafter(lo, dtype(2.0))], dtype=dtype)  # no float strictly between
    thr, f1 = f1_threshold([0, 1], scores)
    assert f1 == 1.0
    assert list(scores > thr) == [False, True]


@pytest.mark.parametrize("positive_fraction", [0.1, 0.5, 0.9])
def test_f1_threshold_matches_brute_force_with_ties(positive_fraction: float) -> None:
    rng = np.random.default_rng(9)
    labels = rng.random(20_000) < positive_fraction
    scores = np.round(rng.normal(size=labels.size) + 1.5 * labels, 2)  # many ties, across labels
    best_f1, best_v = -1.0, None
    for v in np.unique(scores)[::-1]:  # highest first: ties keep the highest score
        f = _f1(labels, scores >= v)
        if f > best_f1:
            best_f1, best_v = f, v
    thr, f1 = f1_threshold(labels.astype(int), scores)
    assert f1 == best_f1
    assert np.array_equal(scores > thr, scores >= best_v)
    assert _f1(labels, scores > thr) == f1


def test_f1_threshold_on_pixel_maps() -> None:
    rng = np.random.default_rng(10)
    masks = np.zeros((8, 64, 64), dtype=np.uint8)
    masks[:, 20:30, 20:30] = 1
    maps = (rng.normal(size=masks.shape) + 4.0 * masks).astype(np.float32)
    thr, f1 = f1_threshold(masks, maps)
    assert _f1(masks.ravel() == 1, maps.ravel() > thr) == f1
    assert 0.8 < f1 < 1.0  # N(4, 1) defects on N(0, 1) background at 2.4% prevalence: ~0.86


# --- bad inputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "target"),
    [
        ([1.0, 2.0, 3.0], 0.0),
        ([1.0, 2.0, 3.0], 1.0),
        ([1.0, 2.0, 3.0], -0.1),
        ([1.0, 2.0, 3.0], float("nan")),
        ([1.0], 0.01),
        ([], 0.01),
        ([1.0, float("nan"), 3.0], 0.01),
        ([1.0, float("inf"), 3.0], 0.01),
        ([[1.0, 2.0], [3.0, 4.0]], 0.01),
    ],
)
def test_threshold_at_frr_rejects_bad_input(scores: list, target: float) -> None:
    with pytest.raises(InputError):
        threshold_at_frr(scores, target)


@pytest.mark.parametrize(
    ("k", "n", "confidence"), [(-1, 10, 0.95), (11, 10, 0.95), (0, 0, 0.95), (1, 10, 1.0), (1, 10, 0.0)]
)
def test_clopper_pearson_rejects_bad_input(k: int, n: int, confidence: float) -> None:
    with pytest.raises(InputError):
        clopper_pearson(k, n, confidence)


def _identity(train_idx: np.ndarray, test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return train_idx.astype(float), test_idx.astype(float)


@pytest.mark.parametrize(
    ("n", "fold_scores", "target", "folds"),
    [
        (2, _identity, 0.01, None),
        (10, _identity, 0.01, 1),
        (10, _identity, 0.01, 11),
        (10, _identity, 1.5, None),
        (10, lambda tr, te: (te.astype(float), tr.astype(float)), 0.01, 5),  # swapped
        (10, lambda tr, te: (tr.astype(float), np.full(te.size, np.nan)), 0.01, 5),
        (10, lambda tr, te: tr.astype(float), 0.01, 5),
    ],
)
def test_cross_validated_frr_rejects_bad_input(
    n: int, fold_scores: object, target: float, folds: int | None
) -> None:
    with pytest.raises(InputError):
        cross_validated_frr(n, fold_scores, target, folds=folds)


@pytest.mark.parametrize(
    ("labels", "scores"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3]),
        ([0, 0, 0], [0.1, 0.2, 0.3]),
        ([0, 1], [0.1, 0.2, 0.3]),
        ([0, 2, 1], [0.1, 0.2, 0.3]),
        ([0, 1, 1], [0.1, float("nan"), 0.3]),
        ([], []),
    ],
)
def test_f1_threshold_rejects_bad_input(labels: list, scores: list) -> None:
    with pytest.raises(InputError):
        f1_threshold(labels, scores)
