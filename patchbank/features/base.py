"""The interface every feature extractor shares, the registry that builds them by name, and the pooling.

As timm's ``create_model(name, **options)``: ``create_extractor(name, options, weights)`` builds any
registered extractor; its :class:`FeatureSpec` (name + every option, defaults filled in) goes into the bank
manifest, and loading a bank rebuilds exactly that spec, refusing names it does not know.

A new extractor is one module: a subclass of :class:`FeatureExtractor` with its options model, decorated
with ``@register_extractor("name")``; the command line's ``--name.OPTION`` flags come from its options.
"""

from __future__ import annotations

import functools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from patchbank.preprocess import IMAGE_SIZE, Prepared
from patchbank.registry import Part, Registry
from patchbank.weights import NO_WEIGHTS, WeightsIdentity, WeightsRequest

if TYPE_CHECKING:
    import torch

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
    given, as ``--help`` shows it); ``uses_part`` (computes only the patches on the part when told them,
    :meth:`extract`).
    """

    needs_weights: ClassVar[bool] = False
    default_weights: ClassVar[str | None] = None
    uses_part: ClassVar[bool] = False  # extract() computes only the patches on the part when given them
    spec: FeatureSpec
    weights: WeightsIdentity = NO_WEIGHTS
    image_size: int = IMAGE_SIZE  # side length, pixels, samples are prepared at

    @abstractmethod
    def grid_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """(B, D, GRID, GRID) pooled feature maps of a batch."""

    def extract(self, batch: Sequence[Prepared], part: np.ndarray | None = None) -> np.ndarray:
        """(B, GRID * GRID, D) float32 patch features of a batch: the pooled maps, :meth:`adapt`-ed. ``part``:
        (B, GRID * GRID) bool, the patches that score (a bank that scores the part only); an extractor that
        ``uses_part`` computes only those and gives zeros elsewhere, the others ignore it."""
        return self.adapt(to_patches(self.grid_maps(batch)))

    def fit(self, features: np.ndarray) -> np.ndarray:
        """Fit data-dependent options on the training features (N, 784, D), as ``extract`` returned them
        before fitting, and return those features as ``extract`` returns them from now on.

        Called once by ``build-bank`` before the coreset; the fitted values go into ``spec`` (so the
        manifest records them and a rebuilt extractor applies them). Most extractors have nothing to fit.
        """
        return features

    def adapt(self, features: np.ndarray) -> np.ndarray:
        """Features as ``extract`` returned them before fitting, as it returns them now (after :meth:`fit`,
        or when rebuilt from a fitted spec): ``build-bank`` extracts its held-out goods in the training pass
        and adapts them once the fit is known. Identity for extractors with nothing to fit."""
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


@functools.cache
def pool_matrix(size: int, grid: int = GRID) -> np.ndarray:
    """(grid, size) float64 P with BTF's pooling of a (size, size) map X equal to P X P^T: a 3-wide average
    (stride 1, no padding) to size - 2, then adaptive average bins (cell i spans floor(i (size - 2) / grid)
    to ceil((i + 1) (size - 2) / grid), as torch's adaptive pooling)."""
    pooled = size - 2
    if pooled < 1:
        raise ValueError(f"a {size}-pixel side is too small for the 3 x 3 pooling")
    box = np.zeros((pooled, size))
    for r in range(pooled):
        box[r, r : r + 3] = 1 / 3
    i = np.arange(grid)
    start, end = (i * pooled) // grid, -(-(i + 1) * pooled // grid)
    bins = np.zeros((grid, pooled))
    for g in range(grid):
        bins[g, start[g] : end[g]] = 1 / (end[g] - start[g])
    return bins @ box


def to_grid(fmap: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """BTF's pooling of any feature map: 3x3 average pool (stride 1, no padding), then adaptive average pool
    to grid x grid. (B, C, H, W) -> (B, C, grid, grid). Both steps are separable and linear, so it is two
    small matrix products (:func:`pool_matrix`): the same values to rounding, about 10x faster than the
    pooling layers on a 224 x 224 map."""
    import torch

    h, w = fmap.shape[-2:]
    rows, cols = (torch.from_numpy(pool_matrix(n, grid)).to(fmap.device, fmap.dtype) for n in (h, w))
    return rows @ fmap @ cols.T


def grid_support(keep: np.ndarray, size: int = IMAGE_SIZE, grid: int = GRID) -> np.ndarray:
    """(size, size) bool: the pixels :func:`to_grid` reads into the cells where ``keep`` ((grid * grid,)
    bool, row-major) is True."""
    p = (pool_matrix(size, grid) > 0).astype(np.float32)
    return (p.T @ keep.reshape(grid, grid).astype(np.float32) @ p) > 0


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


PartFinder = Callable[[Sequence[Prepared]], np.ndarray | None]  # a batch -> its (B, 784) patches on the part


def extract_side_by_side(
    extractors: Sequence[FeatureExtractor],
    batch: Sequence[Prepared],
    part: PartFinder | np.ndarray | None = None,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Each extractor's (B, 784, D) features of one batch, and the batch's (B, 784) patches on the part (None
    without ``part``), computed side by side in worker threads: torch, numba and Open3D release the GIL, so
    one job fills the cores another leaves idle (a 2-core CPU scores the default method about 10% faster).
    ``part``: a function that finds the patches on the part (run first, beside the extractors that do not
    need it), or those patches already found. Extractors that ``uses_part`` compute only its patches (they
    start once it is known). The results are those of calling each in turn."""
    pool = _pool()
    if callable(part):
        found = pool.submit(part, batch)  # first: its dependants wait on it
    elif len(extractors) == 1:
        return [extractors[0].extract(batch, part)], part
    else:
        found = Future()
        found.set_result(part)

    def run(e: FeatureExtractor) -> np.ndarray:
        return e.extract(batch, found.result()) if e.uses_part else e.extract(batch)

    futures = [pool.submit(run, e) for e in extractors]
    return [f.result() for f in futures], found.result()


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
