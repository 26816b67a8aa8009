"""DINO ViT-B/8 patch tokens (M3DM's RGB feature): the ``rgb`` extractor with a ViT and other defaults.

``vit_base_patch8_224`` with timm's ``dino`` pretrained tag: a 224 x 224 input gives 28 x 28 patch tokens
of 768-d. As M3DM, the tokens are the last block's output after the ViT's final LayerNorm, class token
dropped. Unlike M3DM (which takes the 28 x 28 tokens as they are), they then go through the pooling every
map here goes through (:func:`patchbank.features.base.to_grid`), so all methods share one patch grid.

Weights, their identity and the refusal of other weights are the ``rgb`` extractor's
(:mod:`patchbank.features.rgb`): a local state dict of the full ``vit_base_patch8_224`` (timm's names, as
the hub checkpoint or ``timm.create_model("vit_base_patch8_224").state_dict()`` hold them; ``head.*`` is
ignored), timm's pretrained loading with the tag (``vit_base_patch8_224.dino`` by default), or an explicit
seeded random init.
"""

from __future__ import annotations

from pydantic import Field

from patchbank.features.base import register_extractor
from patchbank.features.rgb import RGBExtractor, RGBOptions


class DINOOptions(RGBOptions):
    backbone: str = Field(
        "vit_base_patch8_224", description="timm ViT name (default tag from DEFAULT_PRETRAINED_TAGS: dino)"
    )
    layers: tuple[int, ...] = Field(
        (-1,), description="ViT blocks whose patch tokens are taken (0-based; -1: the last block, as M3DM)"
    )
    image_size: int = Field(
        224, ge=224, le=224, description="input side length, pixels: the ViT's own 224 (28 x 28 tokens)"
    )
    final_norm: bool = Field(
        True, description="apply the ViT's final LayerNorm to the tokens of every block taken (as M3DM)"
    )

    def wants_final_norm(self) -> bool:
        return self.final_norm


@register_extractor("dino")
class DINOExtractor(RGBExtractor):
    """(B, 784, 768) DINO ViT-B/8 patch features by default."""

    options_model = DINOOptions
