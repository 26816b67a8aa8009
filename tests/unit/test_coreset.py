"""Greedy k-center (torch loop and numba kernel) against brute-force references, projection, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from patchbank import coreset
from patchbank.coreset import (
    CoresetSpec,
    GreedySampler,
    create_sampler,
    greedy_k_center,
    greedy_k_center_cpu,
    projection_matrix,
)
from patchbank.errors import InputError


def reference_k_center(z: np.ndarray, m: int) -> list[int]:
    """Textbook greedy k-center from row 0 with exact distances to the chosen set (float64)."""
    chosen = [0]
    min_d = np.linalg.norm(z - z[0], axis=1)
    for _ in range(m - 1):
        nxt = int(np.argmax(min_d))
        chosen.append(nxt)
        min_d = np.minimum(min_d, np.linalg.norm(z - z[nxt], axis=1))
    return chosen


def test_greedy_matches_reference_on_raw_features() -> None:
    import torch

    z = np.random.default_rng(0).normal(size=(2000, 33)).astype(np.float32)
    got = greedy_k_center(torch.from_numpy(z), 200, progress=False)
    assert got.tolist() == reference_k_center(z.astype(np.float64), 200)


def test_fpfh_dimension_is_not_projected() -> None:
    z = np.random.default_rng(1).normal(size=(3000, 33)).astype(np.float32)
    sampler = create_sampler(CoresetSpec(ratio=0.1), progress=False)
    idx = sampler.run(z)
    assert sampler.projected_dim == 33
    assert len(idx) == 300 and len(set(idx.tolist())) == 300
    assert idx.tolist() == reference_k_center(z.astype(np.float64), 300)


def test_high_dimension_is_projected_to_the_jl_dimension() -> None:
    from sklearn.random_projection import johnson_lindenstrauss_min_dim

    n = 1500
    z = np.random.default_rng(2).normal(size=(n, 1569)).astype(np.float32)
    proj = projection_matrix(n, 1569, eps=0.9, seed=0)
    assert proj is not None and proj.shape == (johnson_lindenstrauss_min_dim(n, eps=0.9), 1569)
    sampler = create_sampler(CoresetSpec(ratio=0.05, seed=0), progress=False)
    idx = sampler.run(z)
    assert sampler.projected_dim == proj.shape[0]
    assert idx[0] == 0 and len(idx) == 75
    assert idx.tolist() == reference_k_center((z @ proj.T).astype(np.float64), 75)
    # the same seed gives the same coreset, another seed (another projection) another one
    assert create_sampler(CoresetSpec(ratio=0.05, seed=0), progress=False).run(z).tolist() == idx.tolist()
    assert create_sampler(CoresetSpec(ratio=0.05, seed=1), progress=False).run(z).tolist() != idx.tolist()


def test_identity_and_unknown_samplers() -> None:
    z = np.zeros((10, 4), np.float32)
    assert create_sampler(CoresetSpec(sampler="identity")).run(z).tolist() == list(range(10))
    with pytest.raises(InputError, match="unknown coreset sampler"):
        create_sampler(CoresetSpec(sampler="random"))


# --- the numba CPU kernel against the torch loop ---------------------------------------------------------


def torch_k_center(z: np.ndarray, m: int) -> list[int]:
    import torch

    return greedy_k_center(torch.from_numpy(z), m, progress=False).tolist()


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Rows around 20 well separated centres: the case the triangle-inequality pruning is for."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(20, dim))
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize(
    ("n", "dim", "m", "seed"), [(2000, 33, 300, 3), (3000, 250, 300, 4), (777, 7, 777, 6)]
)
def test_numba_kernel_matches_the_torch_loop(n: int, dim: int, m: int, seed: int) -> None:
    z = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    got, _ = greedy_k_center_cpu(z, m, progress=False)
    assert got.dtype == np.int64
    assert got.tolist() == torch_k_center(z, m) == reference_k_center(z.astype(np.float64), m)


@pytest.mark.parametrize(
    ("n", "dim", "m", "seed"), [(2000, 33, 300, 3), (3000, 250, 300, 4), (1500, 2, 400, 5)]
)
def test_numba_kernel_follows_exact_distances_where_torch_rounds(n: int, dim: int, m: int, seed: int) -> None:
    # far from the origin (clusters) or once candidates are close (2-d), the torch loop's ||a||^2 - 2 a.b +
    # ||b||^2 in float32 swaps near-equal candidates; the kernel's float64 sums do not
    z = clustered(n, dim, seed)
    got, _ = greedy_k_center_cpu(z, m, progress=False)
    assert got.tolist() == reference_k_center(z.astype(np.float64), m)


def test_exact_ties_go_to_the_lowest_row_index() -> None:
    # small integers: every distance is exact in float32 (torch's expanded form) and float64 (numba), so
    # equal distances are equal; most steps have tied candidates, and most points appear several times
    rng = np.random.default_rng(7)
    centres = rng.integers(0, 12, size=(6, 1, 4)) * 4
    points = np.unique((centres + rng.integers(-1, 2, size=(6, 8, 4))).reshape(-1, 4), axis=0)
    z = points[rng.permutation(np.repeat(np.arange(len(points)), rng.integers(1, 5, len(points))))]
    z = z.astype(np.float32)
    m = len(points)  # then every distinct point has been taken once
    got, _ = greedy_k_center_cpu(z, m, progress=False)
    assert got.tolist() == torch_k_center(z, m)
    first_of_each = {tuple(row): i for i, row in reversed(list(enumerate(z.tolist())))}
    assert sorted(got.tolist()) == sorted(first_of_each.values())
    assert got.tolist() == exact_k_center_lowest_index(z.astype(np.int64), m)


def exact_k_center_lowest_index(z: np.ndarray, m: int) -> list[int]:
    """Integer squared distances; np.argmax takes the first (lowest) index among equal maxima."""
    chosen = [0]
    min_d = ((z - z[0]) ** 2).sum(axis=1)
    for _ in range(m - 1):
        chosen.append(int(np.argmax(min_d)))
        min_d = np.minimum(min_d, ((z - z[chosen[-1]]) ** 2).sum(axis=1))
    return chosen


@pytest.mark.parametrize("steps_per_call", [1, 7, 64])
def test_chunked_runs_equal_one_shot(steps_per_call: int) -> None:
    z = clustered(2500, 16, 8)
    one_shot, fraction = greedy_k_center_cpu(z, 500, progress=False, steps_per_call=10_000)
    chunked, chunked_fraction = greedy_k_center_cpu(z, 500, progress=False, steps_per_call=steps_per_call)
    assert chunked.tolist() == one_shot.tolist()
    assert chunked_fraction == fraction


def test_pruning_skips_most_distances_on_clustered_data() -> None:
    _, fraction = greedy_k_center_cpu(clustered(5000, 16, 9), 500, progress=False)
    assert fraction < 0.2


def test_one_and_all_rows() -> None:
    z = np.random.default_rng(10).normal(size=(300, 5)).astype(np.float32)
    assert greedy_k_center_cpu(z, 1, progress=False)[0].tolist() == [0]
    assert greedy_k_center_cpu(z[:1], 1, progress=False)[0].tolist() == [0]
    everything, _ = greedy_k_center_cpu(z, 300, progress=False)
    assert sorted(everything.tolist()) == list(range(300))
    assert everything.tolist() == torch_k_center(z, 300)
    with pytest.raises(InputError, match="at least one row"):
        greedy_k_center_cpu(z[:0], 1, progress=False)


def test_sampler_uses_numba_on_the_cpu_and_torch_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    z = np.random.default_rng(11).normal(size=(3000, 40)).astype(np.float32)
    sampler = create_sampler(CoresetSpec(ratio=0.05), progress=False)
    idx = sampler.run(z)
    assert isinstance(sampler, GreedySampler) and sampler.evaluated_fraction is not None
    monkeypatch.setattr(coreset, "_numba_kernel", lambda: None)  # as on the GPU image
    fallback = create_sampler(CoresetSpec(ratio=0.05), progress=False)
    assert fallback.run(z).tolist() == idx.tolist() == torch_k_center(z, 150)
    assert isinstance(fallback, GreedySampler) and fallback.evaluated_fraction is None
