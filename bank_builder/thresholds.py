"""Decision thresholds and their honest error rates (pure statistics: no I/O, no bank).

A part is called NG (anomalous) when ``score > threshold``; a higher score is more anomalous.

**Threshold at a target false-reject rate (FRR).** ``threshold_at_frr(good_scores, target)`` takes the scores
of *n* held-out good parts, sorted as x(1) <= ... <= x(n). A new good part drawn from the same population
scores above x(k) with probability at most (n + 1 - k) / (n + 1) (the n + 1 scores are exchangeable; ties only
lower it). The threshold is x(k) for the smallest k with (n + 1 - k) / (n + 1) <= target, i.e.
k = n + 1 - floor(target * (n + 1)); its expected FRR on new goods is floor(target * (n + 1)) / (n + 1), at or
just under the target, whatever the score distribution. The target is read as the decimal it is written as
(0.01 means exactly 1/100: a relative tolerance of 1e-9 absorbs binary rounding).

That needs n + 1 >= 1 / target goods (n >= 99 for 1%, n >= 19 for 5%). With fewer the empirical quantile
does not exist, and the threshold is extrapolated from a normal fit: the one-sided normal *prediction* bound
mean + t(n - 1; 1 - target) * std * sqrt(1 + 1/n) (sample std, ddof = 1; t the Student quantile), never below
the largest good score x(n). For normal scores its expected FRR is exactly the target at every n (the plug-in
mean + z std would give ~2.6% at n = 10 for a 1% target, because it ignores the uncertainty of the fitted mean
and std). It assumes roughly normal scores: its rule says so, and cross-validation measures what it does on the
actual scores (on skewed scores it can be several times the target).

Every score must be finite, there must be at least two, and 0 < target < 1; anything else is an
:class:`~patchbank.errors.InputError`.

**Measured FRR.** A threshold's FRR must be measured on goods that did not set it. ``cross_validated_frr``
splits the n goods into K folds (leave-one-out when n <= 20, else 10 folds, shuffled with a seed); for each fold
the caller scores the goods (refitting on the training goods whatever depends on them, e.g. a score
normalisation), the threshold is set from the training goods' scores with ``threshold_at_frr`` and the test
goods above it are counted. The counts are pooled over the folds: rate = rejects / n, with an exact
(Clopper-Pearson) binomial confidence interval. It measures the threshold rule at training size n (K - 1) / K,
slightly fewer goods than the final threshold will use. The interval treats the n outcomes as independent
trials. They are not (the folds share the goods): with enough goods for the order statistic and fixed scores,
the count depends only on the ranks of the goods and is nearly determined (its expectation is the
distribution-free n floor(target (n_train + 1)) / (n_train + 1)), so the interval is wide for it. What
cross-validation does measure is what the theory cannot promise: the normal tail fit on the actual scores and
anything the caller refits on the training goods.

**F1-optimal threshold.** Where labelled anomalies exist, ``f1_threshold(labels, scores)`` tries every distinct
score as the lowest score still called NG and keeps the best F1 = 2 TP / (2 TP + FP + FN) (ties: the highest
such score, i.e. the fewest NG calls). The threshold returned lies strictly between that score and the next
lower distinct score (their midpoint, or the lower score itself when no float lies between them), or just
below the minimum when every part is called NG, so ``scores > threshold`` reproduces the F1 exactly. It sorts
once and counts with cumulative sums: ~1 s for 10 million pixel scores (2% anomalous; ~2 s at 50%).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.model_selection import KFold

from patchbank.bank import is_anomalous
from patchbank.errors import InputError

# The target is read as a decimal: floor(0.29 * 100) must be 29 although the float product is 28.999999999999996.
_REL_TOL = 1e-9
LOO_MAX_N = 20  # at most this many goods: leave-one-out; more: DEFAULT_FOLDS folds
DEFAULT_FOLDS = 10


@dataclass(frozen=True)
class ThresholdFit:
    """A threshold and a short human-readable description of how it was set."""

    value: float
    rule: str


@dataclass(frozen=True)
class FRREstimate:
    """A false-reject rate measured by cross-validation: ``rejects`` of ``n`` held-out goods were called NG."""

    rate: float
    low: float
    high: float
    rejects: int
    n: int
    folds: int
    confidence: float = 0.95

    def contains(self, target: float) -> bool:
        """Whether ``target`` lies inside the confidence interval (bounds included)."""
        return self.low <= target <= self.high

    def describe(self) -> str:
        """One line, e.g. ``FRR 0.010 (1/100, 95% CI 0.000-0.054, 10-fold CV)``."""
        scheme = "leave-one-out CV" if self.folds == self.n else f"{self.folds}-fold CV"
        return (
            f"FRR {self.rate:.3f} ({self.rejects}/{self.n}, {self.confidence * 100:g}% CI "
            f"{self.low:.3f}-{self.high:.3f}, {scheme})"
        )


def _check_target(target: float) -> float:
    if not (isinstance(target, int | float | np.floating) and 0.0 < float(target) < 1.0):
        raise InputError(f"the target false-reject rate must be a number in (0, 1), got {target!r}")
    return float(target)


def _good_scores(good_scores: ArrayLike) -> np.ndarray:
    x = np.asarray(good_scores, dtype=np.float64)
    if x.ndim != 1:
        raise InputError(f"good scores must be a 1-D sequence, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise InputError(f"{bad} of {x.size} good scores are not finite (NaN or inf)")
    if x.size < 2:
        raise InputError(f"a threshold needs at least 2 good scores, got {x.size}")
    return x


def exceed_count(n: int, target: float) -> int:
    """m = floor(target (n + 1)): how many of n goods may lie above the threshold (0: too few goods)."""
    return math.floor(target * (n + 1) * (1.0 + _REL_TOL))


def min_goods_for_quantile(target: float) -> int:
    """The fewest goods for which the empirical order-statistic threshold exists (99 at a 1% target)."""
    return math.ceil((1.0 - _REL_TOL) / target) - 1


def _pct(target: float) -> str:
    return f"{target * 100:.3g}%"


def threshold_at_frr(good_scores: ArrayLike, target: float) -> ThresholdFit:
    """The threshold at which a new good part is called NG (``score > threshold``) with probability <= target.

    The order statistic x(k), k = n + 1 - floor(target (n + 1)), when n is large enough (n + 1 >= 1 / target);
    otherwise the normal prediction bound mean + t(n - 1; 1 - target) std sqrt(1 + 1/n), raised to max(scores)
    if below it.
    """
    target = _check_target(target)
    x = np.sort(_good_scores(good_scores))
    n = x.size
    m = exceed_count(n, target)
    if m >= 1:
        k = n + 1 - m
        return ThresholdFit(
            float(x[k - 1]),
            f"order statistic {k} of {n} held-out goods (a new good exceeds it with probability "
            f"{m}/{n + 1} = {m / (n + 1):.4f})",
        )
    t = float(stats.t.ppf(1.0 - target, n - 1)) * math.sqrt(1.0 + 1.0 / n)
    mean, std = float(x.mean()), float(x.std(ddof=1))
    fitted = mean + t * std
    rule = (
        f"normal prediction bound (mean + {t:.2f} std) of {n} goods: too few for an empirical {_pct(target)} "
        f"quantile (needs >= {min_goods_for_quantile(target)})"
    )
    if fitted < x[-1]:
        return ThresholdFit(float(x[-1]), rule + "; raised to the largest good score")
    return ThresholdFit(fitted, rule)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided binomial confidence interval for k successes in n trials.

    k = 0 gives a lower bound of 0 and k = n an upper bound of 1; otherwise each tail holds (1 - confidence) / 2.
    """
    if not (isinstance(n, int | np.integer) and n >= 1):
        raise InputError(f"n must be a positive integer, got {n!r}")
    if not (isinstance(k, int | np.integer) and 0 <= k <= n):
        raise InputError(f"k must be an integer in [0, n={n}], got {k!r}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence!r}")
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


FoldScores = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _fold_outputs(out: object, train_idx: np.ndarray, test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise InputError("fold_scores must return a tuple (train scores, test scores)")
    train = np.asarray(out[0], dtype=np.float64)
    test = np.asarray(out[1], dtype=np.float64)
    if train.shape != train_idx.shape or test.shape != test_idx.shape:
        raise InputError(
            f"fold_scores returned {train.shape} train and {test.shape} test scores for "
            f"{train_idx.size} train and {test_idx.size} test goods"
        )
    if np.isnan(test).any():
        raise InputError("fold_scores returned NaN test scores")
    return train, test


def cross_validated_frr(
    n: int,
    fold_scores: FoldScores,
    target: float,
    folds: int | None = None,
    seed: int = 0,
    confidence: float = 0.95,
) -> FRREstimate:
    """The FRR of ``threshold_at_frr(., target)`` measured by K-fold cross-validation over n goods.

    ``fold_scores(train_idx, test_idx)`` returns (scores of the train goods, scores of the test goods), in the
    order of the indices, refitting on ``train_idx`` only whatever depends on the goods. Every index is tested
    exactly once; train and test never overlap. ``folds`` defaults to n (leave-one-out) when n <= 20, else 10.
    """
    target = _check_target(target)
    if not (isinstance(n, int | np.integer) and n >= 3):
        raise InputError(f"cross-validation needs at least 3 goods, got {n!r}")
    n = int(n)
    k = (n if n <= LOO_MAX_N else DEFAULT_FOLDS) if folds is None else folds
    if not (isinstance(k, int | np.integer) and 2 <= k <= n):
        raise InputError(f"folds must be an integer in [2, n={n}], got {folds!r}")
    splitter = KFold(n_splits=int(k), shuffle=True, random_state=seed)
    rejects = 0
    for train_idx, test_idx in splitter.split(np.arange(n)):
        train, test = _fold_outputs(fold_scores(train_idx, test_idx), train_idx, test_idx)
        threshold = threshold_at_frr(train, target).value
        rejects += int(np.count_nonzero(is_anomalous(test, threshold)))
    low, high = clopper_pearson(rejects, n, confidence)
    return FRREstimate(rejects / n, low, high, rejects, n, int(k), confidence)


def _binary_labels(labels: ArrayLike, size: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.size != size:
        raise InputError(f"{y.size} labels for {size} scores")
    y = y.ravel()
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.number) or not ((y == 0) | (y == 1)).all():
            raise InputError("labels must be 0/1 or booleans (1 = anomalous)")
        y = y == 1
    return y


def _below(value: np.floating, scale: float) -> np.floating:
    """A number of value's dtype just below value: a margin of 1e-6 of the score scale, or the next float."""
    below = value.dtype.type(float(value) - 1e-6 * scale)
    return below if below < value else np.nextafter(value, value.dtype.type(-np.inf))


def f1_threshold(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """(threshold, best F1) for the rule ``score > threshold``; labels: 1 = anomalous (positive).

    Any shapes with the same number of elements (pixel maps and masks too). Vectorised: one sort of all scores,
    one of the rarer class, cumulative counts per distinct score.
    """
    s = np.asarray(scores)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    s = s.ravel()
    y = _binary_labels(labels, s.size)
    if not np.isfinite(s).all():
        raise InputError("scores must be finite (no NaN or inf)")
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == s.size:
        raise InputError(f"an F1 threshold needs both labels: {n_pos} positives of {s.size}")
    values = np.sort(s)
    first = np.empty(values.size, dtype=bool)
    first[0] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    distinct = values[starts]
    at_or_above = s.size - starts  # parts called NG when distinct[i] is the lowest NG score
    # count only the rarer class per distinct score; the other follows from at_or_above
    rare_is_pos = n_pos <= s.size - n_pos
    rare = np.sort(s[y] if rare_is_pos else s[~y])
    per_value = np.bincount(np.searchsorted(distinct, rare), minlength=distinct.size)
    rare_at_or_above = np.cumsum(per_value[::-1])[::-1]
    tp = rare_at_or_above if rare_is_pos else at_or_above - rare_at_or_above
    f1 = 2.0 * tp / (at_or_above + n_pos)  # 2 TP / (2 TP + FP + FN), with TP + FP = at_or_above, TP + FN = P
    best = distinct.size - 1 - int(np.argmax(f1[::-1]))  # ties: the highest score, the fewest NG calls
    lowest_ng = distinct[best]
    if best == 0:
        scale = max(float(values[-1] - values[0]), abs(float(lowest_ng))) or 1.0
        threshold = _below(lowest_ng, scale)
    else:
        lower = distinct[best - 1]
        threshold = lowest_ng.dtype.type(0.5 * float(lowest_ng) + 0.5 * float(lower))
        if not lower < threshold < lowest_ng:
            threshold = lower  # no float strictly between: the lower score itself still works with '>'
    return float(threshold), float(f1[best])
