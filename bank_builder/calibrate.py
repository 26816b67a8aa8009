"""Default decision thresholds from the scores of good parts a bank did not see.

Held-out good parts are ``validation/good`` when the dataset has it; otherwise every training sample scored
with its own patches left out of the search (the bank still holds all training samples, as BTF's does).
Image threshold: the 99th percentile of the held-out image scores (a 1% false-reject target). Pixel
threshold: the 99th percentile of the held-out maps' maxima, so 99% of good parts show no defect region.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from patchbank.bank import ScoreStats, Thresholds
from patchbank.data import SampleRef
from patchbank.extract import iter_batches
from patchbank.features.base import FeatureExtractor
from patchbank.index import PatchIndex
from patchbank.scorer import score_patches

QUANTILE = 0.99


def held_out_validation(
    extractor: FeatureExtractor,
    index: PatchIndex,
    refs: Sequence[SampleRef],
    size: int,
    progress: bool = True,
) -> ScoreStats:
    """Statistics of ``validation/good`` samples scored against the bank."""
    image, maxima = [], []
    for _, _, feats in iter_batches(extractor, refs, size, progress=progress, desc="validation"):
        s = score_patches(index, feats)
        image.extend(s.image.tolist())
        maxima.extend(s.maps.reshape(len(feats), -1).max(axis=1).tolist())
    return score_stats("validation", image, maxima)


def held_out_training(index: PatchIndex, features: np.ndarray, patches_per_sample: int) -> ScoreStats:
    """Statistics of training samples, each scored with its own bank vectors excluded (leave-one-out).

    features: (N, 784, D) the training features; the bank's ids are ``sample * 784 + patch``.
    """
    owner = index.ids // patches_per_sample
    image, maxima = [], []
    for i in range(len(features)):
        s = score_patches(index, features[i : i + 1], exclude_rows=[owner == i])
        image.append(float(s.image[0]))
        maxima.append(float(s.maps.max()))
    return score_stats("train-leave-one-out", image, maxima)


def score_stats(source: str, image: Sequence[float], maxima: Sequence[float]) -> ScoreStats:
    arr = np.asarray(image, dtype=np.float64)
    qs = {f"p{int(q * 100)}": float(np.quantile(arr, q)) for q in (0.5, 0.9, 0.95, 0.99)}
    qs["max"] = float(arr.max())
    return ScoreStats(
        source=source,
        n=len(arr),
        image_scores=[float(v) for v in arr],
        map_maxima=[float(v) for v in maxima],
        mean=float(arr.mean()),
        std=float(arr.std()),
        quantiles=qs,
    )


def default_thresholds(stats: ScoreStats, quantile: float = QUANTILE) -> Thresholds:
    return Thresholds(
        image=float(np.quantile(stats.image_scores, quantile)),
        pixel=float(np.quantile(stats.map_maxima, quantile)),
        rule=f"p{quantile * 100:g} of {stats.n} held-out good parts ({stats.source}): image scores, map maxima",
    )
