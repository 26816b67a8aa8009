"""Feature extractors by name: ``fpfh``, ``rgb``, ``dino``, ``rgb+fpfh`` (see :mod:`.base`)."""

from patchbank.features import dino, fpfh, fused, rgb  # noqa: F401  (registers the extractors)
from patchbank.features.base import (
    GRID,
    FeatureExtractor,
    FeatureSpec,
    create_extractor,
    list_extractors,
    resolve_options,
)

__all__ = [
    "GRID",
    "FeatureExtractor",
    "FeatureSpec",
    "create_extractor",
    "list_extractors",
    "resolve_options",
]
