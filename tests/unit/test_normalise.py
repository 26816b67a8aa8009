"""Per-modality normalisation of ``rgb+fpfh``: the fit on training features, its record in the spec, and the
same features from an extractor rebuilt from that record. The FPFH part is real; the RGB part is a
RANDOMLY INITIALISED resnet18 (the scaling is under test, not the weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchbank.data import list_samples
from patchbank.errors import InputError
from patchbank.extract import load_prepared
from patchbank.features import FeatureSpec, create_extractor, resolve_options
from patchbank.features.base import FeatureExtractor
from patchbank.features.concat import SPREAD_FLOOR, modality_spread
from patchbank.preprocess import Prepared
from patchbank.weights import WeightsIdentity, WeightsRequest
from tests.conftest import CATEGORY

SMALL_RGB = {"backbone": "resnet18", "layers": [2, 3]}  # 128 + 256 channels
RGB_DIM = 384


@pytest.fixture(scope="module")
def train(demo_root: Path) -> list[Prepared]:
    return [load_prepared(r, 224) for r in list_samples(demo_root, CATEGORY, "train")[:4]]


@pytest.fixture(scope="module")
def test_samples(demo_root: Path) -> list[Prepared]:
    return [load_prepared(r, 224) for r in list_samples(demo_root, CATEGORY, "test")]


@pytest.fixture(scope="module")
def fitted(train: list[Prepared]) -> tuple[FeatureExtractor, np.ndarray, np.ndarray]:
    """A modality-normalised extractor (random-init rgb, seed 0) fitted as build-bank does: extract the
    training samples, then fit. Returns it, the raw training features and what fit returned."""
    extractor = create_extractor(
        "rgb+fpfh", {"rgb": SMALL_RGB, "normalise": "modality"}, WeightsRequest.random(0)
    )
    raw = extractor.extract(train)
    return extractor, raw, extractor.fit(raw)


def spreads(features: np.ndarray) -> tuple[float, float]:
    flat = features.reshape(-1, features.shape[-1])
    return modality_spread(flat[:, :RGB_DIM]), modality_spread(flat[:, RGB_DIM:])


def test_fit_gives_each_modality_spread_one(fitted: tuple[FeatureExtractor, np.ndarray, np.ndarray]) -> None:
    extractor, raw, out = fitted
    assert out.shape == raw.shape == (4, 784, RGB_DIM + 33) and out.dtype == np.float32
    before = spreads(raw)
    assert before[0] / before[1] > 2 or before[1] / before[0] > 2  # the raw modalities are far apart
    np.testing.assert_allclose(spreads(out), (1.0, 1.0), rtol=1e-5)
    assert extractor.spec.options["scales"] == pytest.approx(list(before), rel=1e-12)
    assert extractor.spec.options["normalise"] == "modality"


def test_extract_after_fit_applies_the_scales(
    fitted: tuple[FeatureExtractor, np.ndarray, np.ndarray], train: list[Prepared]
) -> None:
    extractor, _, out = fitted
    np.testing.assert_array_equal(extractor.extract(train), out)


def test_rebuilt_from_the_json_spec_gives_the_same_features(
    fitted: tuple[FeatureExtractor, np.ndarray, np.ndarray], test_samples: list[Prepared]
) -> None:
    extractor, _, _ = fitted
    spec = FeatureSpec.model_validate_json(extractor.spec.model_dump_json())
    ident = WeightsIdentity.model_validate_json(extractor.weights.model_dump_json())
    rebuilt = create_extractor(spec.extractor, spec.options, ident)
    assert rebuilt.spec == extractor.spec
    feats = rebuilt.extract(test_samples)
    np.testing.assert_array_equal(feats, extractor.extract(test_samples))
    assert rebuilt.fit(feats) is feats  # already fitted: nothing more to fit


def test_none_is_the_plain_concatenation(train: list[Prepared]) -> None:
    """RANDOM INIT (seed 1) rgb: the default leaves the features as they were, bit for bit."""
    fused = create_extractor("rgb+fpfh", {"rgb": SMALL_RGB}, WeightsRequest.random(1))
    assert fused.spec.options["normalise"] == "none" and fused.spec.options["scales"] is None
    rgb = create_extractor("rgb", SMALL_RGB, WeightsRequest.random(1))
    fpfh = create_extractor("fpfh")
    both = fused.extract(train[:2])
    np.testing.assert_array_equal(both, np.concatenate([rgb.extract(train[:2]), fpfh.extract(train[:2])], -1))
    assert fused.fit(both) is both and fused.spec.options["scales"] is None


def test_constant_features_are_floored_not_divided_by_zero() -> None:
    """RANDOM INIT (seed 0) rgb; only fit is exercised, on synthetic features."""
    extractor = create_extractor(
        "rgb+fpfh", {"rgb": SMALL_RGB, "normalise": "modality"}, WeightsRequest.random(0)
    )
    const = np.full((2, 784, RGB_DIM + 33), 3.0, dtype=np.float32)
    out = extractor.fit(const)
    assert np.isfinite(out).all()
    assert extractor.spec.options["scales"] == [SPREAD_FLOOR, SPREAD_FLOOR]

    again = create_extractor(
        "rgb+fpfh", {"rgb": SMALL_RGB, "normalise": "modality"}, WeightsRequest.random(0)
    )
    rng = np.random.default_rng(0)
    mixed = np.zeros((2, 784, RGB_DIM + 33), dtype=np.float32)  # fpfh all zero (no valid points)
    mixed[..., :RGB_DIM] = rng.normal(size=(2, 784, RGB_DIM))
    out = again.fit(mixed)
    assert np.isfinite(out).all() and not out[..., RGB_DIM:].any()
    assert again.spec.options["scales"][1] == SPREAD_FLOOR


def test_bad_scales_are_refused() -> None:
    with pytest.raises(InputError, match="only used with normalise='modality'"):
        resolve_options("rgb+fpfh", {"scales": [1.0, 2.0]})
    with pytest.raises(InputError, match="bad option for feature extractor rgb\\+fpfh: scales"):
        resolve_options("rgb+fpfh", {"normalise": "modality", "scales": [0.0, 2.0]})
