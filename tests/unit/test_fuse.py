"""Batch norm folded into convolutions: same outputs, fewer layers, and nothing folded where that is wrong."""

from __future__ import annotations

import pytest
import torch

from patchbank.features import create_extractor
from patchbank.features.fuse import fold_batchnorm
from patchbank.weights import WeightsRequest


def _bn(channels: int, seed: int) -> torch.nn.BatchNorm2d:
    """A batch norm with running statistics and an affine map far from the identity."""
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(channels)
    bn.running_mean.copy_(torch.randn(channels, generator=g))
    bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
    bn.weight.data.copy_(torch.randn(channels, generator=g))
    bn.bias.data.copy_(torch.randn(channels, generator=g))
    return bn.eval()


class Plain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = _bn(8, 1)
        self.act = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvOutputUsedTwice(torch.nn.Module):
    """The convolution's output feeds the batch norm and a skip: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = _bn(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class SharedConv(torch.nn.Module):
    """One convolution run twice, each time into its own batch norm: it cannot hold both."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn_a, self.bn_b = _bn(3, 3), _bn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_b(self.conv(self.bn_a(self.conv(x))))


def _probe(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _batchnorms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_a_conv_bn_pair_folds_to_the_same_outputs_on_other_inputs() -> None:
    model = Plain()
    x = _probe(7)
    with torch.inference_mode():
        before = model(x)
    probe = _probe()
    outputs = fold_batchnorm(model, probe)
    assert _batchnorms(model) == 0
    with torch.inference_mode():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
        assert len(outputs) == 1 and torch.equal(outputs[0], model(probe))  # the folded model's


def test_a_conv_output_used_elsewhere_is_left_unfolded(caplog: pytest.LogCaptureFixture) -> None:
    model = ConvOutputUsedTwice()
    x = _probe(7)
    with torch.inference_mode():
        before = model(x)
    fold_batchnorm(model, _probe())
    assert "running it unfolded" in caplog.text  # the check on the probe caught the change, and undid it
    assert _batchnorms(model) == 1
    with torch.inference_mode():
        assert torch.equal(model(x), before)


def test_a_convolution_run_twice_is_not_folded() -> None:
    model = SharedConv()
    fold_batchnorm(model, _probe())
    assert _batchnorms(model) == 2


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18"])
def test_backbones_run_with_every_batch_norm_folded_and_the_same_features(backbone: str) -> None:
    """timm's BatchNormAct2d and Conv2dSame (EfficientNet-lite) and plain BatchNorm2d (ResNets) all fold."""
    options = {"backbone": backbone, "layers": [2, 3]}
    extractor = create_extractor("rgb", options, WeightsRequest.random(3))
    assert _batchnorms(extractor.model) == 0  # type: ignore[attr-defined]
    import timm

    torch.manual_seed(3)  # the same seeded initialisation as the random weight source
    reference = timm.create_model(backbone, features_only=True, out_indices=(2, 3)).eval()
    reference.load_state_dict(_unfolded_state(backbone))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for got, want in zip(extractor.model(x), reference(x), strict=True):  # type: ignore[attr-defined]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def _unfolded_state(backbone: str) -> dict[str, torch.Tensor]:
    from patchbank.features.rgb import RGBOptions, TimmBackbone
    from patchbank.weights import load_weights

    model, _ = load_weights(TimmBackbone(RGBOptions(backbone=backbone)), WeightsRequest.random(3))
    return model.state_dict()
