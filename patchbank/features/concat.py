"""Early fusion, BTF's RGB + FPFH: the two patch features concatenated per patch, one bank (1536 + 33 =
1569-d by default). Late fusion, one bank per extractor, is :mod:`patchbank.fusion`.

The two modalities differ in dimension (1536 vs 33) and in scale (backbone activations vs FPFH histogram
bins), so in the plain concatenation (``normalise="none"``, BTF's recipe) one of them dominates every
distance. ``normalise="modality"`` divides each modality by its spread on the
training patches, fitted once by ``build-bank`` (:meth:`RGBFPFHExtractor.fit`) and recorded in the spec, so
both weigh alike in the L2 distances the bank is searched with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from patchbank.errors import InputError
from patchbank.features.base import FeatureExtractor, FeatureSpec, Weights, register_extractor
from patchbank.features.fpfh import FPFHExtractor, FPFHOptions
from patchbank.features.rgb import PUBLISHED_BACKBONE, RGBExtractor, RGBOptions
from patchbank.preprocess import Prepared

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# A modality that does not vary on the training patches (spread 0, e.g. constant features) is divided by this
# floor instead of its spread, so its features stay finite. It is far below any real spread (float32 patch
# features that differ at all differ by more), so it never changes a genuine scale.
SPREAD_FLOOR = 1e-6
_CHUNK = 1 << 16  # patches per float64 chunk when computing a spread (bounds the temporary memory)

Scale = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class RGBFPFHOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rgb: RGBOptions = Field(
        default_factory=lambda: RGBOptions(backbone=PUBLISHED_BACKBONE),
        description="options of the rgb part (BTF's: wide_resnet50_2, layers 2 and 3)",
    )
    fpfh: FPFHOptions = Field(default_factory=FPFHOptions, description="options of the fpfh part")
    normalise: Literal["none", "modality"] = Field(
        "none",
        description="none: plain concatenation (BTF); modality: each modality divided by its spread on the "
        "training patches, so neither dominates the distances",
    )
    scales: tuple[Scale, Scale] | None = Field(
        None,
        description="fitted: each modality's spread on the training patches (rgb, fpfh)",
        json_schema_extra={"cli": False},
    )

    @field_validator("scales")
    @classmethod
    def _scales_need_modality(
        cls, scales: tuple[float, float] | None, info: ValidationInfo
    ) -> tuple[float, float] | None:
        if scales is not None and info.data.get("normalise") != "modality":
            raise ValueError("scales are only used with normalise='modality'")
        return scales


def modality_spread(block: np.ndarray) -> float:
    """The spread of one modality: the mean L2 distance of a patch's sub-vector to the mean sub-vector over
    all patches. ``block`` is (P, d). Chosen over a per-dimension standard deviation because it is the very
    quantity the bank's L2 distances are made of: after division both modalities' typical distance to their
    centre is 1, whatever their dimensions. Accumulated in float64, chunk by chunk."""
    n = block.shape[0]
    mean = np.zeros(block.shape[1], dtype=np.float64)
    for i in range(0, n, _CHUNK):
        mean += block[i : i + _CHUNK].sum(axis=0, dtype=np.float64)
    mean /= n
    total = 0.0
    for i in range(0, n, _CHUNK):
        total += float(np.linalg.norm(block[i : i + _CHUNK].astype(np.float64) - mean, axis=1).sum())
    return total / n


def divide_modalities(features: np.ndarray, split: int, scales: tuple[float, float]) -> np.ndarray:
    """(..., D) float32 features with the first ``split`` columns divided by ``scales[0]`` and the rest by
    ``scales[1]`` (in float64, back to float32): a new array."""
    divisor = np.full(features.shape[-1], scales[1], dtype=np.float64)
    divisor[:split] = scales[0]
    return (features / divisor).astype(np.float32)


def fit_scales(flat: np.ndarray, split: int) -> tuple[float, float]:
    """Each modality's spread on (P, D) training patches (:func:`modality_spread`; the first ``split``
    columns, then the rest), floored at ``SPREAD_FLOOR`` so a modality that does not vary stays finite."""
    spreads = (modality_spread(flat[:, :split]), modality_spread(flat[:, split:]))
    scales = (max(spreads[0], SPREAD_FLOOR), max(spreads[1], SPREAD_FLOOR))
    if scales != spreads:
        log.warning("a modality does not vary on the training patches (spreads %s): floored", spreads)
    return scales


class WithRGBPart(FeatureExtractor):
    """An extractor built around an ``rgb`` part (``options.rgb``): its options are completed and its
    backbone created (with the weights asked for) as the ``rgb`` extractor's own."""

    needs_weights = RGBExtractor.needs_weights
    default_weights = RGBExtractor.default_weights

    @classmethod
    def complete(cls, options: Any) -> Any:
        return options.model_copy(update={"rgb": RGBExtractor.complete(options.rgb)})

    @classmethod
    def create(cls, options: Any, weights: Weights | None, device: str, override: str | None) -> Self:
        """Subclasses take ``(options, rgb extractor, device)``."""
        rgb = RGBExtractor.create(options.rgb, weights, device, override)
        return cls(options, rgb, device)  # type: ignore[call-arg]


@register_extractor("rgb+fpfh")
class RGBFPFHExtractor(WithRGBPart):
    options_model = RGBFPFHOptions
    default_weights = "pretrained (wide_resnet50_2.tv_in1k: the hub, its cache, or --weights file:PATH)"

    def __init__(self, options: RGBFPFHOptions, rgb: RGBExtractor, device: str) -> None:
        self.opts = options
        self.rgb = rgb
        self.fpfh = FPFHExtractor(self.opts.fpfh, device)
        self.weights = self.rgb.weights
        self.image_size = self.rgb.image_size
        self.spec = FeatureSpec(
            extractor=self.name, options=self.opts.model_dump(mode="json"), dim=self.rgb.dim + self.fpfh.dim
        )

    def grid_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """The raw concatenation (before any per-modality scaling, which :meth:`extract` applies)."""
        import torch

        rgb = self.rgb.grid_maps(batch).to(torch.float64)
        return torch.cat([rgb, self.fpfh.grid_maps(batch).to(rgb.device)], dim=1)

    def adapt(self, features: np.ndarray) -> np.ndarray:
        """Divided per modality once scales are set (fitted, or recorded in the options of a rebuilt
        extractor)."""
        if self.opts.scales is None:
            return features
        return divide_modalities(features, self.rgb.dim, self.opts.scales)

    def fit(self, features: np.ndarray) -> np.ndarray:
        """With ``normalise="modality"`` and no scales yet: each modality's spread on the training patches
        (:func:`modality_spread`, floored at ``SPREAD_FLOOR``) becomes its scale, recorded in ``spec``; the
        features come back divided by it. Otherwise the features are already as ``extract`` returns them."""
        if self.opts.normalise != "modality" or self.opts.scales is not None:
            return features
        if features.ndim != 3 or features.shape[-1] != self.dim:
            raise InputError(f"fit expects (N, patches, {self.dim}) features, got {features.shape}")
        split = self.rgb.dim
        scales = fit_scales(features.reshape(-1, self.dim), split)
        log.info("rgb+fpfh per-modality scales: rgb %.6g, fpfh %.6g", *scales)
        self.opts = self.opts.model_copy(update={"scales": scales})
        self.spec = self.spec.model_copy(update={"options": self.opts.model_dump(mode="json")})
        return divide_modalities(features, split, scales)
