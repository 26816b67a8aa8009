"""Point metrics against brute-force computations: pairwise AUROC, regions by flood fill over every pair of
points, and the PRO curve threshold by threshold with a plain trapezoid."""

from __future__ import annotations

import numpy as np
import pytest

from patchbank.errors import InputError
from patchbank.points.metrics import (
    RADIUS_FACTOR,
    object_auroc,
    point_au_pro,
    point_auroc,
    point_regions,
    sampling_spacing,
)


def brute_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a defective > score of a good), ties counting 1/2, over every pair."""
    bad, good = scores[labels.astype(bool)], scores[~labels.astype(bool)]
    wins = (bad[:, None] > good[None, :]).sum() + 0.5 * (bad[:, None] == good[None, :]).sum()
    return float(wins / (len(bad) * len(good)))


def brute_regions(points: np.ndarray, labels: np.ndarray) -> list[set[int]]:
    """Connected defective points by flood fill, linked within RADIUS_FACTOR x the median nearest distance."""
    d = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(d, np.inf)
    radius = RADIUS_FACTOR * np.median(d.min(axis=1))
    left, regions = set(np.flatnonzero(labels).tolist()), []
    while left:
        todo, region = [left.pop()], set()
        while todo:
            i = todo.pop()
            region.add(i)
            near = {j for j in left if d[i, j] <= radius}
            left -= near
            todo.extend(near)
        regions.append(region)
    return regions


def brute_au_pro(clouds, labels, scores, limit=0.3, steps=100) -> float:
    regions = []
    for c, (points, y) in enumerate(zip(clouds, labels, strict=True)):
        regions += [(c, sorted(r)) for r in brute_regions(points, y)]
    good = np.sort(np.concatenate([s[~y] for s, y in zip(scores, labels, strict=True)]))
    fprs, pros = [1.0], [1.0]
    for pos in np.linspace(0, len(good) - 1, steps).astype(int):
        t = good[pos]
        fprs.append(1 - (pos + 1) / len(good))
        pros.append(np.mean([np.mean(scores[c][r] > t) for c, r in regions]))
    x, y = np.array(fprs[::-1]), np.array(pros[::-1])
    area = 0.0
    for i in range(1, len(x)):
        if x[i] <= limit:
            area += (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2
        elif x[i - 1] < limit:
            y_limit = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
            area += (limit - x[i - 1]) * (y_limit + y[i - 1]) / 2
    return area / limit


@pytest.fixture(scope="module")
def clouds() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Three jittered 20 x 20 grids: one good, one with one square defect, one with two apart."""
    rng = np.random.default_rng(7)
    u, v = np.meshgrid(np.arange(20.0), np.arange(20.0))
    grid = np.stack([u.ravel(), v.ravel(), np.zeros(400)], axis=1)
    points, labels, scores = [], [], []
    for patches in ([], [(3, 3, 5)], [(2, 12, 4), (13, 4, 3)]):
        p = grid + rng.normal(scale=0.1, size=grid.shape)
        y = np.zeros(400, dtype=bool)
        for r, c, w in patches:
            y |= (grid[:, 0] >= c) & (grid[:, 0] < c + w) & (grid[:, 1] >= r) & (grid[:, 1] < r + w)
        points.append(p)
        labels.append(y)
        scores.append(rng.normal(size=400) + 1.5 * y)
    return points, labels, scores


def test_regions_are_the_connected_defective_points(clouds) -> None:
    points, labels, _ = clouds
    for p, y in zip(points, labels, strict=True):
        regions = point_regions(p, y)
        assert (regions > 0).sum() == y.sum() and (regions[~y] == 0).all()
        found = [set(np.flatnonzero(regions == k).tolist()) for k in range(1, regions.max() + 1)]
        assert sorted(map(sorted, found)) == sorted(map(sorted, brute_regions(p, y)))
    assert point_regions(points[2], labels[2]).max() == 2
    d = np.linalg.norm(points[0][:, None] - points[0][None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert sampling_spacing(points[0]) == pytest.approx(np.median(d.min(axis=1)))


def test_aurocs_match_every_pair(clouds) -> None:
    _, labels, scores = clouds
    y, s = np.concatenate(labels), np.concatenate(scores)
    assert point_auroc(labels, scores) == pytest.approx(brute_auroc(y, s), abs=1e-12)
    objects = np.array([0.2, 0.9, 0.4, 0.4, 0.1])
    defective = np.array([0, 1, 1, 0, 0])
    assert object_auroc(defective, objects) == pytest.approx(brute_auroc(defective, objects))


def test_au_pro_matches_the_brute_force_curve(clouds) -> None:
    points, labels, scores = clouds
    assert point_au_pro(points, labels, scores) == pytest.approx(
        brute_au_pro(points, labels, scores), abs=1e-9
    )
    assert point_au_pro(points, labels, scores, integration_limit=1.0, num_thresholds=20) == pytest.approx(
        brute_au_pro(points, labels, scores, 1.0, 20), abs=1e-9
    )
    perfect = [y.astype(float) for y in labels]
    assert point_au_pro(points, labels, perfect) == pytest.approx(1.0)


def test_malformed_input_is_refused(clouds) -> None:
    points, labels, scores = clouds
    with pytest.raises(InputError, match="cloud 1"):
        point_auroc(labels, [scores[0], scores[1][:10], scores[2]])
    with pytest.raises(InputError, match="both good and anomalous points"):
        point_auroc(labels[:1], scores[:1])
    with pytest.raises(InputError, match="at least one ground-truth region of points"):
        point_au_pro(points[:1], labels[:1], scores[:1])
    with pytest.raises(InputError, match="non-finite"):
        point_au_pro(points, labels, [scores[0], scores[1] * np.nan, scores[2]])
    with pytest.raises(InputError, match="integration_limit"):
        point_au_pro(points, labels, scores, integration_limit=0.0)
