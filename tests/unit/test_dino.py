"""The ``dino`` extractor (DINO ViT-B/8, M3DM's RGB feature): real timm ViT-B/8 models, random weights
wherever a test says so, a real 350 MB local weights file, and timm's offline pretrained path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from patchbank.data import list_samples
from patchbank.errors import InputError, WeightsError
from patchbank.extract import load_prepared
from patchbank.features import FeatureSpec, create_extractor, resolve_options
from patchbank.features.base import FeatureExtractor
from patchbank.preprocess import IMAGENET_MEAN, IMAGENET_STD, Prepared
from patchbank.weights import WeightsIdentity, WeightsRequest, params_sha256, sha256_file
from tests.conftest import CATEGORY

VIT = "vit_base_patch8_224"


@pytest.fixture(scope="module")
def prepared(demo_root: Path) -> list[Prepared]:
    return [load_prepared(r, 224) for r in list_samples(demo_root, CATEGORY, "train")[:2]]


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full vit_base_patch8_224 state dict (head.* included) with random values (seed 11), as a local
    .safetensors file: the shape of the hub checkpoint, without the download."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        state = timm.create_model(VIT).state_dict()
    path = tmp_path_factory.mktemp("w") / "vit_b8.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def random_dino() -> FeatureExtractor:
    """RANDOM INIT (seed 0), explicitly: the plumbing is under test, not the weights."""
    return create_extractor("dino", None, WeightsRequest.random(0))


def plain_m3dm_tokens(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """M3DM's forward_rgb_features: all blocks, the final norm, class token dropped, as a (B, 768, 28, 28)
    map; then the pooling every map goes through here (3x3 average, adaptive average to 28 x 28)."""
    with torch.no_grad():
        tokens = model.forward_features(x)[:, 1:]
    fmap = tokens.permute(0, 2, 1).reshape(x.shape[0], -1, 28, 28)
    return torch.nn.AdaptiveAvgPool2d((28, 28))(torch.nn.AvgPool2d(3, stride=1)(fmap))


def test_dino_options_and_defaults() -> None:
    opts = resolve_options("dino")
    assert opts == {
        "backbone": VIT,
        "layers": [-1],
        "image_size": 224,
        "precision": "fp32",
        "final_norm": True,
        "mean": [0.485, 0.456, 0.406],  # timm's configuration of the dino tag: ImageNet's
        "std": [0.229, 0.224, 0.225],
    }
    assert "final_norm" not in resolve_options("rgb")  # the rgb extractor's spec is unchanged
    with pytest.raises(InputError, match="bad option for feature extractor dino: image_size"):
        resolve_options("dino", {"image_size": 256})


def test_random_init_dino_is_vit_b8_last_block_normed_28x28x768(
    random_dino: FeatureExtractor, prepared: list[Prepared]
) -> None:
    """RANDOM INIT (seed 0): the entry builds ViT-B/8 and takes M3DM's tokens, pooled as every map."""
    assert random_dino.spec.extractor == "dino" and random_dino.dim == 768
    assert random_dino.weights.kind == "random" and random_dino.weights.seed == 0
    feats = random_dino.extract(prepared)
    assert feats.shape == (2, 784, 768) and feats.dtype == np.float32

    torch.manual_seed(0)
    full = timm.create_model(VIT).eval()
    x = (np.stack([p.rgb for p in prepared]) - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    ref = plain_m3dm_tokens(full, torch.from_numpy(x))  # DINO's tag normalises with ImageNet's mean/std
    np.testing.assert_allclose(feats, ref.flatten(2).permute(0, 2, 1).numpy(), rtol=1e-4, atol=1e-5)


def test_bf16_dino_is_recorded_and_close_to_fp32(
    random_dino: FeatureExtractor, prepared: list[Prepared]
) -> None:
    """RANDOM INIT (seed 0): bf16 autocast changes the arithmetic, not the features' meaning."""
    bf16 = create_extractor("dino", {"precision": "bf16"}, WeightsRequest.random(0))
    assert bf16.spec.options["precision"] == "bf16" and bf16.weights == random_dino.weights
    a, b = random_dino.extract(prepared[:1])[0], bf16.extract(prepared[:1])[0]
    assert b.dtype == np.float32 and not np.array_equal(a, b)
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert np.median(rel) < 0.02


def test_local_file_loads_is_recorded_and_rebuilds_identically(
    vit_file: Path, prepared: list[Prepared]
) -> None:
    """A full model's state dict (timm's names, head.* included) loads into the feature model."""
    built = create_extractor("dino", None, WeightsRequest.file(vit_file))
    assert built.weights.kind == "file" and built.weights.file_sha256 == sha256_file(vit_file)
    own = built.model.state_dict()  # type: ignore[attr-defined]
    with safe_open(str(vit_file), "pt") as f:
        keys = set(f.keys())
        assert {"head.weight", "head.bias"} <= keys  # ignored: the feature model has no head
        for key in ("cls_token", "blocks.11.mlp.fc2.weight", "norm.weight"):
            assert torch.equal(own[f"model.{key}"], f.get_tensor(key))

    # a bank's manifest round trip: spec and identity through JSON, then the same extractor again
    spec = FeatureSpec.model_validate_json(built.spec.model_dump_json())
    ident = WeightsIdentity.model_validate_json(built.weights.model_dump_json())
    rebuilt = create_extractor(spec.extractor, spec.options, ident)
    assert rebuilt.spec == built.spec and params_sha256(rebuilt.model) == ident.params_sha256  # type: ignore[attr-defined]
    np.testing.assert_array_equal(rebuilt.extract(prepared[:1]), built.extract(prepared[:1]))


def test_rebuild_refuses_other_weights(random_dino: FeatureExtractor) -> None:
    """RANDOM INIT: an identity whose parameters hash differs from what it rebuilds is refused."""
    other = random_dino.weights.model_copy(update={"seed": 1})
    with pytest.raises(WeightsError, match="parameters differ from those the bank was built with"):
        create_extractor("dino", random_dino.spec.options, other)


def test_a_file_for_another_architecture_is_refused(tmp_path: Path) -> None:
    cnn = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(cnn))
    with pytest.raises(WeightsError, match=r"lacks \d+ tensors .*cls_token.*same architecture"):
        create_extractor("dino", None, WeightsRequest.file(cnn))

    small = tmp_path / "vit_s16.pt"
    torch.save(timm.create_model("vit_small_patch16_224").state_dict(), small)
    with pytest.raises(
        WeightsError, match=r"cls_token has shape \(1, 1, 384\), the model expects \(1, 1, 768\)"
    ):
        create_extractor("dino", None, WeightsRequest.file(small))


def test_offline_pretrained_fails_fast_with_instructions() -> None:
    """No network here, no hub cache: timm's pretrained loading of the dino tag fails with the way out."""
    with pytest.raises(
        WeightsError, match=r"'vit_base_patch8_224\.dino'.*--weights file:PATH.*--weights random"
    ):
        create_extractor("dino")
