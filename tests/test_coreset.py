"""Greedy k-center against a brute-force reference, the projection rule, and seeding."""

from __future__ import annotations

import numpy as np
import pytest

from patchbank.coreset import CoresetSpec, create_sampler, greedy_k_center, projection_matrix
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
