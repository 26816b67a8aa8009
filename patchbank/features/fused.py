"""BTF's RGB + FPFH: the two patch features concatenated per patch (1536 + 33 = 1569-d by default)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from patchbank.features.base import FeatureExtractor, FeatureSpec, register
from patchbank.features.fpfh import FPFHExtractor, FPFHOptions
from patchbank.features.rgb import RGBOptions, make_rgb
from patchbank.preprocess import Prepared
from patchbank.weights import WeightsIdentity, WeightsRequest


class RGBFPFHOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rgb: RGBOptions = Field(default_factory=RGBOptions, description="options of the rgb part")
    fpfh: FPFHOptions = Field(default_factory=FPFHOptions, description="options of the fpfh part")


class RGBFPFHExtractor(FeatureExtractor):
    name = "rgb+fpfh"

    def __init__(
        self,
        options: dict[str, Any],
        weights: WeightsRequest | WeightsIdentity | None,
        device: str,
        override: str | None,
    ) -> None:
        opts = RGBFPFHOptions(**options)
        self.rgb = make_rgb(opts.rgb.model_dump(mode="json"), weights, device, override)
        self.fpfh = FPFHExtractor(opts.fpfh.model_dump(mode="json"), device)
        self.weights = self.rgb.weights
        self.image_size = self.rgb.image_size
        self.spec = FeatureSpec(
            method=self.name, options=opts.model_dump(mode="json"), dim=self.rgb.dim + self.fpfh.dim
        )

    def grid_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
        rgb = self.rgb.grid_maps(batch).to(torch.float64)
        return torch.cat([rgb, self.fpfh.grid_maps(batch).to(rgb.device)], dim=1)


@register("rgb+fpfh", RGBFPFHOptions)
def _create_rgb_fpfh(
    options: dict[str, Any],
    weights: WeightsRequest | WeightsIdentity | None,
    device: str,
    override: str | None,
) -> FeatureExtractor:
    return RGBFPFHExtractor(options, weights, device, override)
