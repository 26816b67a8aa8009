"""How a bank turns its patch distances into a map and an image score: the published rule, or the product's.

- ``image_rule``: ``reweighted-max`` is PatchCore's and BTF's (the largest patch distance, reweighted by the
  density of the bank around its nearest vector; :func:`patchbank.scorer.image_scores`). ``map-max`` is the
  largest value of the blurred anomaly map: the blur averages each patch with its neighbours, so one noisy
  patch cannot decide a part alone, while a defect, which covers several patches, keeps its height. With
  the part-only scoring below it adds 0.08 mean I-AUROC and 0.02 AU-PRO to the default method on the demo
  data (docs/BENCHMARKS.md, Detection).
- ``foreground``: patches off the part do not score. The part is the organized cloud's valid points once
  the background plane and stray clusters are removed (:mod:`patchbank.background`, M3DM's preprocessing),
  with the holes inside it filled (a hole through the part is part of the part); a patch is on the part when
  at least ``min_fraction`` of its pixels are, grown by ``dilate`` patches so the outline (where a cut or a
  missing corner shows) still scores. Background patches take the lowest score of the part's patches, in
  the map and in the image score: the table or conveyor under a part never raises an alarm or lights up
  the map. A sample with no part found scores every patch. The part is found first, beside the members
  that need all of the image (a backbone); members that can (FPFH) then compute only the part's patches,
  giving zeros for the others, and only the part's patches are searched: on the demo data, where the part
  and the ring of patches around it are a fifth of the image, FPFH costs about half and the search a fifth.

The published configurations (``fpfh``, ``rgb+fpfh``) keep BTF's rule (reweighted max, every patch), so their
figures stay comparable with the papers; every other method uses :data:`PRODUCT`. A manifest written before
these rules existed reads as :data:`PUBLISHED`, so such a bank scores exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from patchbank.background import BackgroundOptions, remove_background
from patchbank.preprocess import Prepared, valid_points


class ForegroundOptions(BaseModel):
    """Which patches are on the part (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    background: BackgroundOptions = Field(
        default_factory=BackgroundOptions, description="how the background plane and stray points are removed"
    )
    min_fraction: float = Field(
        0.25, gt=0, le=1, description="a patch is on the part when this fraction of its pixels are"
    )
    dilate: int = Field(1, ge=0, le=8, description="patches the part's outline is grown by")


class Scoring(BaseModel):
    """The bank's scoring rule, recorded in its manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_rule: Literal["reweighted-max", "map-max"] = Field(
        "reweighted-max",
        description="image score: reweighted-max (PatchCore/BTF: the largest patch distance, reweighted) or "
        "map-max (the largest value of the blurred map)",
    )
    foreground: ForegroundOptions | None = Field(
        None, description="score only the part's patches (None: every patch, as BTF)"
    )


MASK_STRIDE = 2  # the part's mask is found on every other pixel of the 224 x 224 cloud

PUBLISHED = Scoring()
PRODUCT = Scoring(image_rule="map-max", foreground=ForegroundOptions())


def part_mask(xyz: np.ndarray, opts: ForegroundOptions) -> np.ndarray:
    """(H, W) bool: the part's pixels of an organized cloud (background removed, holes filled)."""
    from scipy import ndimage

    return ndimage.binary_fill_holes(valid_points(remove_background(xyz, opts.background)))


def patch_mask(mask: np.ndarray, grid: int, opts: ForegroundOptions) -> np.ndarray:
    """(grid * grid,) bool, row-major: the patches on the part, from its (H, W) pixel mask."""
    import torch
    from scipy import ndimage

    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    fraction = torch.nn.functional.adaptive_avg_pool2d(t, grid)[0, 0].numpy()
    keep = fraction >= opts.min_fraction
    if opts.dilate and keep.any():
        keep = ndimage.binary_dilation(keep, iterations=opts.dilate)
    return keep.reshape(-1)


def foreground_patches(batch: Sequence[Prepared], grid: int, opts: ForegroundOptions) -> np.ndarray:
    """(B, grid * grid) bool: each sample's patches on the part; all True for a sample with no part found.
    The part is found on every ``MASK_STRIDE``-th pixel of the cloud: a patch is 8 x 8 pixels, so that
    decides the patches alike (99.7% of them on the demo data) at half the cost."""
    masks = [part_mask(np.ascontiguousarray(p.xyz[::MASK_STRIDE, ::MASK_STRIDE]), opts) for p in batch]
    keep = np.stack([patch_mask(m, grid, opts) for m in masks])
    keep[~keep.any(axis=1)] = True
    return keep


def mask_background(dists: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(B, P) patch distances with the patches not kept set to the lowest kept distance of their sample."""
    low = np.where(keep, dists, np.inf).min(axis=1, keepdims=True)
    return np.where(keep, dists, low)
