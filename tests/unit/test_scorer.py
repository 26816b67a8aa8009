"""The scorer against a brute-force torch.cdist computation (BTF's compute_s_s_map) and a hand-worked case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from patchbank.index import PatchIndex
from patchbank.scorer import blur, score_patches, upsample


def brute_force(bank: torch.Tensor, patches: torch.Tensor) -> tuple[float, torch.Tensor]:
    """BTF's compute_s_s_map with torch.cdist, written out: (image score, 28 x 28 grid)."""
    min_val, min_idx = torch.min(torch.cdist(patches, bank), dim=1)
    s_idx = torch.argmax(min_val)
    s_star = min_val[s_idx]
    m_star = bank[min_idx[s_idx]][None]
    _, nn_idx = torch.topk(torch.cdist(m_star, bank), k=3, largest=False)
    others = torch.linalg.norm(patches[s_idx][None] - bank[nn_idx[0, 1:]], dim=1)
    d = math.sqrt(patches.shape[1])
    w = 1 - torch.exp(s_star / d) / torch.sum(torch.exp(others / d))
    return float(w * s_star), min_val.view(28, 28)


@pytest.mark.parametrize("dim", [33, 1569])
def test_image_scores_and_maps_match_brute_force(dim: int) -> None:
    rng = np.random.default_rng(dim)
    bank = rng.normal(size=(500, dim)).astype(np.float32)
    patches = rng.normal(size=(3, 784, dim)).astype(np.float32)
    patches[1, 100] += 5.0  # one sample with a clear outlier patch
    scores = score_patches(PatchIndex(bank, np.arange(500)), patches)
    for b in range(3):
        expected, grid = brute_force(torch.from_numpy(bank).double(), torch.from_numpy(patches[b]).double())
        assert scores.image[b] == pytest.approx(expected, rel=1e-4)
        np.testing.assert_allclose(scores.patches[b], grid.numpy(), rtol=1e-4)
        up = torch.nn.functional.interpolate(grid[None, None], size=(224, 224), mode="bilinear")[0, 0]
        expected_map = gaussian_filter(up.numpy(), sigma=4, mode="nearest", truncate=4.0)
        np.testing.assert_allclose(scores.maps[b], expected_map, rtol=1e-4)
    assert scores.maps.shape == (3, 224, 224)


def test_image_score_worked_by_hand() -> None:
    """Bank of four 2-d vectors; every test patch sits on (0, 0) except one at (3, 4).

    Nearest bank vector of m_test = (3, 4) is m* = (3, 0), so s* = 4. The 3 nearest bank vectors of m* are
    (3, 0) itself, then (0, 0) and (6, 0), both at 3 ((0, 9) is at sqrt(90)). Their distances to m_test are
    5 and 5. With D = 2: w = 1 - e^(4/sqrt2) / (2 e^(5/sqrt2)) = 1 - e^(-1/sqrt2) / 2, and s = 4 w.
    """
    bank = np.array([[0, 0], [3, 0], [6, 0], [0, 9]], dtype=np.float32)
    patches = np.zeros((1, 784, 2), dtype=np.float32)
    patches[0, 10] = (3, 4)
    scores = score_patches(PatchIndex(bank, np.arange(4)), patches)
    w = 1 - math.exp(-1 / math.sqrt(2)) / 2
    assert scores.image[0] == pytest.approx(4 * w, rel=1e-6)
    assert scores.patches[0].max() == pytest.approx(4.0)
    assert scores.patches[0].reshape(-1)[10] == pytest.approx(4.0)


def test_leave_one_out_excludes_rows() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(50, 8)).astype(np.float32)
    patches = np.repeat(bank[:1][None], 784, axis=1)  # every patch equals bank row 0
    plain = score_patches(PatchIndex(bank, np.arange(50)), patches)
    assert plain.image[0] == pytest.approx(0.0, abs=1e-6)
    exclude = np.zeros(50, dtype=bool)
    exclude[0] = True
    held_out = score_patches(PatchIndex(bank, np.arange(50)), patches, exclude_rows=[exclude])
    nearest_other = np.linalg.norm(bank[1:] - bank[0], axis=1).min()
    assert held_out.patches[0].max() == pytest.approx(nearest_other, rel=1e-5)


def test_blur_preserves_constant_and_mass() -> None:
    const = torch.full((1, 224, 224), 2.5)
    np.testing.assert_allclose(blur(const).numpy(), 2.5, rtol=1e-6)
    spike = torch.zeros(1, 224, 224)
    spike[0, 112, 112] = 1.0
    out = blur(spike)[0]
    assert float(out.sum()) == pytest.approx(1.0, rel=1e-5)
    # sigma 4: the variance of the blurred spike along one axis is 16
    ys = torch.arange(224, dtype=torch.float64)
    marginal = out.double().sum(dim=1)
    assert float((marginal * (ys - 112) ** 2).sum()) == pytest.approx(16.0, rel=1e-3)


def test_upsample_shape() -> None:
    assert upsample(np.zeros((2, 28, 28), np.float32)).shape == (2, 224, 224)


@pytest.mark.parametrize("leave_out", [False, True])
def test_only_the_parts_patches_are_searched(leave_out: bool) -> None:
    """With the part's patches given, only they are searched: their rows and distances are the whole
    search's, the others row 0 at distance 0; the scores (background at the part's lowest) are unchanged."""
    from patchbank.rules import PRODUCT
    from patchbank.scorer import nearest

    rng = np.random.default_rng(7)
    bank = rng.normal(size=(300, 16)).astype(np.float32)
    index = PatchIndex(bank, np.arange(300))
    patches = rng.normal(size=(2, 784, 16)).astype(np.float32)
    keep = rng.random((2, 784)) < 0.4
    ex = [rng.random(300) < 0.1 for _ in range(2)] if leave_out else None
    rows, dists = nearest(index, patches, ex)
    part_rows, part_dists = nearest(index, patches, ex, keep)
    np.testing.assert_array_equal(part_rows[keep], rows[keep])
    np.testing.assert_array_equal(part_dists[keep], dists[keep])
    assert not part_rows[~keep].any() and not part_dists[~keep].any()
    whole = score_patches(index, patches, ex, PRODUCT, keep)
    masked = np.where(keep, dists, np.where(keep, dists, np.inf).min(axis=1, keepdims=True))
    np.testing.assert_allclose(whole.patches.reshape(2, -1), masked, rtol=1e-6)
