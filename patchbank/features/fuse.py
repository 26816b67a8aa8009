"""Batch normalisation folded into the convolution before it, for inference.

In eval mode a BatchNorm after a convolution is an affine map per channel, so it folds into that convolution's
weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``); the BatchNorm is then replaced by what remains
of it (nothing, or timm's ``BatchNormAct2d``'s dropout and activation). EfficientNet-lite and ResNets have a
BatchNorm after every convolution, so this removes a pass over every activation map (lite0, channels-last, a
batch of 8 at 224 x 224 on a 2-core CPU: 13.2 -> 8.5 ms per sample, outputs equal to 3e-6 relative).

The pairs are found by running the model once on a probe input and watching which BatchNorm consumes a
convolution's output directly, so no architecture is hard-coded. A pair is folded only when each of the two
ran exactly once and the BatchNorm is one this module knows how to replace. The folded model is checked
against the original's outputs on the probe; if it differs by more than rounding, every pair is put back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RELATIVE_TOLERANCE = 1e-4  # of each output's largest value: float32 rounding of a folded model is ~1e-6


def _conv_bn_pairs(
    model: torch.nn.Module, probe: torch.Tensor
) -> tuple[list[tuple[str, str]], list[torch.Tensor]]:
    """(convolution, batchnorm) module names where the batchnorm's input is the convolution's output, and the
    model's outputs on ``probe``."""
    import torch

    produced: dict[int, str] = {}  # id of a convolution's output -> its module name
    keep: list[torch.Tensor] = []  # outputs kept alive during the probe so their ids stay unique
    calls: dict[str, int] = {}
    found: list[tuple[str, str]] = []

    def on_conv(name: str) -> Any:
        def hook(_m: torch.nn.Module, _inputs: tuple[Any, ...], output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                produced[id(output)] = name
                keep.append(output)

        return hook

    def on_bn(name: str) -> Any:
        def hook(_m: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
            if inputs and id(inputs[0]) in produced:
                found.append((produced[id(inputs[0])], name))

        return hook

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):  # subclasses too (timm's Conv2dSame pads, then convolves)
            handles.append(m.register_forward_hook(on_conv(name)))
        elif isinstance(m, torch.nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(on_bn(name)))
    try:
        with torch.inference_mode():
            outputs = _outputs(model(probe))
    finally:
        for h in handles:
            h.remove()
    return [(c, b) for c, b in found if calls[c] == 1 and calls[b] == 1], outputs


def _remainder(bn: torch.nn.Module) -> torch.nn.Module | None:
    """What stays of a BatchNorm once its affine map is folded away, or None for a kind not known here."""
    import torch

    if type(bn) is torch.nn.BatchNorm2d:
        return torch.nn.Identity()
    # timm's BatchNormAct2d: batch norm, then dropout, then activation
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "drop") and hasattr(bn, "act"):
        return torch.nn.Sequential(bn.drop, bn.act)
    return None


def fold_batchnorm(model: torch.nn.Module, probe: torch.Tensor) -> list[torch.Tensor]:
    """Put ``model`` in eval mode and fold every convolution -> BatchNorm pair into the convolution, in place;
    leave it as it was when there is none, or when the folded model's outputs on ``probe`` differ. Returns
    the model's outputs on ``probe`` (its feature maps' shapes are what callers often need)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    pairs, want = _conv_bn_pairs(model, probe)
    undo: list[tuple[str, torch.nn.Module]] = []
    for conv_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        rest = _remainder(bn)
        if rest is None or not bn.track_running_stats:  # type: ignore[union-attr]
            continue
        conv = model.get_submodule(conv_name)
        undo += [(conv_name, conv), (bn_name, bn)]
        _set(model, conv_name, fuse_conv_bn_eval(conv, bn))  # type: ignore[arg-type]
        _set(model, bn_name, rest)
    if not undo:
        return want
    with torch.inference_mode():
        got = _outputs(model(probe))
    if len(got) != len(want) or any(
        g.shape != w.shape or float((g - w).abs().max()) > RELATIVE_TOLERANCE * (float(w.abs().max()) or 1.0)
        for g, w in zip(got, want, strict=False)
    ):
        log.warning("folding batch norm changed the backbone's outputs; running it unfolded")
        for name, module in reversed(undo):
            _set(model, name, module)
        return want
    return got


def _outputs(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, list | tuple) else [out]


def _set(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)
