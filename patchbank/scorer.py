"""PatchCore / BTF scoring of patch features against a bank.

- patch score: L2 distance (not squared) from each test patch to its nearest bank vector;
- image score: s = w * s*, s* the largest patch score, m_test that patch, m* its nearest bank vector, and
  (PatchCore Eq. 7 as BTF's code computes it) w = 1 - exp(s*/sqrt(D)) / sum_k exp(||m_test - m_k|| / sqrt(D))
  over m_k the 2nd and 3rd of the 3 nearest bank vectors of m* (m* itself is the first);
- map: patch scores (28 x 28) bilinearly upsampled to 224 x 224, then a Gaussian blur with sigma 4 in float
  (BTF blurs an 8-bit image: the one intended difference), optionally resized to the input's resolution.

That is the published rule (:data:`patchbank.rules.PUBLISHED`); a bank's :class:`patchbank.rules.Scoring` may
instead take the image score as the map's maximum and score only the part's patches (see :mod:`patchbank.rules`).

A bank with several members (late fusion) scores each member this way, then combines the members' scores
with its fitted :class:`patchbank.fusion.Fusion`; a one-member bank's scores are exactly the above.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from patchbank.bank import Bank, Member, load_bank
from patchbank.errors import BankError
from patchbank.features import create_extractor, resolve_options
from patchbank.features.base import GRID, FeatureExtractor, FeatureSpec, extract_side_by_side
from patchbank.fusion import Fusion
from patchbank.index import PatchIndex
from patchbank.preprocess import IMAGE_SIZE, Prepared
from patchbank.rules import PUBLISHED, Scoring, foreground_patches, mask_background

N_REWEIGHT = 3
BLUR_SIGMA = 4.0


@dataclass(frozen=True)
class Scores:
    """Scores of a batch of B samples.

    image: (B,) float32 reweighted image scores; patches: (B, 28, 28) float32 patch scores;
    maps: (B, 224, 224) float32 blurred anomaly maps; nearest: per bank member, (B, 784) int64 bank rows of
    the patches' nearest vectors (-1 for a patch not searched), what a living bank's recall counts.
    """

    image: np.ndarray
    patches: np.ndarray
    maps: np.ndarray
    nearest: tuple[np.ndarray, ...] = ()

    @classmethod
    def concat(cls, parts: Sequence[Scores]) -> Scores:
        """The scores of several batches as one."""
        image, patches, maps = (
            np.concatenate([getattr(p, f) for p in parts]) for f in ("image", "patches", "maps")
        )
        nearest = tuple(np.concatenate(rows) for rows in zip(*(p.nearest for p in parts), strict=True))
        return cls(image, patches, maps, nearest)


def gaussian_kernel(sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """1-D Gaussian, radius 4 sigma, normalised to sum 1."""
    radius = math.ceil(4 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def blur(maps: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) float maps, edges replicated (as PIL's box-blur approximation)."""
    k = gaussian_kernel(sigma).to(maps.device)
    r = (len(k) - 1) // 2
    x = maps[:, None]
    x = torch.nn.functional.pad(x, (r, r, 0, 0), mode="replicate")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1))
    x = torch.nn.functional.pad(x, (0, 0, r, r), mode="replicate")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def upsample(patch_scores: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(B, G, G) -> (B, size, size) bilinear (align_corners False, as BTF's F.interpolate)."""
    t = torch.from_numpy(np.ascontiguousarray(patch_scores, dtype=np.float32))[:, None]
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) map -> (height, width) float32 by bilinear interpolation; ``size`` is (width, height)."""
    t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def reweight(
    index: PatchIndex, m_test: np.ndarray, m_star_rows: np.ndarray, s_star: np.ndarray
) -> np.ndarray:
    """PatchCore Eq. 7 weights w for B samples.

    m_test: (B, D) the most anomalous patch of each sample; m_star_rows: (B,) bank rows of their nearest
    vectors; s_star: (B,) their distances. Returns (B,) float32 w.
    """
    knn = index.search(index.vectors[m_star_rows], k=N_REWEIGHT)[:, 1:]  # (B, 2): neighbours of m* but m*
    others = index.vectors[knn]  # (B, 2, D)
    dists = np.linalg.norm(m_test[:, None, :].astype(np.float64) - others, axis=2)
    sqrt_d = math.sqrt(index.dim)
    w = 1.0 - np.exp(s_star / sqrt_d) / np.exp(dists / sqrt_d).sum(axis=1)
    return w.astype(np.float32)


def nearest(
    index: PatchIndex,
    patches: np.ndarray,
    exclude_rows: list[np.ndarray] | None = None,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(B, 784, D) patches -> (B, 784) bank rows of their nearest vectors and (B, 784) float64 distances.

    ``exclude_rows``: per sample, an (M,) bool mask of bank rows to leave out of its search (held-out
    scoring of training samples). ``keep``: (B, 784) bool, the patches searched (the part's); the others get
    row 0 and distance 0. Distances are recomputed exactly from the found vectors (FAISS's expanded form
    loses precision for near-duplicates).
    """
    b, n = patches.shape[:2]
    if n != GRID * GRID:
        raise ValueError(f"expected {GRID * GRID} patches per sample, got {n}")
    on = np.ones((b, n), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    rows = np.zeros((b, n), dtype=np.int64)
    if exclude_rows is None:
        rows[on] = index.search(patches[on], k=1)[:, 0]
    else:
        for i, ex in enumerate(exclude_rows):
            rows[i, on[i]] = index.search(patches[i, on[i]], k=1, exclude_rows=ex)[:, 0]
    dists = np.zeros((b, n))
    dists[on] = np.linalg.norm(patches[on].astype(np.float64) - index.vectors[rows[on]], axis=1)
    return rows, dists


def image_scores(index: PatchIndex, patches: np.ndarray, rows: np.ndarray, dists: np.ndarray) -> np.ndarray:
    """(B,) float32 reweighted image scores from one search's results (the reweighting searches the whole
    bank for the neighbours of m*, as the published code)."""
    b = len(patches)
    top = dists.argmax(axis=1)
    s_star = dists[np.arange(b), top]
    w = reweight(index, patches[np.arange(b), top], rows[np.arange(b), top], s_star)
    return (w * s_star).astype(np.float32)


@functools.cache
def map_operator(grid: int = GRID, size: int = IMAGE_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """(size, grid) float64 A with blur(upsample(G)) = A G A^T for any (grid, grid) G.

    Both steps are separable and linear, so the map is two small matrix products instead of an upsample and
    a 33-tap convolution over 224 x 224 (about 100x faster on a CPU). Column j of A is the first column of
    blur(upsample(E_j)), E_j ones on row j: the rows of A sum to 1 (both steps keep constants).
    """
    basis = np.zeros((grid, grid, grid), np.float32)
    basis[np.arange(grid), np.arange(grid), :] = 1.0
    return blur(upsample(basis, size), sigma).double().numpy()[:, :, 0].T.copy()


def anomaly_maps(dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 784) patch scores -> (B, 28, 28) float32 grid and (B, 224, 224) float32 blurred maps."""
    grid = dists.reshape(len(dists), GRID, GRID)
    a = map_operator()
    return grid.astype(np.float32), (a @ grid @ a.T).astype(np.float32)


def score_patches(
    index: PatchIndex,
    patches: np.ndarray,
    exclude_rows: list[np.ndarray] | None = None,
    scoring: Scoring = PUBLISHED,
    keep: np.ndarray | None = None,
) -> Scores:
    """Score (B, 784, D) patch features against a bank: one search serves the map and the image score.

    ``keep``: (B, 784) bool, the patches on the part (:func:`part_patches`); the others take the lowest
    score of their sample's part before the map and the image score are made (they are not searched)."""
    rows, dists = nearest(index, patches, exclude_rows, keep)
    searched = rows if keep is None else np.where(keep, rows, -1)
    if keep is not None:
        dists = mask_background(dists, keep)
    grid, maps = anomaly_maps(dists)
    if scoring.image_rule == "map-max":
        image = maps.reshape(len(maps), -1).max(axis=1)
    else:
        image = image_scores(index, patches, rows, dists)
    return Scores(image=image, patches=grid, maps=maps, nearest=(searched,))


def part_patches(batch: Sequence[Prepared], scoring: Scoring) -> np.ndarray | None:
    """(B, 784) bool, the patches on the part, when ``scoring`` scores the part only; else None."""
    if scoring.foreground is None:
        return None
    return foreground_patches(batch, GRID, scoring.foreground)


def part_finder(scoring: Scoring) -> Callable[[Sequence[Prepared]], np.ndarray | None] | None:
    """:func:`part_patches` for ``scoring``, when it scores the part only (what extraction runs beside the
    features, :func:`patchbank.features.base.extract_side_by_side`); else None."""
    return partial(part_patches, scoring=scoring) if scoring.foreground is not None else None


def fuse(fusion: Fusion | None, members: Sequence[Scores]) -> Scores:
    """One Scores from the members' (a single member's pass through unchanged)."""
    if fusion is None:
        if len(members) != 1:
            raise ValueError(f"{len(members)} member scores but no fusion to combine them")
        return members[0]
    return Scores(
        image=fusion.image.apply(np.stack([m.image for m in members])),
        patches=fusion.pixel.apply(np.stack([m.patches for m in members])),
        maps=fusion.pixel.apply(np.stack([m.maps for m in members])),
        nearest=tuple(rows for m in members for rows in m.nearest),
    )


class BankScorer:
    """A bank and the very extractors it was built with (one per member): scores prepared samples."""

    def __init__(self, bank: Bank, extractors: Sequence[FeatureExtractor]) -> None:
        members = bank.manifest.members
        if len(extractors) != len(members):
            raise BankError(f"bank {bank.ref} has {len(members)} members but {len(extractors)} extractors")
        for member, extractor in zip(members, extractors, strict=True):
            check_compatible(bank.ref, member, extractor)
        self.bank = bank
        self.extractors = list(extractors)
        self.scoring = bank.manifest.scoring

    @property
    def image_size(self) -> int:
        return self.extractors[0].image_size

    def features(self, batch: Sequence[Prepared]) -> list[np.ndarray]:
        """Each member's (B, 784, D_m) patch features of a batch."""
        return self.features_and_parts(batch)[0]

    def features_and_parts(self, batch: Sequence[Prepared]) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Each member's features and the patches on the part (None unless the bank scores the part only),
        computed side by side (:func:`extract_side_by_side`)."""
        return extract_side_by_side(self.extractors, batch, part_finder(self.scoring))

    def member_scores(self, features: Sequence[np.ndarray], keep: np.ndarray | None = None) -> list[Scores]:
        """Each member's raw scores, before fusion."""
        return [
            score_patches(ix, f, scoring=self.scoring, keep=keep)
            for ix, f in zip(self.bank.indices, features, strict=True)
        ]

    def score_features(self, features: Sequence[np.ndarray], keep: np.ndarray | None = None) -> Scores:
        return fuse(self.bank.manifest.fusion, self.member_scores(features, keep))

    def score(self, batch: Sequence[Prepared]) -> Scores:
        return self.score_features(*self.features_and_parts(batch))


def check_same_size(extractors: Sequence[FeatureExtractor]) -> None:
    """Members share one prepared sample, so they must share its resolution."""
    sizes = {e.image_size for e in extractors}
    if len(sizes) > 1:
        raise BankError(f"the members of a method must share one input size, got {sorted(sizes)}")


def recorded_spec(member: Member) -> FeatureSpec:
    """The member's feature spec with its options' defaults filled in: an option added since the bank was
    written counts at its default, which is what the bank was built with."""
    f = member.features
    return f.model_copy(update={"options": resolve_options(f.extractor, f.options)})


def check_compatible(ref: str, member: Member, extractor: FeatureExtractor) -> None:
    """Refuse an extractor whose spec (:func:`recorded_spec`) or weights differ from the member bank's."""
    if extractor.spec != recorded_spec(member):
        raise BankError(
            f"bank {ref} was built with features {member.features.describe()} "
            f"but the extractor is {extractor.spec.describe()}; rebuild the bank or use its extractor"
        )
    if member.weights.params_sha256 != extractor.weights.params_sha256:
        raise BankError(
            f"bank {ref} was built with other backbone weights ({member.weights.kind}) than the extractor's"
        )


def member_extractor(member: Member, device: str = "cpu", weights: str | None = None) -> FeatureExtractor:
    """Exactly the extractor a member records (``weights``: a moved file of the same weights)."""
    f = member.features
    override = weights if member.weights.kind != "none" else None
    return create_extractor(f.extractor, f.options, member.weights, device, override)


def load_scorer(
    banks: Path, category: str, version: str | None = None, device: str = "cpu", weights: str | None = None
) -> BankScorer:
    """Load a bank and rebuild exactly the extractors its manifest records (``weights``: a moved file).
    BankError for a 3D-only bank (``patchbank.points.scorer.load_point_scorer`` loads those)."""
    bank = load_bank(banks, category, version, device=device)
    m = bank.manifest
    if m.input != "image":
        raise BankError(
            f"{bank.ref} is a 3D-only bank ({m.method}): this scores RGB + 3D samples; a 3D-only bank is "
            "evaluated with patchbank evaluate, calibrated with --rule target-frr and rebuilt with build"
        )
    return BankScorer(bank, [member_extractor(member, device, weights) for member in m.members])
