"""Backbone weights: named sources, how they load, and how a bank proves it gets the same ones.

Weight sources are registered parts (:data:`WEIGHT_SOURCES`), each recorded in the bank manifest as a
:class:`WeightsIdentity` whose ``kind`` is the source's name:

- ``pretrained``: timm's own pretrained loading (Hugging Face hub, URL, or the local hub cache when
  ``HF_HUB_OFFLINE=1``), with a named tag (``wide_resnet50_2.tv_in1k`` by default: torchvision's ImageNet
  weights, the ones PatchCore and BTF used; ``vit_base_patch8_224.dino`` for ``dino``, as M3DM);
- ``file``: a local state dict of the full model (``.safetensors``, or ``.pt``/``.pth`` read with
  ``torch.load(weights_only=True)``); keys the feature model does not use (``fc.*``, ``layer4.*``,
  a ViT's ``head.*``) are ignored, missing ones are an error;
- ``random``: a seeded random initialisation, an explicit and logged opt-in for tests and demos;
- ``package``: a file an installed distribution ships (:mod:`patchbank.packaged`), real weights with no
  network.

On the command line a source is ``NAME[:VALUE]`` (``random``, ``random:3``, ``file:/models/w.safetensors``,
``pretrained:tv_in1k``; a bare path means ``file``). Whatever the source, the loaded parameters are hashed;
rebuilding an extractor from a manifest refuses weights whose hash differs. Nothing executable is ever loaded.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from patchbank.errors import InputError, WeightsError
from patchbank.registry import Part, Registry

if TYPE_CHECKING:
    import torch

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

    kind: str = Field(
        description="the weight source's name (pretrained: a timm tag, file: a local file, random: a seeded "
        "init, package: an installed distribution's file), or none for extractors without weights (FPFH)"
    )
    tag: str | None = Field(
        None, description="timm model name with pretrained tag, e.g. wide_resnet50_2.tv_in1k"
    )
    file: str | None = Field(
        None, description="absolute path of the local weights file when the bank was built"
    )
    file_sha256: str | None = Field(None, description="sha256 of the local weights file")
    seed: int | None = Field(None, description="torch seed of a random initialisation")
    distribution: str | None = Field(None, description="the installed distribution that shipped the weights")
    distribution_version: str | None = Field(None, description="its version")
    params_sha256: str | None = Field(None, description="sha256 over the loaded parameters (names and bytes)")


NO_WEIGHTS = WeightsIdentity(kind="none")


@dataclass(frozen=True)
class WeightsRequest:
    """What a user asked for: a registered weight source and its options; no source = the extractor's
    default (``FeatureExtractor.default_weights``)."""

    source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | Path | None) -> WeightsRequest:
        """``NAME[:VALUE]`` (VALUE sets the source's main option) or a bare path (``file``)."""
        if text is None or str(text) == "":
            return cls()
        s = str(text)
        name, sep, value = s.partition(":")
        if name not in WEIGHT_SOURCES:
            if "/" in s or Path(s).suffix:  # a path, as --weights has always taken
                return cls("file", {"path": s})
            raise InputError(
                f"unknown weights {s!r}: give NAME[:VALUE] with NAME one of "
                f"{', '.join(WEIGHT_SOURCES.names())}, or a weights file's path"
            )
        primary = WEIGHT_SOURCES.get(name).primary
        if sep and primary is None:
            raise InputError(f"weight source {name!r} takes no value")
        return cls(name, {primary: value} if sep and primary else {})

    @classmethod
    def file(cls, path: str | Path) -> WeightsRequest:
        return cls("file", {"path": str(path)})

    @classmethod
    def random(cls, seed: int = 0) -> WeightsRequest:
        return cls("random", {"seed": seed})

    def describe(self) -> str:
        value = next(iter(self.options.values()), None)
        return self.source or "default" if value is None else f"{self.source}:{value}"


class Backbone(Protocol):
    """What a weight source needs of a model: how to create it, and which module holds a full model's keys."""

    name: str  # timm model name

    def create(self, pretrained_tag: str | None = None) -> torch.nn.Module:
        """The model, randomly initialised (tag None) or with timm's pretrained weights of that tag."""

    def state_owner(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module whose state-dict keys are a full model's."""

    def full_state_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """The full model's state-dict keys and shapes, in order (what a checkpoint of it holds)."""


class WeightSource(Part):
    """Loads a backbone's weights and says which (its :class:`WeightsIdentity`), or rebuilds from one."""

    primary: ClassVar[str | None] = None  # the option ``NAME:VALUE`` sets

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    def load(self, backbone: Backbone) -> tuple[torch.nn.Module, WeightsIdentity]:
        raise NotImplementedError

    @classmethod
    def rebuild(cls, ident: WeightsIdentity, backbone: Backbone) -> torch.nn.Module:
        """The model with the weights ``ident`` records (the caller checks the parameter hash)."""
        raise NotImplementedError


WEIGHT_SOURCES: Registry[type[WeightSource]] = Registry("weight source")
register_weights = WEIGHT_SOURCES.register


class PretrainedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str | None = Field(None, description="timm pretrained tag (default: the backbone's, e.g. tv_in1k)")


@register_weights("pretrained")
class Pretrained(WeightSource):
    """timm's pretrained loading of ``backbone.tag`` (hub, or its local cache offline)."""

    options_model = PretrainedOptions
    primary = "tag"

    def load(self, backbone: Backbone) -> tuple[torch.nn.Module, WeightsIdentity]:
        tag = self.options.tag or DEFAULT_PRETRAINED_TAGS.get(backbone.name)  # type: ignore[attr-defined]
        full = f"{backbone.name}.{tag}" if tag else backbone.name
        return self._create(backbone, full), WeightsIdentity(kind=self.name, tag=full)

    @classmethod
    def rebuild(cls, ident: WeightsIdentity, backbone: Backbone) -> torch.nn.Module:
        return cls._create(backbone, ident.tag or backbone.name)

    @staticmethod
    def _create(backbone: Backbone, full_tag: str) -> torch.nn.Module:
        try:
            with hub_offline_when_unreachable():
                return backbone.create(full_tag.partition(".")[2] or None)
        except Exception as exc:  # network, hub and cache errors come in many types
            raise WeightsError(f"{offline_help(full_tag)} (cause: {type(exc).__name__}: {exc})") from exc


class FileOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="a state dict of the full model: .safetensors, .pt, .pth or .bin")


@register_weights("file")
class File(WeightSource):
    """A local state dict of the full model; the manifest records its path and sha256."""

    options_model = FileOptions
    primary = "path"

    def load(self, backbone: Backbone) -> tuple[torch.nn.Module, WeightsIdentity]:
        path = Path(self.options.path).expanduser().resolve()  # type: ignore[attr-defined]
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        ident = WeightsIdentity(kind=self.name, file=str(path), file_sha256=sha256_file(path))
        return from_file(backbone, path), ident

    @classmethod
    def rebuild(cls, ident: WeightsIdentity, backbone: Backbone) -> torch.nn.Module:
        return from_file(backbone, recorded_file(ident, None))


class RandomOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="torch seed of the initialisation")


@register_weights("random")
class Random(WeightSource):
    """A seeded random initialisation: for tests and demos only, and logged as such."""

    options_model = RandomOptions
    primary = "seed"

    def load(self, backbone: Backbone) -> tuple[torch.nn.Module, WeightsIdentity]:
        seed = self.options.seed  # type: ignore[attr-defined]
        return self._create(backbone, seed), WeightsIdentity(kind=self.name, seed=seed)

    @classmethod
    def rebuild(cls, ident: WeightsIdentity, backbone: Backbone) -> torch.nn.Module:
        return cls._create(backbone, ident.seed or 0)

    @staticmethod
    def _create(backbone: Backbone, seed: int) -> torch.nn.Module:
        import torch

        log.warning(
            "using a RANDOMLY INITIALISED %s (seed %d): for tests and demos only, scores are not meaningful",
            backbone.name,
            seed,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return backbone.create()


def load_weights(
    backbone: Backbone, request: WeightsRequest, default: str = "pretrained"
) -> tuple[torch.nn.Module, WeightsIdentity]:
    """A backbone with the requested weights (``default`` source when the request names none), and the
    identity to record in the manifest, parameter hash included."""
    name = request.source or default
    source = WEIGHT_SOURCES.get(name)
    model, ident = source(WEIGHT_SOURCES.options(name, request.options)).load(backbone)
    return model, ident.model_copy(update={"params_sha256": params_sha256(model)})


def rebuild_weights(backbone: Backbone, ident: WeightsIdentity, override: str | None) -> torch.nn.Module:
    """The backbone a bank recorded; refuses weights whose file or parameter hash differs.

    ``override`` points at a local file holding the same weights (a moved file, or a pretrained tag's
    weights saved locally): the parameter hash decides.
    """
    if override is not None:
        model = from_file(backbone, recorded_file(ident, override))
    elif ident.kind in WEIGHT_SOURCES:
        model = WEIGHT_SOURCES.get(ident.kind).rebuild(ident, backbone)
    else:
        raise WeightsError(f"a {backbone.name} backbone needs weights; the bank records {ident.kind!r}")
    digest = params_sha256(model)
    if ident.params_sha256 is not None and digest != ident.params_sha256:
        raise WeightsError(
            "the rebuilt backbone's parameters differ from those the bank was built with "
            f"(params sha256 {digest[:12]}… != {ident.params_sha256[:12]}…); refusing other weights"
        )
    return model


def from_file(backbone: Backbone, path: Path) -> torch.nn.Module:
    """A model with a local state dict of the full model loaded: the tensors it keeps must all be there
    with their shapes (the head and the layers or blocks it dropped are ignored)."""
    model = backbone.create()
    load_into(backbone.state_owner(model), read_state_dict(path), path)
    return model


def recorded_file(ident: WeightsIdentity, override: str | None) -> Path:
    """The weights file to rebuild from: the override (a moved file) or the recorded path, sha256-checked."""
    path = Path(override).expanduser().resolve() if override else Path(ident.file or "")
    if not path.is_file():
        raise WeightsError(
            f"the bank's weights file {path} is missing; pass --weights PATH (or PATCHBANK_WEIGHTS) "
            "to point at the same file (its sha256 must match)"
        )
    if ident.kind == "file" and sha256_file(path) != ident.file_sha256:
        raise WeightsError(
            f"weights file {path} differs from the one the bank was built with "
            f"(sha256 {ident.file_sha256}); refusing to score with other weights"
        )
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def params_sha256(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in state-dict order."""
    import torch

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights only, never unpickling code)."""
    import torch

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
        "cache). Provide them as a local file with --weights file:PATH (a .safetensors or .pt state dict of the "
        "full model, e.g. torchvision's wide_resnet50_2 ImageNet weights) or PATCHBANK_WEIGHTS; pre-fill the hub "
        "cache and set HF_HUB_OFFLINE=1; or pass --weights random for tests and demos"
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


from patchbank import packaged  # noqa: E402, F401  (registers the package source, which builds on this module)
