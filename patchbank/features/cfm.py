"""Crossmodal feature mapping (CFM; Costanzino et al., CVPR 2024, "Multimodal Industrial Anomaly Detection
by Crossmodal Feature Mapping"), scored through the product's memory bank.

CFM learns, per category and on good parts only, two small MLPs: one maps a patch's 2D (RGB) feature to its
3D feature, the other the 3D feature to the 2D one. On a good part the mappings agree with what is observed;
a defect breaks the correspondence between the modalities, so the mapping error is the anomaly signal. Here
the 3D feature is FPFH (:mod:`.fpfh`), not a pretrained point-cloud network, and the 2D one an ``rgb``
backbone (:mod:`.rgb`, its default options).

The recipe (:func:`train_mappings`), as CFM's: each MLP is Linear, GELU, Linear, GELU, Linear with hidden
width (in + out) // 2 (152-d lite0 + 33-d FPFH: 92); Adam, lr 1e-3; loss the cosine distance
1 - cos(mapped, observed), summed over both directions; trained on the foreground patches only (those with
an FPFH vector: FPFH is zero where the cloud has no points). The features are first divided per modality by
their spread on the training patches (:func:`.concat.modality_spread`), so both enter the MLPs at unit scale.
Deterministic: the torch generator is forked and seeded, and the batch order comes from that seed; torch
trains on one thread. Defaults: 20 epochs of 256-patch batches, 10-15 s for 30 samples on 2 busy cores.

How it is scored, honestly: not as the paper does. CFM multiplies the two per-patch cosine distances and
takes the maximum of the blurred map. This product has one scoring path, a memory bank searched by L2
distance (:mod:`patchbank.scorer`), so after fitting ``extract`` returns per patch the two *mapping
residuals* (same dimension D = D_rgb + 33 as the raw concatenation)::

    [ unit(f_3d->2d(fpfh)) - unit(rgb) ,  unit(f_2d->3d(rgb)) - unit(fpfh) ]

of the scaled features, unit(x) = x / |x| (0 stays 0). Unit vectors because the cosine loss leaves the norm
of a mapped vector free: only its direction is trained, so only directions are compared. Each half's
squared norm is 2 (1 - cos), twice CFM's per-patch error in that direction. The bank holds the good parts'
residuals and a test patch scores by its residual's distance to the nearest good one. Where goods map well
(residuals near 0) that distance is |r| = sqrt(2 (e_2d + e_3d)), a function of the sum of CFM's two errors
rather than of their product; where goods themselves map poorly (background, edges) the bank absorbs the
error a good part has there instead of flagging it, which the paper's raw error does not. The two halves are
not rebalanced: with FPFH, mapping 33-d geometry to a texture feature is ill-posed, so the 3d->2d half is
the larger (about 0.6 vs 0.08 mean norm on the demo data) and weighs more in the distances. On the
synthetic demo data neither this nor the paper's product clearly beats ``rgb+fpfh`` with modality scaling.

Before fitting, ``extract`` returns the raw concatenation [rgb, fpfh] (as ``rgb+fpfh``), which is what
:meth:`CFMExtractor.fit` is given. The fitted scales and MLP weights go into the options (the manifest is
JSON: each tensor as base64 of its little-endian float32 bytes with its shape, :class:`EncodedTensor`; no
pickle), so a rebuilt extractor computes bit-identical features on the same machine. The MLPs always run on
the CPU, one sample (784 patches) per call, so a sample's features do not depend on the batch it is in.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from typing import TYPE_CHECKING, Annotated, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from patchbank.errors import InputError
from patchbank.features.base import (
    GRID,
    FeatureSpec,
    register_extractor,
)
from patchbank.features.concat import WithRGBPart, divide_modalities, fit_scales
from patchbank.features.fpfh import FPFHExtractor, FPFHOptions
from patchbank.features.rgb import RGBExtractor, RGBOptions
from patchbank.preprocess import Prepared

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_FLOAT32_LE = np.dtype("<f4")  # the byte order the manifest stores tensors in, whatever the machine's
_CHUNK = GRID * GRID  # patches per MLP call: one sample, so a sample's features never depend on its batch

Scale = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class EncodedTensor(BaseModel):
    """A float32 tensor in JSON: its shape and its little-endian float32 bytes, base64-encoded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: tuple[Annotated[int, Field(ge=1)], ...] = Field(description="the tensor's shape")
    data: str = Field(description="base64 of the tensor's little-endian float32 bytes, row-major")

    @model_validator(mode="after")
    def _data_fits_shape(self) -> Self:
        values = self._values()
        if not np.isfinite(values).all():
            raise ValueError(f"tensor {self.shape} holds a value that is not finite")
        return self

    def _values(self) -> np.ndarray:
        """The flat float32 values; ValueError when ``data`` is not base64 or not ``shape``'s length."""
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"tensor {self.shape}: data is not base64 ({exc})") from None
        want = math.prod(self.shape) * _FLOAT32_LE.itemsize
        if len(raw) != want:
            raise ValueError(
                f"tensor {self.shape} needs {want} bytes of float32, its data holds {len(raw)} bytes"
            )
        return np.frombuffer(raw, dtype=_FLOAT32_LE)

    def decode(self) -> np.ndarray:
        """The tensor as a new native float32 array of ``shape``."""
        return self._values().astype(np.float32).reshape(self.shape)

    @classmethod
    def encode(cls, array: np.ndarray) -> EncodedTensor:
        """Encode a float32 array exactly (other float dtypes are cast to float32 first)."""
        values = np.ascontiguousarray(array, dtype=_FLOAT32_LE)
        return cls(shape=values.shape, data=base64.b64encode(values.tobytes()).decode("ascii"))


class LinearLayer(BaseModel):
    """One ``torch.nn.Linear``: y = x W^T + b."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: EncodedTensor = Field(description="W, (out, in)")
    bias: EncodedTensor = Field(description="b, (out,)")

    @model_validator(mode="after")
    def _shapes_agree(self) -> Self:
        if len(self.weight.shape) != 2:
            raise ValueError(f"a layer's weight must be (out, in), got {self.weight.shape}")
        if self.bias.shape != self.weight.shape[:1]:
            raise ValueError(f"a layer's bias must be ({self.weight.shape[0]},), got {self.bias.shape}")
        return self


class MLPWeights(BaseModel):
    """One mapping MLP: its linear layers, input to output, with a GELU between consecutive layers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layers: tuple[LinearLayer, ...] = Field(min_length=1, description="the linear layers, input first")

    @model_validator(mode="after")
    def _layers_chain(self) -> Self:
        for i, (a, b) in enumerate(pairwise(self.layers)):
            if b.weight.shape[1] != a.weight.shape[0]:
                raise ValueError(
                    f"layer {i + 1} takes {b.weight.shape[1]} inputs, layer {i} gives {a.weight.shape[0]}"
                )
        return self

    @property
    def in_dim(self) -> int:
        return self.layers[0].weight.shape[1]

    @property
    def out_dim(self) -> int:
        return self.layers[-1].weight.shape[0]

    @classmethod
    def of(cls, mlp: torch.nn.Sequential) -> MLPWeights:
        """The weights of an MLP built by :func:`build_mlp`."""
        import torch

        linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
        return cls(
            layers=tuple(
                LinearLayer(
                    weight=EncodedTensor.encode(m.weight.detach().cpu().numpy()),
                    bias=EncodedTensor.encode(m.bias.detach().cpu().numpy()),
                )
                for m in linears
            )
        )

    def module(self) -> torch.nn.Sequential:
        """The MLP with these weights, in eval mode, on the CPU (torch's generator left as it was)."""
        import torch

        dims = [self.in_dim, *(layer.weight.shape[0] for layer in self.layers)]
        with torch.random.fork_rng(devices=[]):  # the initialisation, overwritten below, draws from it
            mlp = build_mlp(dims)
        linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for m, layer in zip(linears, self.layers, strict=True):
                m.weight.copy_(torch.from_numpy(layer.weight.decode()))
                m.bias.copy_(torch.from_numpy(layer.bias.decode()))
        return mlp.eval()


class Mappings(BaseModel):
    """CFM's two fitted mappings between a patch's RGB feature and its 3D (FPFH) feature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    to_3d: MLPWeights = Field(description="f_2d->3d: a scaled rgb feature to its scaled fpfh feature")
    to_rgb: MLPWeights = Field(description="f_3d->2d: a scaled fpfh feature to its scaled rgb feature")

    @model_validator(mode="after")
    def _mappings_are_inverse(self) -> Self:
        if (self.to_3d.in_dim, self.to_3d.out_dim) != (self.to_rgb.out_dim, self.to_rgb.in_dim):
            raise ValueError(
                f"to_3d maps {self.to_3d.in_dim} -> {self.to_3d.out_dim} but to_rgb maps "
                f"{self.to_rgb.in_dim} -> {self.to_rgb.out_dim}: they must map between the same two spaces"
            )
        return self


class CFMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rgb: RGBOptions = Field(default_factory=RGBOptions, description="options of the rgb (2D) part")
    fpfh: FPFHOptions = Field(default_factory=FPFHOptions, description="options of the fpfh (3D) part")
    hidden: int | None = Field(
        None, ge=1, description="hidden width of both MLPs; default (in + out) // 2, as CFM"
    )
    epochs: int = Field(20, ge=1, description="passes over the training patches")
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False, description="Adam learning rate")
    batch_size: int = Field(256, ge=1, description="patches per training step")
    seed: int = Field(0, ge=0, description="seed of the MLPs' initialisation and of the batch order")
    scales: tuple[Scale, Scale] | None = Field(
        None,
        description="fitted: each modality's spread on the training patches (rgb, fpfh)",
        json_schema_extra={"cli": False},
    )
    mappings: Mappings | None = Field(
        None,
        description="fitted: the two mapping MLPs' weights",
        json_schema_extra={"cli": False},
    )

    @model_validator(mode="after")
    def _fitted_together(self) -> Self:
        if (self.scales is None) != (self.mappings is None):
            raise ValueError("scales and mappings are fitted together: give both or neither")
        return self


def build_mlp(dims: Sequence[int]) -> torch.nn.Sequential:
    """Linear layers through ``dims`` (in, hidden..., out) with a GELU between consecutive ones (CFM's
    mapping network for dims (in, h, h, out)), initialised from torch's global generator."""
    import torch

    modules: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(pairwise(dims)):
        if i:
            modules.append(torch.nn.GELU())
        modules.append(torch.nn.Linear(a, b))
    return torch.nn.Sequential(*modules)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) along the last axis: CFM's loss and per-patch error."""
    import torch

    return 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one CPU thread for a while: the MLPs are far too small to gain from more (on a busy
    machine, waiting threads make each step many times slower), and one thread makes the trained weights
    independent of the machine's core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_mappings(
    rgb: np.ndarray,
    geo: np.ndarray,
    *,
    hidden: int | None,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> Mappings:
    """Train CFM's two mappings on corresponding (P, d_rgb) and (P, d_3d) patch features: rgb -> geo and
    geo -> rgb, each Linear-GELU-Linear-GELU-Linear of width ``hidden`` ((d_rgb + d_3d) // 2 when None),
    jointly by Adam on the sum of both directions' mean cosine distance, in shuffled batches.

    Deterministic: torch's generator is forked (the caller's stream is untouched) and seeded with ``seed``,
    which also orders the batches."""
    import torch

    if rgb.ndim != 2 or geo.ndim != 2 or len(rgb) != len(geo) or len(rgb) == 0:
        raise InputError(f"train_mappings expects (P, d) and (P, d') patches, got {rgb.shape}, {geo.shape}")
    d_rgb, d_3d = rgb.shape[1], geo.shape[1]
    width = hidden or (d_rgb + d_3d) // 2
    x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(geo, dtype=np.float32))
    with _one_thread(), torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)
        to_3d = build_mlp([d_rgb, width, width, d_3d])
        to_rgb = build_mlp([d_3d, width, width, d_rgb])
        optimiser = torch.optim.Adam([*to_3d.parameters(), *to_rgb.parameters()], lr=lr)
        order = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            total = torch.zeros(2, dtype=torch.float64)
            for idx in torch.randperm(len(x), generator=order).split(batch_size):
                xb, yb = x[idx], y[idx]
                err_3d = cosine_distance(to_3d(xb), yb).mean()
                err_rgb = cosine_distance(to_rgb(yb), xb).mean()
                optimiser.zero_grad()
                (err_3d + err_rgb).backward()
                optimiser.step()
                total += torch.stack([err_3d.detach(), err_rgb.detach()]).double() * len(idx)
            if epoch in (0, epochs - 1):
                mean = (total / len(x)).tolist()
                log.info("cfm epoch %d: cosine distance rgb->3d %.4f, 3d->rgb %.4f", epoch + 1, *mean)
    return Mappings(to_3d=MLPWeights.of(to_3d), to_rgb=MLPWeights.of(to_rgb))


def fit_options(features: np.ndarray, split: int, options: CFMOptions) -> CFMOptions:
    """``options`` with the fit of raw (N, P, D) [rgb, fpfh] training features (rgb the first ``split``
    columns): the per-modality scales on every patch, then the two mappings trained on the scaled
    foreground patches (3D feature not all zero), and the hidden width they were trained with."""
    if features.ndim != 3 or not 0 < split < features.shape[-1]:
        raise InputError(f"fit expects (N, patches, D) features with D > {split}, got {features.shape}")
    flat = features.reshape(-1, features.shape[-1])
    foreground = np.any(flat[:, split:] != 0, axis=1)
    if not foreground.any():
        raise InputError("cfm: no training patch has a 3D feature (every cloud empty?): nothing to map")
    scales = fit_scales(flat, split)
    scaled = divide_modalities(flat[foreground], split, scales)
    hidden = options.hidden or flat.shape[1] // 2  # (in + out) // 2, the same for both directions
    log.info(
        "cfm: scales rgb %.6g, fpfh %.6g; training on %d foreground patches of %d",
        *scales,
        len(scaled),
        len(flat),
    )
    mappings = train_mappings(
        scaled[:, :split],
        scaled[:, split:],
        hidden=hidden,
        epochs=options.epochs,
        lr=options.lr,
        batch_size=options.batch_size,
        seed=options.seed,
    )
    return options.model_copy(update={"hidden": hidden, "scales": scales, "mappings": mappings})


class CrossModalMaps:
    """A fit (scales and mappings), ready to turn raw [rgb, fpfh] patch features into mapping residuals."""

    def __init__(self, scales: tuple[float, float], mappings: Mappings) -> None:
        self.scales = scales
        self.split = mappings.to_3d.in_dim
        self.dim = self.split + mappings.to_3d.out_dim
        self.to_3d = mappings.to_3d.module()
        self.to_rgb = mappings.to_rgb.module()

    @classmethod
    def of(cls, options: CFMOptions) -> CrossModalMaps | None:
        """The fit ``options`` hold; None before fitting."""
        if options.scales is None or options.mappings is None:
            return None
        return cls(options.scales, options.mappings)

    def residuals(self, features: np.ndarray) -> np.ndarray:
        """(..., D) raw [rgb, fpfh] features -> (..., D) float32 residuals of the scaled features,
        [unit(f_3d->2d(fpfh)) - unit(rgb), unit(f_2d->3d(rgb)) - unit(fpfh)], computed 784 patches at a
        time (one sample), so a patch's residual does not depend on the rows around it in its batch."""
        import torch

        if features.shape[-1] != self.dim:
            raise InputError(f"the cfm mappings take {self.dim}-d features, got {features.shape}")
        flat = divide_modalities(features.reshape(-1, self.dim), self.split, self.scales)
        out = np.empty_like(flat)
        unit = torch.nn.functional.normalize
        with torch.inference_mode():
            for i in range(0, len(flat), _CHUNK):
                block = torch.from_numpy(flat[i : i + _CHUNK])
                rgb, geo = block[:, : self.split], block[:, self.split :]
                res_rgb = unit(self.to_rgb(geo), dim=-1) - unit(rgb, dim=-1)
                res_3d = unit(self.to_3d(rgb), dim=-1) - unit(geo, dim=-1)
                out[i : i + _CHUNK] = torch.cat([res_rgb, res_3d], dim=1).numpy()
        return out.reshape(features.shape)


@register_extractor("cfm")
class CFMExtractor(WithRGBPart):
    """CFM's crossmodal mappings between ``rgb`` and ``fpfh`` patch features; see the module docstring."""

    options_model = CFMOptions

    def __init__(self, options: CFMOptions, rgb: RGBExtractor, device: str) -> None:
        self.rgb = rgb
        self.fpfh = FPFHExtractor(options.fpfh, device)
        self.weights = self.rgb.weights
        self.image_size = self.rgb.image_size
        self._adopt(options)

    def _adopt(self, options: CFMOptions) -> None:
        """Take ``options`` (and their fit, its dimensions checked against the two parts') as the spec's."""
        mappings = options.mappings
        if mappings is not None and (mappings.to_3d.in_dim, mappings.to_3d.out_dim) != (
            self.rgb.dim,
            self.fpfh.dim,
        ):
            raise InputError(
                f"the cfm mappings map {mappings.to_3d.in_dim}-d rgb to {mappings.to_3d.out_dim}-d 3D "
                f"features, but this extractor's are {self.rgb.dim}-d and {self.fpfh.dim}-d"
            )
        self.opts = options
        self.maps = CrossModalMaps.of(options)
        self.spec = FeatureSpec(
            extractor=self.name, options=self.opts.model_dump(mode="json"), dim=self.rgb.dim + self.fpfh.dim
        )

    def grid_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """The raw concatenation [rgb, fpfh] (the fit, once there, is applied by :meth:`extract`)."""
        import torch

        rgb = self.rgb.grid_maps(batch).to(torch.float64)
        return torch.cat([rgb, self.fpfh.grid_maps(batch).to(rgb.device)], dim=1)

    def adapt(self, features: np.ndarray) -> np.ndarray:
        """The mapping residuals once the mappings are set (fitted, or rebuilt from options that hold the
        fit); the raw concatenation before."""
        return features if self.maps is None else self.maps.residuals(features)

    def fit(self, features: np.ndarray) -> np.ndarray:
        """Fit scales and mappings on the raw training features (:func:`fit_options`), record them in
        ``spec`` and return the training patches' residuals. An extractor that holds a fit already returns
        ``features`` as given (they are residuals already)."""
        if self.maps is not None:
            return features
        if features.ndim != 3 or features.shape[-1] != self.dim:
            raise InputError(f"fit expects (N, patches, {self.dim}) features, got {features.shape}")
        self._adopt(fit_options(features, self.rgb.dim, self.opts))
        assert self.maps is not None
        return self.maps.residuals(features)
