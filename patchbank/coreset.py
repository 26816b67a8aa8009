"""Coreset samplers by name, one interface: ``run(features) -> indices`` (as patchcore-inspection's).

``greedy``: greedy k-center (PatchCore, BTF, anomalib) from index 0 on a sparse random projection
(Johnson-Lindenstrauss dimension for eps 0.9, as sklearn's SparseRandomProjection; the raw features when
that would not reduce the dimension, e.g. FPFH's 33-d). Float32 on CPU or CUDA; memory stays O(N * k):
one running min-distance vector, never an N x N matrix. ``identity`` keeps every patch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from patchbank.errors import InputError


class CoresetSpec(BaseModel):
    """How a bank's coreset was chosen (stored in the manifest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sampler: str = Field("greedy", description="sampler name: greedy | identity")
    ratio: float = Field(0.1, gt=0, le=1, description="fraction of training patches kept")
    eps: float = Field(0.9, gt=0, lt=1, description="sparse random projection eps (Johnson-Lindenstrauss)")
    seed: int = Field(0, description="seed of the random projection")


class Sampler(ABC):
    name: ClassVar[str]

    def __init__(self, spec: CoresetSpec, device: str = "cpu", progress: bool = True) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.progress = progress
        self.projected_dim: int | None = None

    @abstractmethod
    def run(self, features: np.ndarray) -> np.ndarray:
        """(N, D) float32 features -> (M,) int64 indices of the kept rows, in selection order."""


class IdentitySampler(Sampler):
    name = "identity"

    def run(self, features: np.ndarray) -> np.ndarray:
        return np.arange(len(features), dtype=np.int64)


def projection_matrix(n_samples: int, dim: int, eps: float, seed: int) -> np.ndarray | None:
    """(k, dim) float32 sparse random projection (sklearn's, densified), or None when k >= dim."""
    from sklearn.random_projection import SparseRandomProjection, johnson_lindenstrauss_min_dim

    k = int(johnson_lindenstrauss_min_dim(n_samples, eps=eps))
    if k >= dim:
        return None
    proj = SparseRandomProjection(n_components=k, random_state=seed)
    proj.fit(np.zeros((1, dim), dtype=np.float32))
    return np.asarray(proj.components_.todense(), dtype=np.float32)


class GreedySampler(Sampler):
    name = "greedy"

    def run(self, features: np.ndarray) -> np.ndarray:
        n = len(features)
        m = max(1, int(self.spec.ratio * n))
        z = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        proj = projection_matrix(n, z.shape[1], self.spec.eps, self.spec.seed)
        if proj is not None:
            z = z @ torch.from_numpy(proj).to(self.device).T
        self.projected_dim = int(z.shape[1])
        return greedy_k_center(z, m, progress=self.progress)


def greedy_k_center(z: torch.Tensor, m: int, progress: bool = True) -> np.ndarray:
    """Greedy k-center on (N, k) rows: start at row 0, repeatedly add the row farthest from the chosen set.

    Squared distances via ||a||^2 - 2 a.b + ||b||^2 (one matrix-vector product per step, no N x k temporary).
    """
    sq = (z * z).sum(dim=1)
    chosen = torch.empty(m, dtype=torch.int64, device=z.device)
    chosen[0] = 0
    min_d = (sq - 2 * (z @ z[0]) + sq[0]).clamp_min_(0)
    min_d[0] = 0
    for i in tqdm(range(1, m), desc="coreset", unit="pt", disable=not progress, mininterval=0.5):
        idx = torch.argmax(min_d)
        chosen[i] = idx
        d = (sq - 2 * (z @ z[idx]) + sq[idx]).clamp_min_(0)
        torch.minimum(min_d, d, out=min_d)
        min_d[idx] = 0
    return chosen.cpu().numpy()


SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (GreedySampler, IdentitySampler)}


def create_sampler(spec: CoresetSpec, device: str = "cpu", progress: bool = True, **_: Any) -> Sampler:
    if spec.sampler not in SAMPLERS:
        raise InputError(f"unknown coreset sampler {spec.sampler!r}; known: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[spec.sampler](spec, device=device, progress=progress)
