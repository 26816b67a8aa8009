"""Late fusion of several banks' scores (one bank per modality), fitted on held-out good parts.

Each member bank scores a sample on its own scale (an RGB bank's distances are in the tens, an FPFH
bank's in the hundreds). Before they are combined, each member's scores are aligned as in Shape-Guided
(Chu et al., ICML 2023): on held-out good parts, the interval mean +- 3 std of the member's scores is mapped
onto [0, 1], ``aligned = (s - (mean - 3 std)) / (6 std)``. Image scores use the mean and std of the held-out
image scores; anomaly maps (and the 28 x 28 patch grids) use those of every held-out map pixel. A good part
then scores about 0.5 in every member, and anything above 1 is more than 3 std beyond the goods.

Rules (``Fusion.rule``), registered parts (:data:`FUSION_RULES`) with their options:

- ``max`` (the default): the fused map is the pixelwise maximum of the aligned maps, and the fused image
  score the maximum of the aligned image scores: a part is as anomalous as its most anomalous modality, so a
  colour-only stain (seen by RGB) and a shallow dent (seen by 3D) both come through at full strength.
- ``svm``: M3DM's decision-layer fusion. A linear one-class SVM (scikit-learn's ``SGDOneClassSVM``,
  ``nu`` 0.5 by default, as M3DM) is fitted on the aligned per-bank image scores of the held-out goods, another on a sample
  of their aligned pixel scores; the fused score is the SVM's ``score_samples``, ``w . aligned`` (as M3DM
  uses it: a learned weighting of the members). Its own decision boundary is not used: the bank's
  calibrated threshold decides.

Everything fitted is a handful of floats stored in the manifest: no pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from patchbank.errors import DataError
from patchbank.registry import Part, Registry

SPREAD = 3.0  # Shape-Guided's mean +- 3 std
PIXELS_PER_SAMPLE = 4096  # pixels of each held-out map the pixel SVM is fitted on
MIN_STD = 1e-9  # relative to the scores' magnitude: a member whose goods all score alike


class Alignment(BaseModel):
    """``aligned = (score - low) / (high - low)``, [low, high] = mean -+ 3 std of held-out good scores."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float
    high: float

    @classmethod
    def fit(cls, scores: np.ndarray) -> Alignment:
        x = np.asarray(scores, dtype=np.float64)
        mean = float(x.mean())
        std = max(float(x.std()), MIN_STD * max(1.0, abs(mean)))
        return cls(low=mean - SPREAD * std, high=mean + SPREAD * std)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=np.float64) - self.low) / (self.high - self.low)


class LinearSVM(BaseModel):
    """A fitted linear one-class SVM's weights: ``score = coef . x``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coef: list[float]
    offset: float = Field(description="the SVM's offset (its decision boundary; recorded, not used)")

    @classmethod
    def fit(cls, x: np.ndarray, seed: int = 0, nu: float = 0.5) -> LinearSVM:
        """x: (n, M) aligned member scores of good samples (or pixels)."""
        from sklearn.linear_model import SGDOneClassSVM

        svm = SGDOneClassSVM(nu=nu, shuffle=True, fit_intercept=True, random_state=seed, tol=1e-6)
        svm.fit(x)
        return cls(coef=[float(c) for c in svm.coef_], offset=float(np.ravel(svm.offset_)[0]))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(..., M) -> (...) fused scores."""
        return np.asarray(x, dtype=np.float64) @ np.asarray(self.coef)


class FusionRule(Part):
    """How aligned member scores (..., M) combine: the maximum, unless the rule fits weights (``fit``)."""

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    def fit(self, aligned: np.ndarray, seed: int) -> LinearSVM | None:
        """Weights fitted on (n, M) aligned scores of held-out goods; None: the maximum."""
        return None


FUSION_RULES: Registry[type[FusionRule]] = Registry("fusion rule")
register_fusion = FUSION_RULES.register


@register_fusion("max")
class MaxRule(FusionRule):
    """A part is as anomalous as its most anomalous member."""


class SVMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nu: float = Field(0.5, gt=0, le=1, description="the one-class SVM's nu (M3DM: 0.5)")


@register_fusion("svm")
class SVMRule(FusionRule):
    """M3DM's learned weighting of the aligned scores (a linear one-class SVM's score_samples)."""

    options_model = SVMOptions

    def fit(self, aligned: np.ndarray, seed: int) -> LinearSVM | None:
        return LinearSVM.fit(aligned, seed, self.options.nu)  # type: ignore[attr-defined]


class FusionPart(BaseModel):
    """How one kind of score (image scores, or maps) of the members becomes one score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alignments: list[Alignment] = Field(description="one per member, in member order")
    svm: LinearSVM | None = Field(None, description="rule svm: the fitted weights")

    def align(self, scores: np.ndarray) -> np.ndarray:
        """(M, ...) raw member scores -> (..., M) aligned scores, members last."""
        aligned = [a.apply(s) for a, s in zip(self.alignments, scores, strict=True)]
        return np.stack(aligned, axis=-1)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """(M, ...) raw member scores -> (...) fused float32 scores."""
        aligned = self.align(scores)
        fused = aligned.max(axis=-1) if self.svm is None else self.svm.apply(aligned)
        return fused.astype(np.float32)


class Fusion(BaseModel):
    """The fitted late fusion of a bank with several members (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str = Field(description="registered fusion rule: max or svm")
    options: dict[str, Any] = Field(default_factory=dict, description="the rule's options")
    image: FusionPart
    pixel: FusionPart
    source: str = Field(description="the held-out good parts it was fitted on")
    n: int = Field(description="how many")


def _rule(rule: str, options: dict[str, Any] | None) -> FusionRule:
    return FUSION_RULES.get(rule)(FUSION_RULES.options(rule, options))


def _fitted(rule: FusionRule, alignments: list[Alignment], sample: np.ndarray, seed: int) -> FusionPart:
    """A part with its alignments, and the rule's weights fitted on the aligned (M, n) ``sample``."""
    part = FusionPart(alignments=alignments)
    svm = rule.fit(part.align(sample), seed)
    return part if svm is None else part.model_copy(update={"svm": svm})


def fit_image(
    rule: str, image: np.ndarray, seed: int = 0, options: dict[str, Any] | None = None
) -> FusionPart:
    """The image part of a fusion from (M, n) raw member image scores of held-out goods."""
    return _fitted(_rule(rule, options), [Alignment.fit(s) for s in image], image, seed)


def fit_pixel(
    rule: str, maps: np.ndarray, seed: int = 0, options: dict[str, Any] | None = None
) -> FusionPart:
    """The map part of a fusion from (M, n, H, W) raw member maps of held-out goods (the weights on a random
    sample of the same pixels in every member)."""
    m, n = maps.shape[:2]
    flat = maps.reshape(m, n, -1)
    rng = np.random.default_rng(seed)
    cols = rng.choice(flat.shape[2], size=min(PIXELS_PER_SAMPLE, flat.shape[2]), replace=False)
    part = _rule(rule, options)
    return _fitted(part, [Alignment.fit(f) for f in flat], flat[:, :, cols].reshape(m, -1), seed)


def fit_fusion(
    rule: str,
    image: np.ndarray,
    maps: np.ndarray,
    source: str,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> Fusion:
    """Fit both parts on held-out goods: image (M, n) raw image scores, maps (M, n, H, W) raw maps."""
    resolved = FUSION_RULES.options(rule, options).model_dump(mode="json")
    if image.shape[0] < 2:
        raise ValueError(f"fusion needs 2+ members, got {image.shape[0]}")
    if image.shape[1] < 2:
        raise DataError(
            f"late fusion needs 2 or more held-out good samples to align its members, got {image.shape[1]} "
            f"({source}): add good samples to validation/good, or remove that folder to hold the training "
            "samples out one at a time"
        )
    return Fusion(
        rule=rule,
        options=resolved,
        image=fit_image(rule, image, seed, resolved),
        pixel=fit_pixel(rule, maps, seed, resolved),
        source=source,
        n=int(image.shape[1]),
    )
