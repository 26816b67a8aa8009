"""Feature extractors by name: ``fpfh``, ``rgb``, ``dino``, ``rgb+fpfh``, ``cpmf``, ``cfm`` (see :mod:`.base`)."""

from patchbank.features import cfm, concat, cpmf, dino, fpfh, rgb  # noqa: F401  (registers the extractors)
from patchbank.features.base import (
    EXTRACTORS,
    GRID,
    FeatureExtractor,
    FeatureSpec,
    create_extractor,
    list_extractors,
    register_extractor,
    resolve_options,
)

__all__ = [
    "EXTRACTORS",
    "GRID",
    "FeatureExtractor",
    "FeatureSpec",
    "create_extractor",
    "list_extractors",
    "register_extractor",
    "resolve_options",
]
