"""The interface every feature extractor shares, the registry that builds them by name, and the pooling.

As timm's ``create_model(name, **options)``: ``create_extractor(name, options, weights)`` builds any
registered extractor; its :class:`FeatureSpec` (name + every option, defaults filled in) goes into the bank
manifest, and loading a bank rebuilds exactly that spec, refusing names it does not know.

A new extractor is one module: a subclass of :class:`FeatureExtractor` with its options model, decorated
with ``@register_extractor("name")``; the command line's ``--name.OPTION`` flags come from its options.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from patchbank.preprocess import IMAGE_SIZE, Prepared
from patchbank.registry import Part, Registry
from patchbank.weights import NO_WEIGHTS, WeightsIdentity, WeightsRequest

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
SIDE_BY_SIDE = 8  # worker threads of extract_side_by_side (members of a method, and the part's mask)
DESCRIBE_MAX = 200  # characters of one option's value in FeatureSpec.describe (messages, logs)
GRID = 28  # patches per side: every extractor scores a 28 x 28 grid (784 patches)

Weights = WeightsRequest | WeightsIdentity  # a request (building a bank) or a recorded identity (rebuilding)


class FeatureSpec(BaseModel):
    """A registered extractor's name and its complete options: enough to rebuild it exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    extractor: str = Field(
        validation_alias=AliasChoices("extractor", "method"),  # format 2 manifests called it method
        description="registry name of the feature extractor, e.g. fpfh, rgb, rgb+fpfh",
    )
    options: dict[str, Any] = Field(description="every option of the extractor, defaults filled in")
    dim: int = Field(description="feature dimension D of one patch")

    def describe(self) -> str:
        """``name(option=value, ...)``, long values (fitted weights) cut to ``DESCRIBE_MAX`` characters."""

        def short(v: Any) -> str:
            text = str(v)
            return text if len(text) <= DESCRIBE_MAX else text[: DESCRIBE_MAX - 1] + "…"

        opts = ", ".join(f"{k}={short(v)}" for k, v in sorted(self.options.items()))
        return f"{self.extractor}({opts})"


class FeatureExtractor(Part, ABC):
    """Turns prepared samples into patch features: (B, 784, D) float32, patches in row-major grid order.

    Class metadata the registry and the command line read: ``options_model``; ``needs_weights`` (a
    backbone that loads weights from a weight source); ``default_weights`` (the source used when none is
    given, as ``--help`` shows it).
    """

    needs_weights: ClassVar[bool] = False
    default_weights: ClassVar[str | None] = None
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

    @classmethod
    def complete(cls, options: Any) -> Any:
        """The options with what their defaults stand for filled in (e.g. a backbone's own input
        normalisation), as the spec records them; most extractors have nothing to fill."""
        return options

    @classmethod
    def create(cls, options: Any, weights: Weights | None, device: str, override: str | None) -> Self:
        """Build from validated options; extractors with weights override this."""
        return cls(options, device)  # type: ignore[call-arg]


def to_grid(fmap: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """BTF's pooling of any feature map: 3x3 average pool (stride 1, no padding), then adaptive average pool
    to grid x grid. (B, C, H, W) -> (B, C, grid, grid)."""
    import torch

    pooled = torch.nn.functional.avg_pool2d(fmap, kernel_size=3, stride=1)
    return torch.nn.functional.adaptive_avg_pool2d(pooled, (grid, grid))


def to_patches(grid_map: torch.Tensor) -> np.ndarray:
    """(B, C, G, G) -> (B, G * G, C) float32 numpy, patch index = row * G + col."""
    import torch

    b, c = grid_map.shape[:2]
    return grid_map.reshape(b, c, -1).permute(0, 2, 1).contiguous().to("cpu", torch.float32).numpy()


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=SIDE_BY_SIDE, thread_name_prefix="patchbank-features")
        return _POOL


def extract_side_by_side(
    extractors: Sequence[FeatureExtractor],
    batch: Sequence[Prepared],
    also: Callable[[Sequence[Prepared]], T] | None = None,
) -> tuple[list[np.ndarray], T | None]:
    """Each extractor's (B, 784, D) features of one batch, and ``also(batch)`` (e.g. the patches on the part),
    computed side by side in worker threads: torch, numba and Open3D release the GIL, so one job fills the
    cores another leaves idle (a 2-core CPU scores the default method about 10% faster). The results are
    those of calling each in turn."""
    jobs = [*(partial(e.extract, batch) for e in extractors)]
    if also is not None:
        jobs.append(partial(also, batch))
    if len(jobs) == 1:
        return [jobs[0]()], None
    futures = [_pool().submit(job) for job in jobs]
    results = [f.result() for f in futures]
    n = len(extractors)
    return results[:n], (results[n] if also is not None else None)


EXTRACTORS: Registry[type[FeatureExtractor]] = Registry("feature extractor")
register_extractor = EXTRACTORS.register


def list_extractors() -> list[str]:
    return EXTRACTORS.names()


def resolve_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The complete option dict of extractor ``name`` (defaults filled in); InputError for unknown names or
    options."""
    return EXTRACTORS.get(name).complete(EXTRACTORS.options(name, options)).model_dump(mode="json")


def create_extractor(
    name: str,
    options: dict[str, Any] | None = None,
    weights: Weights | None = None,
    device: str = "cpu",
    weights_override: str | None = None,
) -> FeatureExtractor:
    """Build a registered extractor. ``weights`` is a request (building a bank) or a recorded identity
    (rebuilding one; ``weights_override`` then points at a moved file, refused unless it hashes the same)."""
    cls = EXTRACTORS.get(name)
    return cls.create(cls.complete(EXTRACTORS.options(name, options)), weights, device, weights_override)
