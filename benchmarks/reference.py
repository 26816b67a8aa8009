"""The reference path ``bench`` measures the product's path against: BTF's recipe as published, one sample
at a time.

- input: decoded and prepared by :meth:`patchbank.predict.Sample.prepare`, as the product does (BTF's
  transforms, so the two paths see the same pixels and points);
- features: batch of one, FPFH by Open3D's KD-tree (``neighbours=kdtree``), the same RGB backbone in fp32;
- coreset: BTF's ``get_coreset_idx_randomp``: sklearn's SparseRandomProjection (eps 0.9, the fast path's
  seed, so both project alike), then greedy k-center with ``torch.linalg.norm`` of the difference to the
  last pick at every step;
- bank: the coreset rows as a torch tensor written with ``torch.save``;
- scoring: BTF's ``compute_s_s_map``: ``torch.cdist`` of the 784 patches to the whole bank and the minimum
  per patch, then Eq. 7 with a second ``torch.cdist`` from m* and ``topk``; the map by the product's map
  code (its float blur is the one intended difference from BTF's 8-bit blur).

``bench`` times it under :func:`patchbank.predict.predict`'s stage names (decode, features, search, post),
so the two paths line up stage by stage. A faithful baseline, not a deliberately slow one: it is what the
published code does on a CPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from patchbank.scorer import N_REWEIGHT


def reference_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` of ``method`` as BTF computes them: FPFH by Open3D's KD-tree, the backbone in fp32."""
    opts = {k: dict(v) if isinstance(v, dict) else v for k, v in options.items()}
    if method == "fpfh":
        opts["neighbours"] = "kdtree"
    elif "fpfh" in method:
        opts.setdefault("fpfh", {})["neighbours"] = "kdtree"
    rgb = opts if method == "rgb" else opts.get("rgb", {})
    rgb.pop("precision", None)
    return opts


def btf_coreset(features: np.ndarray, ratio: float, eps: float, seed: int) -> np.ndarray:
    """(N, D) features -> (M,) int64 rows chosen by BTF's greedy coreset, in selection order."""
    from sklearn import random_projection

    z = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    try:
        proj = random_projection.SparseRandomProjection(eps=eps, random_state=seed)
        z = torch.from_numpy(np.asarray(proj.fit_transform(z.numpy()), dtype=np.float32))
    except ValueError:  # the JL dimension exceeds D (FPFH's 33-d): BTF keeps the raw features
        pass
    n = max(1, int(ratio * len(z)))
    select = 0
    last = z[select : select + 1]
    chosen = [select]
    min_d = torch.linalg.norm(z - last, dim=1, keepdim=True)
    for _ in range(n - 1):
        d = torch.linalg.norm(z - last, dim=1, keepdim=True)
        min_d = torch.minimum(d, min_d)
        select = int(torch.argmax(min_d))
        last = z[select : select + 1]
        min_d[select] = 0
        chosen.append(select)
    return np.asarray(chosen, dtype=np.int64)


def btf_search(bank: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(784, D) patches -> (784,) distances to their nearest bank vectors and (784,) those vectors' rows."""
    return torch.min(torch.cdist(patches, bank), dim=1)


def btf_image_score(
    bank: torch.Tensor, patches: torch.Tensor, min_val: torch.Tensor, min_idx: torch.Tensor
) -> float:
    """Eq. 7 as BTF's ``compute_s_s_map`` computes it."""
    s_idx = torch.argmax(min_val)
    s_star = torch.max(min_val)
    m_test = patches[s_idx].unsqueeze(0)
    m_star = bank[min_idx[s_idx]].unsqueeze(0)
    _, nn_idx = torch.topk(torch.cdist(m_star, bank), k=N_REWEIGHT, largest=False)
    m_star_knn = torch.linalg.norm(m_test - bank[nn_idx[0, 1:]], dim=1)
    d = math.sqrt(patches.shape[1])
    w = 1 - torch.exp(s_star / d) / torch.sum(torch.exp(m_star_knn / d))
    return float(w * s_star)
