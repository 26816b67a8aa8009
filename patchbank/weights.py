"""Backbone weights: where they come from, how they load, and how a bank proves it gets the same ones.

Three sources, recorded in the bank manifest as a :class:`WeightsIdentity`:

- ``pretrained``: timm's own pretrained loading (Hugging Face hub, URL, or the local hub cache when
  ``HF_HUB_OFFLINE=1``), with a named tag (``wide_resnet50_2.tv_in1k`` by default: torchvision's ImageNet
  weights, the ones PatchCore and BTF used; ``vit_base_patch8_224.dino`` for ``dino``, as M3DM);
- ``file``: a local state dict of the full model (``.safetensors``, or ``.pt``/``.pth`` read with
  ``torch.load(weights_only=True)``); keys the feature model does not use (``fc.*``, ``layer4.*``,
  a ViT's ``head.*``) are ignored, missing ones are an error;
- ``random``: a seeded random initialisation, an explicit and logged opt-in for tests and demos.

Whatever the source, the loaded parameters are hashed; rebuilding an extractor from a manifest refuses
weights whose hash differs. Nothing executable is ever loaded.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from pydantic import BaseModel, ConfigDict, Field

from patchbank.errors import WeightsError

log = logging.getLogger(__name__)

DEFAULT_PRETRAINED_TAGS: dict[str, str] = {
    "wide_resnet50_2": "tv_in1k",
    "resnet18": "tv_in1k",
    "resnet50": "tv_in1k",
    "vit_base_patch8_224": "dino",  # M3DM's RGB backbone (timm's own default tag is a supervised one)
}
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


class WeightsIdentity(BaseModel):
    """Which weights a feature extractor was built with (stored in the bank manifest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["pretrained", "file", "random", "none"] = Field(
        description="timm pretrained tag, a local file, a seeded random init, or no weights at all (FPFH)"
    )
    tag: str | None = Field(
        None, description="timm model name with pretrained tag, e.g. wide_resnet50_2.tv_in1k"
    )
    file: str | None = Field(
        None, description="absolute path of the local weights file when the bank was built"
    )
    file_sha256: str | None = Field(None, description="sha256 of the local weights file")
    seed: int | None = Field(None, description="torch seed of a random initialisation")
    params_sha256: str | None = Field(None, description="sha256 over the loaded parameters (names and bytes)")


NO_WEIGHTS = WeightsIdentity(kind="none")


@dataclass(frozen=True)
class WeightsRequest:
    """What a user asked for: a local file, a random init, or timm's pretrained tag (the default)."""

    path: Path | None = None
    random_seed: int | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        if self.path is not None and self.random_seed is not None:
            raise WeightsError("choose either a weights file or random weights, not both")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def params_sha256(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights only, never unpickling code)."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"weights file {path} must be one of {', '.join(WEIGHT_SUFFIXES)}")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return state


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load the tensors the model has; extra keys are ignored, missing keys or wrong shapes are errors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsError(
            f"weights file {source} lacks {len(missing)} tensors the model needs "
            f"(first: {', '.join(missing[:3])}); is it a state dict of the same architecture?"
        )
    wrong = [k for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise WeightsError(
            f"weights file {source}: {k} has shape {tuple(state[k].shape)}, the model expects {tuple(own[k].shape)}"
        )
    extra = len(set(state) - set(own))
    if extra:
        log.info(
            "weights %s: ignoring %d tensors the feature model does not use (e.g. fc.*)", source.name, extra
        )
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def offline_help(tag: str) -> str:
    return (
        f"could not load pretrained weights {tag!r} through timm (no network, and not in the local Hugging Face "
        "cache). Provide them as a local file with --weights PATH (a .safetensors or .pt state dict of the full "
        "model, e.g. torchvision's wide_resnet50_2 ImageNet weights) or PATCHBANK_WEIGHTS; pre-fill the hub "
        "cache and set HF_HUB_OFFLINE=1; or pass --random-weights for tests and demos"
    )


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    host = urlparse(endpoint).hostname or endpoint
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextmanager
def hub_offline_when_unreachable() -> Iterator[None]:
    """Within this block the Hugging Face hub is used offline (local cache only) when it cannot be reached,
    so a machine without network fails in a second instead of retrying for a minute."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _hub_reachable(constants.ENDPOINT):
        yield
        return
    log.info("the Hugging Face hub is unreachable: looking for pretrained weights in the local cache only")
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False
