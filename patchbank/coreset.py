"""Coreset samplers by name, one interface: ``run(features) -> indices`` (as patchcore-inspection's).

``greedy``: greedy k-center (PatchCore, BTF, anomalib) from index 0 on a sparse random projection
(Johnson-Lindenstrauss dimension for eps 0.9, as sklearn's SparseRandomProjection; the raw features when
that would not reduce the dimension, e.g. FPFH's 33-d). Float32 features on CPU or CUDA; memory stays
O(N * k), never an N x N matrix. On CUDA (and on a CPU without numba) a torch loop streams every row each
step; on the CPU a numba kernel prunes with the triangle inequality and touches a small fraction of them
(about 0.6% of the row-to-centre distances for a 10% coreset of 78,400 RGB+FPFH patches: ~1.5-2 s instead
of ~80 s on two cores).
``identity`` keeps every patch.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from patchbank.errors import InputError
from patchbank.registry import Part, Registry

if TYPE_CHECKING:
    import torch


class CoresetSpec(BaseModel):
    """How a bank's coreset was chosen (stored in the manifest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sampler: str = Field("greedy", description="sampler name: greedy | identity")
    ratio: float = Field(0.1, gt=0, le=1, description="fraction of training patches kept")
    eps: float = Field(0.9, gt=0, lt=1, description="sparse random projection eps (Johnson-Lindenstrauss)")
    seed: int = Field(0, description="seed of the random projection")


class Sampler(Part, ABC):
    """One interface for every sampler: ``run(features) -> indices``."""

    def __init__(self, spec: CoresetSpec, device: str = "cpu", progress: bool = True) -> None:
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.progress = progress
        self.projected_dim: int | None = None

    @abstractmethod
    def run(self, features: np.ndarray) -> np.ndarray:
        """(N, D) float32 features -> (M,) int64 indices of the kept rows, in selection order."""


SAMPLERS: Registry[type[Sampler]] = Registry("coreset sampler")
register_sampler = SAMPLERS.register


@register_sampler("identity")
class IdentitySampler(Sampler):
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


@register_sampler("greedy")
class GreedySampler(Sampler):
    def __init__(self, spec: CoresetSpec, device: str = "cpu", progress: bool = True) -> None:
        super().__init__(spec, device=device, progress=progress)
        self.evaluated_fraction: float | None = None  # numba path: share of row-to-centre distances computed

    def run(self, features: np.ndarray) -> np.ndarray:
        n = len(features)
        m = max(1, int(self.spec.ratio * n))
        import torch

        z = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        proj = projection_matrix(n, z.shape[1], self.spec.eps, self.spec.seed)
        if proj is not None:
            z = z @ torch.from_numpy(proj).to(self.device).T
        self.projected_dim = int(z.shape[1])
        if z.device.type == "cpu" and _numba_kernel() is not None:
            chosen, self.evaluated_fraction = greedy_k_center_cpu(z.numpy(), m, progress=self.progress)
            return chosen
        return greedy_k_center(z, m, progress=self.progress)


def greedy_k_center(z: torch.Tensor, m: int, progress: bool = True) -> np.ndarray:
    """Greedy k-center on (N, k) rows: start at row 0, repeatedly add the row farthest from the chosen set.

    Squared distances via ||a||^2 - 2 a.b + ||b||^2 (one matrix-vector product per step, no N x k temporary).
    The CUDA path (and the CPU one without numba). Its float32 cancellation (errors ~1e-7 of ||a||^2) can
    swap two candidates whose distances are within ~1e-5 of each other, where :func:`greedy_k_center_cpu`
    follows exact distances.
    """
    sq = (z * z).sum(dim=1)
    import torch

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


def weighted_k_center(z: torch.Tensor, weights: torch.Tensor, m: int, progress: bool = True) -> np.ndarray:
    """Greedy k-center where each row's claim is its weight times its distance to the chosen set: the
    heaviest row first, then repeatedly the row with the largest weighted distance. A living bank's refresh
    (``refresh-bank``): new vectors weigh 1, old ones their retention, so an old vector far from everything
    chosen stays only while it is still recalled. (M,) int64 indices in selection order."""
    import torch

    n = len(z)
    if not 0 < m <= n:
        raise InputError(f"cannot choose {m} of {n} rows")
    sq = (z * z).sum(dim=1)
    w = weights.to(z.device, torch.float64)
    min_d = torch.full((n,), float("inf"), dtype=torch.float64, device=z.device)
    chosen = torch.empty(m, dtype=torch.int64, device=z.device)
    idx = torch.argmax(w)
    for i in tqdm(range(m), desc="coreset", unit="pt", disable=not progress, mininterval=0.5):
        chosen[i] = idx
        d = (sq - 2 * (z @ z[idx]) + sq[idx]).clamp_min_(0).double()
        torch.minimum(min_d, d, out=min_d)
        min_d[idx] = 0
        idx = torch.argmax(w * min_d.sqrt())
    return chosen.cpu().numpy()


def greedy_k_center_cpu(
    z: np.ndarray, m: int, progress: bool = True, steps_per_call: int = 256
) -> tuple[np.ndarray, float]:
    """Greedy k-center as :func:`greedy_k_center`, on the CPU with numba.

    Returns the (M,) indices and the fraction of the N x M row-to-centre distances it evaluated. Distances
    are sums of squared float32 differences in float64, so the picks are those of exact arithmetic; ties go
    to the lowest row index, as ``torch.argmax``. The kernel runs ``steps_per_call`` steps per call, the
    state carried in :class:`_KCenterState`, so that the progress bar moves. One thread: a pruned step is
    ~0.2 ms of work, less than a fork/join costs on shared, oversubscribed cores (milliseconds).
    """
    kernel = _numba_kernel()
    if kernel is None:
        raise RuntimeError("greedy_k_center_cpu needs numba")
    if not len(z):
        raise InputError("greedy k-center needs at least one row")
    z = np.ascontiguousarray(z, dtype=np.float32)
    state = _KCenterState.initial(len(z), z.shape[1], m)
    evaluated = 0
    with tqdm(total=m, desc="coreset", unit="pt", disable=not progress, mininterval=0.5) as bar:
        for start in range(0, m, steps_per_call):
            stop = min(m, start + steps_per_call)
            evaluated += kernel(z, state, start, stop)
            bar.update(stop - start)
    return state.chosen, evaluated / (len(z) * m)


class _KCenterState(NamedTuple):
    """The numba kernel's state between calls: rows grouped into clusters by their nearest centre.

    A new centre c can take rows only from a cluster whose centre b has dist(c, b) < 2 * (distance of its
    farthest member): otherwise dist(x, c) >= dist(c, b) - dist(x, b) >= dist(x, b) for every member x
    (triangle inequality). In a checked cluster, row x is skipped when dist(c, b) >= 2 dist(x, b). Every
    centre is at least dist(c, nearest centre) from c, so clusters whose farthest member lies within half of
    that need no centre-to-centre distance at all. The argmax runs over the clusters' farthest rows.
    Cluster 0 holds the rows no centre has claimed yet (at infinite distance); centre i is cluster i + 1.
    """

    chosen: np.ndarray  # (M,) int64: the selection; step i sets chosen[i + 1]
    centres: np.ndarray  # (M + 1, D) float32: each cluster's centre
    min_d: np.ndarray  # (N,) float64: each row's squared distance to its nearest centre
    pool: np.ndarray  # (3N,) int32: each cluster's rows in one segment; rows that move are appended
    segments: np.ndarray  # (M + 2, 2) int64: (start, length) in the pool per cluster; last: (pool end, 0)
    farthest: np.ndarray  # (M + 1,) float64: the largest min_d in each cluster ...
    farthest_row: np.ndarray  # (M + 1,) int64: ... at this row (the lowest index on ties)

    @classmethod
    def initial(cls, n: int, dim: int, m: int) -> _KCenterState:
        pool = np.empty(3 * n, np.int32)
        pool[:n] = np.arange(n, dtype=np.int32)
        segments = np.zeros((m + 2, 2), np.int64)
        segments[0] = (0, n)
        segments[m + 1] = (n, 0)
        farthest = np.full(m + 1, -1.0)
        farthest[0] = np.inf
        return cls(
            chosen=np.zeros(m, np.int64),
            centres=np.zeros((m + 1, dim), np.float32),
            min_d=np.full(n, np.inf),
            pool=pool,
            segments=segments,
            farthest=farthest,
            farthest_row=np.zeros(m + 1, np.int64),
        )


@functools.cache
def _numba_kernel() -> Callable[[np.ndarray, _KCenterState, int, int], int] | None:
    """The jitted greedy k-center steps (compiled on first use, cached on disk), or None without numba.

    numba is imported here, not with the module: the GPU image has only torch and numpy, and scoring, which
    imports this module for :class:`CoresetSpec`, never needs it.
    """
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def steps(z, s, start, stop):
        """Greedy steps start..stop - 1 on the state s (see _KCenterState); returns distances evaluated."""
        chosen, centres, min_d, pool, segments, farthest, farthest_row = s
        n, dim = z.shape
        m = chosen.shape[0]
        end = m + 1
        # centre-to-centre distances are float32 sums: shrink them by their worst rounding before pruning
        shrink = 1.0 - (dim + 8) * 2.0**-23
        evaluated = 0
        for i in range(start, stop):
            c = chosen[i]
            new = i + 1
            centres[new] = z[c]
            if segments[end, 0] + n > pool.shape[0]:  # compact the pool: moved rows left holes behind
                spare = np.empty(n, np.int32)
                w = 0
                for j in range(new):
                    lo, ln = segments[j, 0], segments[j, 1]
                    spare[w : w + ln] = pool[lo : lo + ln]
                    segments[j, 0] = w
                    w += ln
                pool[:n] = spare
                segments[end, 0] = n
            near = min_d[c] * shrink if i > 0 else -1.0  # no centre is closer to c (squared)
            tail = segments[new, 0] = segments[end, 0]  # rows that move to c are appended from here
            top, top_row = -1.0, n  # the farthest row over all clusters (the lowest index on ties)
            for j in range(new):
                lo, ln = segments[j, 0], segments[j, 1]
                bound = 4.0 * farthest[j]
                cc = -1.0  # squared centre-to-centre distance (cluster 0: no centre, check every row)
                if ln > 0 and bound > near and j > 0:
                    acc = np.float32(0.0)
                    for k in range(dim):
                        t = centres[j, k] - centres[new, k]
                        acc += t * t
                    cc = np.float64(acc) * shrink
                if ln > 0 and bound > near and cc < bound:
                    w, best, best_row = lo, -1.0, n
                    for q in range(lo, lo + ln):
                        x = pool[q]
                        d_old = min_d[x]
                        if cc < 4.0 * d_old:
                            d = 0.0
                            for k in range(dim):
                                t = np.float64(z[x, k]) - np.float64(centres[new, k])
                                d += t * t
                            evaluated += 1
                            if d < d_old:
                                min_d[x] = d
                                pool[tail] = x
                                tail += 1
                                continue
                        pool[w] = x
                        w += 1
                        if d_old > best or (d_old == best and x < best_row):
                            best, best_row = d_old, x
                    segments[j, 1] = w - lo
                    farthest[j], farthest_row[j] = best, best_row
                f, r = farthest[j], farthest_row[j]
                if segments[j, 1] > 0 and (f > top or (f == top and r < top_row)):
                    top, top_row = f, r
            lo = segments[new, 0]
            segments[new, 1] = tail - lo
            segments[end, 0] = tail
            best, best_row = -1.0, n
            for q in range(lo, tail):
                x = pool[q]
                if min_d[x] > best or (min_d[x] == best and x < best_row):
                    best, best_row = min_d[x], x
            farthest[new], farthest_row[new] = best, best_row
            if tail > lo and (best > top or (best == top and best_row < top_row)):
                top_row = best_row
            if new < m:
                chosen[new] = top_row
        return evaluated

    return steps


def create_sampler(spec: CoresetSpec, device: str = "cpu", progress: bool = True, **_: Any) -> Sampler:
    return SAMPLERS.get(spec.sampler)(spec, device=device, progress=progress)
