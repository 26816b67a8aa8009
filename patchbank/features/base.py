"""The interface every feature extractor shares, the registry that builds them by name, and the pooling.

As timm's ``create_model(name, **options)``: ``create_extractor(method, options, weights)`` builds any
registered extractor; its :class:`FeatureSpec` (name + every option, defaults filled in) goes into the bank
manifest, and loading a bank rebuilds exactly that spec, refusing names it does not know.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchbank.errors import InputError
from patchbank.preprocess import IMAGE_SIZE, Prepared
from patchbank.weights import NO_WEIGHTS, WeightsIdentity, WeightsRequest

GRID = 28  # patches per side: every method scores a 28 x 28 grid (784 patches)


class FeatureSpec(BaseModel):
    """A registered extractor's name and its complete options: enough to rebuild it exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = Field(description="registry name, e.g. fpfh, rgb, rgb+fpfh")
    options: dict[str, Any] = Field(description="every option of the extractor, defaults filled in")
    dim: int = Field(description="feature dimension D of one patch")

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.method}({opts})"


class FeatureExtractor(ABC):
    """Turns prepared samples into patch features: (B, 784, D) float32, patches in row-major grid order."""

    name: ClassVar[str]
    spec: FeatureSpec
    weights: WeightsIdentity = NO_WEIGHTS
    image_size: int = IMAGE_SIZE  # side length, pixels, samples are prepared at

    @abstractmethod
    def grid_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """(B, D, GRID, GRID) pooled feature maps of a batch."""

    def extract(self, batch: Sequence[Prepared]) -> np.ndarray:
        """(B, GRID * GRID, D) float32 patch features of a batch."""
        return to_patches(self.grid_maps(batch))

    def fit(self, features: np.ndarray) -> np.ndarray:
        """Fit data-dependent options on the training features (N, 784, D), as ``extract`` returned them
        before fitting, and return those features as ``extract`` returns them from now on.

        Called once by ``build-bank`` before the coreset; the fitted values go into ``spec`` (so the
        manifest records them and a rebuilt extractor applies them). Most extractors have nothing to fit.
        """
        return features

    @property
    def dim(self) -> int:
        return self.spec.dim


def to_grid(fmap: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """BTF's pooling of any feature map: 3x3 average pool (stride 1, no padding), then adaptive average pool
    to grid x grid. (B, C, H, W) -> (B, C, grid, grid)."""
    pooled = torch.nn.functional.avg_pool2d(fmap, kernel_size=3, stride=1)
    return torch.nn.functional.adaptive_avg_pool2d(pooled, (grid, grid))


def to_patches(grid_map: torch.Tensor) -> np.ndarray:
    """(B, C, G, G) -> (B, G * G, C) float32 numpy, patch index = row * G + col."""
    b, c = grid_map.shape[:2]
    return grid_map.reshape(b, c, -1).permute(0, 2, 1).contiguous().to("cpu", torch.float32).numpy()


Factory = Callable[
    [dict[str, Any], WeightsRequest | WeightsIdentity | None, str, str | None], FeatureExtractor
]
_REGISTRY: dict[str, tuple[type[BaseModel], Factory]] = {}


def register(name: str, options: type[BaseModel]) -> Callable[[Factory], Factory]:
    """Register a factory ``(options, weights, device, weights_override) -> extractor`` under ``name``."""

    def deco(factory: Factory) -> Factory:
        _REGISTRY[name] = (options, factory)
        return factory

    return deco


def list_extractors() -> list[str]:
    return sorted(_REGISTRY)


def resolve_options(method: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The complete option dict of ``method`` (defaults filled in); InputError for unknown names/options."""
    if method not in _REGISTRY:
        raise InputError(f"unknown feature method {method!r}; known: {', '.join(list_extractors())}")
    model, _ = _REGISTRY[method]
    try:
        return model(**(options or {})).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(
            f"bad option for {method}: {'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from exc


def create_extractor(
    method: str,
    options: dict[str, Any] | None = None,
    weights: WeightsRequest | WeightsIdentity | None = None,
    device: str = "cpu",
    weights_override: str | None = None,
) -> FeatureExtractor:
    """Build a registered extractor. ``weights`` is a request (building a bank) or a recorded identity
    (rebuilding one; ``weights_override`` then points at a moved file, refused unless it hashes the same)."""
    resolved = resolve_options(method, options)
    _, factory = _REGISTRY[method]
    return factory(resolved, weights, device, weights_override)
