"""Deep RGB patch features (PatchCore / BTF): a timm backbone's intermediate layers, pooled to 28 x 28.

Default: ``wide_resnet50_2`` features_only, layers 2 and 3 (512 + 1024 = 1536-d at 224 x 224 input).
Weights come from :mod:`patchbank.weights` (pretrained tag, local file, or explicit random init).

The same machinery serves Vision Transformers (see :mod:`patchbank.features.dino`): timm's features_only
wraps a ViT in ``FeatureGetterNet``, which returns the patch tokens of the chosen blocks as NCHW maps (class
token dropped), truncates the blocks after the last one chosen, drops the head, and holds the model under
``model.``; a full model's state dict is loaded into that inner model, so its key names match.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from patchbank.errors import InputError, WeightsError
from patchbank.features.base import FeatureExtractor, FeatureSpec, register, to_grid
from patchbank.preprocess import Prepared
from patchbank.weights import (
    DEFAULT_PRETRAINED_TAGS,
    WeightsIdentity,
    WeightsRequest,
    hub_offline_when_unreachable,
    load_into,
    offline_help,
    params_sha256,
    read_state_dict,
    sha256_file,
)

log = logging.getLogger(__name__)


class RGBOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("wide_resnet50_2", description="timm model name")
    layers: tuple[int, ...] = Field((2, 3), description="timm features_only out_indices")
    image_size: int = Field(224, ge=32, description="input side length, pixels")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="backbone arithmetic: fp32, or bf16 autocast (faster on CPUs with AVX512-BF16/AMX and GPUs)",
    )

    def wants_final_norm(self) -> bool:
        """Whether the backbone's final norm is applied to the features taken: never for ``rgb`` (CNN layers
        are taken as they are); ViT options (``dino``) override this."""
        return False


def _create(opts: RGBOptions, pretrained: bool = False, tag: str | None = None) -> torch.nn.Module:
    """The feature model: timm features_only, or, when the final norm is wanted, the full model wrapped in
    the very class features_only uses for ViTs with its ``norm`` switch on (``create_model`` has no way to
    ask for it: features_only prunes the final norm)."""
    import timm

    name = f"{opts.backbone}.{tag}" if tag else opts.backbone
    with hub_offline_when_unreachable() if pretrained else nullcontext():
        if opts.wants_final_norm():
            from timm.models._features import FeatureGetterNet

            full = timm.create_model(name, pretrained=pretrained)
            return FeatureGetterNet(full, out_indices=list(opts.layers), norm=True)
        return timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=opts.layers)


def _state_dict_owner(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state-dict keys are a full model's: a ViT feature model (``FeatureGetterNet``) holds
    the truncated model under ``model.``; CNN feature models (``FeatureListNet``) keep the full names."""
    from timm.models._features import FeatureGetterNet

    return model.model if isinstance(model, FeatureGetterNet) else model


def build_backbone(opts: RGBOptions, request: WeightsRequest) -> tuple[torch.nn.Module, WeightsIdentity]:
    """A backbone with the requested weights, and the identity to record in the manifest."""
    import timm

    if opts.backbone not in timm.list_models():
        raise InputError(f"unknown timm backbone {opts.backbone!r}")
    if request.path is not None:
        path = Path(request.path).expanduser().resolve()
        model = _from_file(opts, path)
        ident = WeightsIdentity(kind="file", file=str(path), file_sha256=sha256_file(path))
    elif request.random_seed is not None:
        model = _random_model(opts, request.random_seed)
        ident = WeightsIdentity(kind="random", seed=request.random_seed)
    else:
        tag = request.tag or DEFAULT_PRETRAINED_TAGS.get(opts.backbone)
        ident = WeightsIdentity(kind="pretrained", tag=f"{opts.backbone}.{tag}" if tag else opts.backbone)
        model = _pretrained(opts, ident.tag or opts.backbone)
    return model, ident.model_copy(update={"params_sha256": params_sha256(model)})


def _from_file(opts: RGBOptions, path: Path) -> torch.nn.Module:
    """A feature model with a local state dict of the full model loaded: the tensors it keeps must all be
    there with their shapes (the head and the layers or blocks it dropped are ignored)."""
    model = _create(opts)
    load_into(_state_dict_owner(model), read_state_dict(path), path)
    return model


def _pretrained(opts: RGBOptions, full_tag: str) -> torch.nn.Module:
    try:
        return _create(opts, pretrained=True, tag=full_tag.partition(".")[2] or None)
    except Exception as exc:  # network, hub and cache errors come in many types
        raise WeightsError(f"{offline_help(full_tag)} (cause: {type(exc).__name__}: {exc})") from exc


def _random_model(opts: RGBOptions, seed: int) -> torch.nn.Module:
    log.warning(
        "using a RANDOMLY INITIALISED %s (seed %d): for tests and demos only, scores are not meaningful",
        opts.backbone,
        seed,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _create(opts)


def _recorded_file(ident: WeightsIdentity, override: str | None) -> Path:
    """The weights file to rebuild from: the override (a moved file) or the recorded path, sha256-checked."""
    path = Path(override).expanduser().resolve() if override else Path(ident.file or "")
    if not path.is_file():
        raise WeightsError(
            f"the bank's weights file {path} is missing; pass --weights PATH (or PATCHBANK_WEIGHTS) "
            "to point at the same file (its sha256 must match)"
        )
    if ident.kind == "file" and sha256_file(path) != ident.file_sha256:
        raise WeightsError(
            f"weights file {path} differs from the one the bank was built with "
            f"(sha256 {ident.file_sha256}); refusing to score with other weights"
        )
    return path


def rebuild_backbone(opts: RGBOptions, ident: WeightsIdentity, override: str | None) -> torch.nn.Module:
    """The backbone a bank recorded; refuses weights whose file or parameter hash differs.

    ``override`` points at a local file holding the same weights (a moved file, or a pretrained tag's
    weights saved locally): the parameter hash decides.
    """
    if override is not None or ident.kind == "file":
        model = _from_file(opts, _recorded_file(ident, override))
    elif ident.kind == "random" and ident.seed is not None:
        model = _random_model(opts, ident.seed)
    elif ident.kind == "pretrained" and ident.tag is not None:
        model = _pretrained(opts, ident.tag)
    else:
        raise WeightsError(f"a {opts.backbone} backbone needs weights; the bank records {ident.kind!r}")
    digest = params_sha256(model)
    if ident.params_sha256 is not None and digest != ident.params_sha256:
        raise WeightsError(
            "the rebuilt backbone's parameters differ from those the bank was built with "
            f"(params sha256 {digest[:12]}… != {ident.params_sha256[:12]}…); refusing other weights"
        )
    return model


class RGBExtractor(FeatureExtractor):
    """A timm backbone's intermediate features; subclasses (``dino``) change the name and the options."""

    name = "rgb"
    options_model: ClassVar[type[RGBOptions]] = RGBOptions

    def __init__(self, options: dict[str, Any], model: torch.nn.Module, ident: WeightsIdentity, device: str):
        self.opts = self.options_model(**options)
        self.image_size = self.opts.image_size
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.weights = ident
        with torch.inference_mode():
            probe = self.model(
                torch.zeros(1, 3, self.opts.image_size, self.opts.image_size, device=self.device)
            )
        dim = sum(int(f.shape[1]) for f in probe)
        self.spec = FeatureSpec(method=self.name, options=self.opts.model_dump(mode="json"), dim=dim)

    def grid_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """(B, D, 28, 28) pooled layer features, concatenated along channels."""
        x = torch.from_numpy(np.stack([p.rgb for p in batch])).to(self.device)
        bf16 = self.opts.precision == "bf16"
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16, enabled=bf16):
            maps = [to_grid(f.float()) for f in self.model(x)]
        return torch.cat(maps, dim=1)

    @classmethod
    def create(
        cls,
        options: dict[str, Any],
        weights: WeightsRequest | WeightsIdentity | None,
        device: str,
        override: str | None,
    ) -> Self:
        """The registry factory: build the backbone from a request, or rebuild it from a recorded identity."""
        opts = cls.options_model(**options)
        if isinstance(weights, WeightsIdentity):
            return cls(options, rebuild_backbone(opts, weights, override), weights, device)
        model, ident = build_backbone(opts, weights or WeightsRequest())
        return cls(options, model, ident, device)


def make_rgb(
    options: dict[str, Any],
    weights: WeightsRequest | WeightsIdentity | None,
    device: str,
    override: str | None,
) -> RGBExtractor:
    return RGBExtractor.create(options, weights, device, override)


register("rgb", RGBOptions)(make_rgb)
