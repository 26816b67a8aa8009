"""The one preprocessing shared by training, evaluation and serving (BTF's transforms).

RGB: resized to 224 x 224 with PIL bicubic, scaled to [0, 1]; each RGB extractor then normalises with its
backbone's own mean/std (recorded in its feature spec: ImageNet's for the published configuration).
xyz: nearest-resized to 224 x 224 with torch's ``nearest`` rule (as BTF), invalid = any coordinate zero.
Masks: PIL nearest to 224 x 224 (as BTF), for metrics only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_SIZE = 224
DEFAULT_MAX_MAP_SIDE = 1024  # pixels on the longer side of a map served at the input's resolution
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class Prepared:
    """One sample ready for feature extraction.

    rgb: (3, S, S) float32 in [0, 1]; xyz: (S, S, 3) float32, metres; input_size: the RGB's (width, height).
    """

    rgb: np.ndarray
    xyz: np.ndarray
    input_size: tuple[int, int]


def rgb_array(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """(3, size, size) float32 in [0, 1]: bicubic resize, /255."""
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def normalise(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(..., 3, H, W) float32 in [0, 1] -> (x - mean) / std per channel, float32."""
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    return (rgb - m) / s


def resize_xyz(xyz: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size, 3) float32 by torch's nearest rule (src = floor(dst * in / out)), as BTF resizes clouds."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32)).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="nearest")
    return out[0].permute(1, 2, 0).contiguous().numpy()


def valid_points(xyz: np.ndarray) -> np.ndarray:
    """(H, W) bool: a point is valid when all three coordinates are non-zero (as BTF)."""
    return (xyz[..., 0] != 0) & (xyz[..., 1] != 0) & (xyz[..., 2] != 0)  # 8x faster than all(axis=-1)


def resize_mask(mask: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) bool: PIL nearest resize of a bool (H, W) mask, as BTF's ground-truth transform."""
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(im.resize((size, size), Image.Resampling.NEAREST)) > 127


def prepare(image: Image.Image, xyz: np.ndarray, size: int = IMAGE_SIZE) -> Prepared:
    """Both modalities of one sample at the model's resolution."""
    return Prepared(rgb=rgb_array(image, size), xyz=resize_xyz(xyz, size), input_size=image.size)
