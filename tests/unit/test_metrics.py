"""Tests for patchbank.metrics: AUROCs against brute-force Mann-Whitney, AU-PRO against hand computations and
a slow loop-based reimplementation of the MVTec 3D-AD / BTF reference definition."""

from __future__ import annotations

import bisect
import itertools

import numpy as np
import pytest
from scipy import ndimage

from patchbank.errors import InputError
from patchbank.metrics import au_pro, image_auroc, pixel_auroc, pro_curve, trapezoid

# ----------------------------------------------------------------------------------------------------
# independent slow references


def mann_whitney_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC = P(anomalous score > good score) + 1/2 P(tie), brute force over all (anomalous, good) pairs."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    total = 0.0
    pairs = 0
    for s_bad in scores[labels]:
        for s_good in scores[~labels]:
            pairs += 1
            if s_bad > s_good:
                total += 1.0
            elif s_bad == s_good:
                total += 0.5
    return total / pairs


def slow_pro_curve(masks: np.ndarray, maps: np.ndarray, num_thresholds: int) -> tuple[np.ndarray, np.ndarray]:
    """Straightforward PRO curve: per-image 8-connected labelling, then loops over thresholds and regions."""
    regions: list[np.ndarray] = []
    ok: list[np.ndarray] = []
    for mask, amap in zip(masks, maps, strict=True):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        ok.append(amap[labeled == 0])
        for k in range(1, count + 1):
            regions.append(amap[labeled == k])
    ok_sorted = np.sort(np.concatenate(ok))
    n = len(ok_sorted)
    fprs = [1.0]
    pros = [1.0]
    for pos in np.linspace(0, n - 1, num=num_thresholds, dtype=int):
        threshold = ok_sorted[pos]
        fprs.append(1.0 - (pos + 1) / n)
        overlap = 0.0
        for region in regions:
            below = int(np.count_nonzero(region <= threshold))
            overlap += 1.0 - below / len(region)
        pros.append(overlap / len(regions))
    return np.array(fprs[::-1]), np.array(pros[::-1])


def slow_trapezoid(x: list[float], y: list[float], x_max: float) -> float:
    """Loop version of the reference trapezoid (all points finite, x_max inside the range)."""
    correction = 0.0
    if x_max not in x:
        ins = bisect.bisect(x, x_max)
        assert 0 < ins < len(x)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    area = 0.0
    kept = [(a, b) for a, b in zip(x, y, strict=True) if a <= x_max]
    for (x0, y0), (x1, y1) in itertools.pairwise(kept):
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area + correction


def random_masks(rng: np.random.Generator, n: int, h: int, w: int, speckle: float = 0.03) -> np.ndarray:
    """(n, h, w) bool masks with rectangles of varied sizes, scattered single pixels and diagonal pairs."""
    masks = np.zeros((n, h, w), dtype=bool)
    for mask in masks:
        for _ in range(rng.integers(0, 4)):
            rh, rw = rng.integers(1, max(2, h // 3)), rng.integers(1, max(2, w // 3))
            top, left = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
            mask[top : top + rh, left : left + rw] = True
        mask |= rng.random((h, w)) < speckle
        for _ in range(rng.integers(0, 3)):  # diagonal pairs: one region under 8-connectivity
            r, c = rng.integers(0, h - 1), rng.integers(0, w - 1)
            mask[r, c] = mask[r + 1, c + 1] = True
    return masks


# ----------------------------------------------------------------------------------------------------
# AUROC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_auroc_matches_brute_force_mann_whitney_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=60)
    labels[:2] = [0, 1]
    scores = rng.integers(0, 6, size=60).astype(np.float64) + 0.5 * labels  # many ties, some separation
    assert image_auroc(labels, scores) == pytest.approx(mann_whitney_auc(labels, scores), abs=1e-12)
    assert image_auroc(labels.astype(bool), scores.astype(np.float32)) == pytest.approx(
        mann_whitney_auc(labels, scores), abs=1e-12
    )


def test_image_auroc_simple_values() -> None:
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert image_auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_auroc_matches_brute_force_mann_whitney_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = rng.random((3, 6, 7)) < 0.3
    maps = rng.integers(0, 8, size=(3, 6, 7)).astype(np.float64) + masks * rng.integers(0, 3, size=(3, 6, 7))
    expected = mann_whitney_auc(masks, maps)
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(masks.astype(np.uint8), maps.astype(np.float32)) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# AU-PRO by hand


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Two 4x4 maps; image 0 is all good, image 1 holds two regions (4 anomalous pixels, 28 ok pixels).

    mask 1:        map 1 (ok pixels take 16..27 in raster order; map 0 is 0..15):
        1 . . .        10.5 16   17   18
        . 1 . .        19   20.5 20   21
        . . . .        22   23   24   25
        . . 1 1        26   27   20.5 20.5
    Region A is the diagonal pair (0,0)-(1,1): ONE region under 8-connectivity (two under 4-connectivity).
    Region B is the horizontal pair (3,2)-(3,3); it does not touch A.
    """
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[1, 0, 0] = masks[1, 1, 1] = True  # region A
    masks[1, 3, 2] = masks[1, 3, 3] = True  # region B
    maps = np.zeros((2, 4, 4))
    maps[0] = np.arange(16).reshape(4, 4)
    ok1 = ~masks[1]
    maps[1][ok1] = np.arange(16, 16 + ok1.sum())  # 12 ok pixels: 16..27
    maps[1, 0, 0], maps[1, 1, 1] = 10.5, 20.5
    maps[1, 3, 2] = maps[1, 3, 3] = 20.5
    return masks, maps


def test_pro_curve_hand_computed() -> None:
    # ok scores sorted: 0, 1, ..., 27 (n = 28). num_thresholds = 3:
    #   pos = linspace(0, 27, 3, dtype=int) = [0, 13, 27]  (13.5 floors to 13) -> thresholds 0, 13, 27
    #   fpr = 1 - (pos + 1) / 28 = 27/28, 1/2, 0
    # overlaps (fraction of the region scoring > threshold):
    #   t = 0 : A {10.5, 20.5} -> 1,   B {20.5, 20.5} -> 1  => pro = 1
    #   t = 13: A -> 1/2 (10.5 <= 13), B -> 1               => pro = 3/4   (4-connectivity would give 2/3)
    #   t = 27: A -> 0,                B -> 0               => pro = 0
    # with (1, 1) prepended and reversed: fprs = [0, 1/2, 27/28, 1], pros = [0, 3/4, 1, 1]
    masks, maps = hand_case()
    fprs, pros = pro_curve(masks, maps, num_thresholds=3)
    assert fprs.tolist() == [0.0, 0.5, 1.0 - 1.0 / 28.0, 1.0]
    assert pros.tolist() == [0.0, 0.75, 1.0, 1.0]


def test_au_pro_hand_computed_limit_on_a_sample() -> None:
    # integration limit 0.5 is a curve sample: area = 1/2 * (0 + 3/4) * (1/2 - 0) = 3/16; / 0.5 => 3/8
    masks, maps = hand_case()
    assert au_pro(masks, maps, integration_limit=0.5, num_thresholds=3) == 0.375


def test_au_pro_hand_computed_interpolated_limit() -> None:
    # integration limit 0.25 lies between fpr 0 and 1/2: ins = 1,
    #   y_interp = 0 + (3/4 - 0) * (1/4 - 0) / (1/2 - 0) = 3/8
    #   correction = 1/2 * (3/8 + 0) * (1/4 - 0) = 3/64; only x = 0 is kept, so the trapezoid sum is 0
    #   au_pro = (3/64) / (1/4) = 3/16
    masks, maps = hand_case()
    assert au_pro(masks, maps, integration_limit=0.25, num_thresholds=3) == 0.1875


def test_diagonal_pair_is_one_region() -> None:
    # One 3x3 map; the region is (0,0)-(1,1) (diagonal) plus (2,1) (below (1,1)): one 3-pixel region under
    # 8-connectivity, but {(0,0)} and {(1,1), (2,1)} under 4-connectivity.
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 2, 1] = True  # diagonal + vertical: one 3-pixel region
    maps = np.array([[[9.0, 0.0, 2.0], [3.0, 9.0, 4.0], [6.0, 1.0, 8.0]]])
    # ok scores 0, 2, 3, 4, 6, 8 (n = 6), thresholds at pos 0..5, fpr = 1 - (pos + 1) / 6; region scores
    # {9, 9, 1}. t = 0: nothing below => pro 1. t >= 2: the 1 is below => one region keeps 2/3 (two regions
    # would give (1 + 1/2) / 2 = 3/4). Reversed with (1, 1): fprs 0, 1/6, ..., 5/6, 1; pros 2/3 x5, 1, 1.
    fprs, pros = pro_curve(masks, maps, num_thresholds=6)
    assert fprs.tolist() == pytest.approx([0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0], abs=1e-15)
    assert pros.tolist() == pytest.approx([2 / 3] * 5 + [1.0, 1.0], abs=1e-15)


def test_perfect_map_scores_one() -> None:
    rng = np.random.default_rng(3)
    masks = random_masks(rng, 5, 20, 24)
    masks[0, 2:5, 2:5] = True
    maps = rng.random(masks.shape)  # ok scores in [0, 1)
    maps[masks] += 1.0  # every region pixel above every ok pixel: pro = 1 at every threshold
    _, pros = pro_curve(masks, maps)
    assert np.all(pros == 1.0)
    assert au_pro(masks, maps) == pytest.approx(1.0, abs=1e-12)
    assert au_pro(masks, maps, integration_limit=1.0) == pytest.approx(1.0, abs=1e-12)


def test_constant_map_scores_exactly_zero() -> None:
    # All scores equal c: every threshold is c and every region pixel is <= c, so pro = 0 at every threshold;
    # only the prepended point (1, 1) has pro 1. With n ok pixels the curve is
    #   fprs = [0, 1 - pos/n ..., 1 - 1/n, 1], pros = [0, ..., 0, 1]
    # and 1 - 1/n > 0.3, so the area up to 0.3 is exactly 0.
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 5, 5] = True
    maps = np.full(masks.shape, 0.7)
    _, pros = pro_curve(masks, maps)
    assert np.all(pros[:-1] == 0.0) and pros[-1] == 1.0
    assert au_pro(masks, maps) == 0.0
    # Up to fpr 1 only the last trapezoid counts: 1/2 * (0 + 1) * (1 - (1 - 1/n)) with n = 128 - 7 = 121.
    assert au_pro(masks, maps, integration_limit=1.0) == pytest.approx(0.5 / 121, rel=1e-12)


# ----------------------------------------------------------------------------------------------------
# AU-PRO against the slow reference


@pytest.mark.parametrize(
    ("seed", "shape", "num_thresholds", "decimals"),
    [
        (0, (4, 16, 20), 100, 2),
        (1, (6, 12, 12), 37, 1),  # heavy ties in the scores
        (2, (3, 30, 25), 2, 3),
        (3, (5, 9, 11), 250, 2),  # more thresholds than ok pixels: repeated positions
    ],
)
def test_pro_curve_matches_slow_reference(
    seed: int, shape: tuple[int, int, int], num_thresholds: int, decimals: int
) -> None:
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, *shape)
    masks[0, 0, 0] = True  # at least one region
    maps = np.round(rng.random(shape) + 0.3 * masks, decimals)
    fprs, pros = pro_curve(masks, maps, num_thresholds=num_thresholds)
    slow_fprs, slow_pros = slow_pro_curve(masks, maps, num_thresholds)
    assert fprs.shape == pros.shape == (num_thresholds + 1,)
    np.testing.assert_array_equal(fprs, slow_fprs)
    np.testing.assert_allclose(pros, slow_pros, rtol=0, atol=1e-12)
    assert np.all(np.diff(fprs) >= 0)
    for limit in (0.3, 0.05, 1.0):
        expected = slow_trapezoid(slow_fprs.tolist(), slow_pros.tolist(), limit) / limit
        assert au_pro(masks, maps, limit, num_thresholds) == pytest.approx(expected, abs=1e-12)


def test_pro_curve_mostly_anomalous_masks_repeat_positions() -> None:
    rng = np.random.default_rng(7)
    masks = rng.random((2, 4, 4)) < 0.85
    masks[0, 0, 0], masks[1, 3, 3] = False, False  # at least two ok pixels
    maps = np.round(rng.random((2, 4, 4)), 1)
    fprs, pros = pro_curve(masks, maps, num_thresholds=20)
    slow_fprs, slow_pros = slow_pro_curve(masks, maps, 20)
    np.testing.assert_array_equal(fprs, slow_fprs)
    np.testing.assert_allclose(pros, slow_pros, rtol=0, atol=1e-12)


def test_pro_curve_many_regions_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    import patchbank.metrics as metrics

    monkeypatch.setattr(metrics, "_MAX_COUNT_CELLS", 64)  # force several region blocks
    rng = np.random.default_rng(11)
    masks = np.zeros((3, 15, 15), dtype=bool)
    masks[:, ::2, ::2] = rng.random((3, 8, 8)) < 0.7  # isolated pixels: many singleton regions
    masks[1, 4:9, 4:9] = True
    maps = np.round(rng.random(masks.shape), 2)
    fprs, pros = pro_curve(masks, maps, num_thresholds=30)
    slow_fprs, slow_pros = slow_pro_curve(masks, maps, 30)
    np.testing.assert_array_equal(fprs, slow_fprs)
    np.testing.assert_allclose(pros, slow_pros, rtol=0, atol=1e-12)


def test_au_pro_full_size_matches_slow_reference() -> None:
    rng = np.random.default_rng(5)
    masks = np.zeros((100, 224, 224), dtype=bool)
    masks[::2] = random_masks(rng, 50, 224, 224, speckle=2e-4)  # about 10 speckle regions per image
    maps = rng.random(masks.shape).astype(np.float32) + 0.2 * masks
    fprs, pros = pro_curve(masks, maps)
    slow_fprs, slow_pros = slow_pro_curve(masks, maps.astype(np.float64), 100)
    np.testing.assert_array_equal(fprs, slow_fprs)
    np.testing.assert_allclose(pros, slow_pros, rtol=0, atol=1e-12)
    assert 0.0 < au_pro(masks, maps) < 1.0


# ----------------------------------------------------------------------------------------------------
# trapezoid


def test_trapezoid_without_limit_is_plain_trapezoidal_rule() -> None:
    x = np.array([0.0, 0.5, 0.5, 2.0])
    y = np.array([1.0, 3.0, 1.0, 2.0])
    # (1+3)/2*0.5 + 0 + (1+2)/2*1.5 = 1 + 2.25
    assert trapezoid(x, y) == 3.25


def test_trapezoid_limit_at_a_sample_point() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([0.0, 2.0, 2.0, 10.0])
    # points up to x = 2: (0+2)/2*1 + (2+2)/2*1 = 3, no correction
    assert trapezoid(x, y, x_max=2.0) == 3.0
    assert trapezoid(x, y, x_max=0.0) == 0.0
    assert trapezoid(x, y, x_max=3.0) == 9.0


def test_trapezoid_limit_between_samples_interpolates() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([0.0, 2.0, 2.0, 10.0])
    # x_max = 2.5: ins = 3, y_interp = 2 + (10 - 2) * 0.5 / 1 = 6, correction = 0.5 * (6 + 2) * 0.5 = 2
    # kept points up to 2 give 3 => 5
    assert trapezoid(x, y, x_max=2.5) == 5.0
    # x_max = 0.25: ins = 1, y_interp = 0.5, correction = 0.5 * 0.5 * 0.25 = 0.0625
    assert trapezoid(x, y, x_max=0.25) == 0.0625


def test_trapezoid_drops_non_finite_points_with_warning() -> None:
    x = np.array([0.0, 1.0, np.nan, 2.0])
    y = np.array([0.0, 2.0, 5.0, np.inf])
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert trapezoid(x, y) == 1.0


@pytest.mark.parametrize("x_max", [-0.1, 3.5])
def test_trapezoid_limit_outside_the_range_raises(x_max: float) -> None:
    # the reference asserts 0 < bisect(x, x_max) < len(x)
    x = np.array([0.0, 1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="outside the sampled range"):
        trapezoid(x, np.ones(4), x_max=x_max)


def test_trapezoid_bad_inputs_raise() -> None:
    with pytest.raises(InputError, match="same length"):
        trapezoid(np.zeros(3), np.zeros(4))
    with pytest.raises(InputError, match="ascending"):
        trapezoid(np.array([0.0, 2.0, 1.0]), np.zeros(3))


# ----------------------------------------------------------------------------------------------------
# input errors


def test_image_auroc_one_class_raises() -> None:
    with pytest.raises(InputError, match="needs both good and anomalous samples; got only 3 good samples"):
        image_auroc(np.zeros(3, dtype=int), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(InputError, match="got only 2 anomalous samples"):
        image_auroc(np.ones(2, dtype=int), np.array([0.1, 0.2]))


def test_image_auroc_malformed_inputs_raise() -> None:
    with pytest.raises(InputError, match="2 labels but 3 scores"):
        image_auroc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(InputError, match="only 0 and 1"):
        image_auroc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(InputError, match="non-finite"):
        image_auroc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(InputError, match="1-D"):
        image_auroc(np.array([[0, 1]]), np.array([[0.1, 0.2]]))


def test_pixel_auroc_one_class_raises() -> None:
    maps = np.random.default_rng(0).random((2, 3, 3))
    with pytest.raises(
        InputError, match="pixel AUROC needs both good and anomalous pixels; got only 18 good"
    ):
        pixel_auroc(np.zeros((2, 3, 3), dtype=bool), maps)
    with pytest.raises(InputError, match="got only 18 anomalous pixels"):
        pixel_auroc(np.ones((2, 3, 3), dtype=bool), maps)


def test_mask_and_map_shapes_must_match() -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    with pytest.raises(InputError, match="differ in shape"):
        pixel_auroc(masks, np.zeros((2, 4, 5)))
    with pytest.raises(InputError, match=r"\(N, H, W\)"):
        au_pro(masks[0], np.zeros((4, 4)))
    with pytest.raises(InputError, match="only 0 and 1"):
        au_pro(masks * 255, np.zeros((2, 4, 4)))
    with pytest.raises(InputError, match="non-finite"):
        au_pro(masks, np.full((2, 4, 4), np.inf))


def test_au_pro_without_regions_raises() -> None:
    with pytest.raises(InputError, match="AU-PRO needs at least one ground-truth region"):
        au_pro(np.zeros((3, 4, 4), dtype=bool), np.zeros((3, 4, 4)))


def test_au_pro_without_ok_pixels_raises() -> None:
    with pytest.raises(InputError, match="at least one anomaly-free pixel"):
        pro_curve(np.ones((1, 4, 4), dtype=bool), np.zeros((1, 4, 4)))


@pytest.mark.parametrize("limit", [0.0, -0.3, 1.5, float("nan")])
def test_au_pro_integration_limit_out_of_range_raises(limit: float) -> None:
    masks, maps = hand_case()
    with pytest.raises(InputError, match="integration_limit"):
        au_pro(masks, maps, integration_limit=limit)


@pytest.mark.parametrize("num_thresholds", [1, 0, 2.5, True])
def test_bad_num_thresholds_raises(num_thresholds: object) -> None:
    masks, maps = hand_case()
    with pytest.raises(InputError, match="num_thresholds"):
        pro_curve(masks, maps, num_thresholds=num_thresholds)  # type: ignore[arg-type]
