"""Decoding one uploaded sample in memory: an RGB image and an organized point cloud.

Nothing is written to disk and nothing is unpickled (``.npy`` loads with ``allow_pickle=False``). Every
problem is an :class:`InputError` whose message names the field and the problem.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from patchbank.data import check_xyz
from patchbank.errors import DataError, InputError
from patchbank.preprocess import valid_points

RGB_FORMATS = ("PNG", "JPEG", "TIFF")
NPY_MAGIC = b"\x93NUMPY"
ASPECT_TOLERANCE = 0.01


def decode_rgb(data: bytes, field: str = "rgb") -> Image.Image:
    """PNG/JPEG/TIFF bytes -> an RGB PIL image (fully decoded, so corrupt data fails here)."""
    if not data:
        raise InputError(f"{field} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format not in RGB_FORMATS:
                raise InputError(f"{field} must be a PNG, JPEG or TIFF image, got {im.format}")
            im.load()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InputError(f"{field} is not a readable PNG, JPEG or TIFF image: {exc}") from exc
    return im.convert("RGB")


def decode_xyz(data: bytes, filename: str | None = None, field: str = "xyz") -> np.ndarray:
    """TIFF or .npy bytes -> (H, W, 3) float32 metres; non-finite points become missing (0, 0, 0)."""
    if not data:
        raise InputError(f"{field} is empty")
    is_npy = data.startswith(NPY_MAGIC) or (filename or "").lower().endswith(".npy")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False) if is_npy else tifffile.imread(io.BytesIO(data))
    except Exception as exc:  # numpy and tifffile raise many types for corrupt data
        kind = ".npy array" if is_npy else "TIFF"
        raise InputError(f"{field} is not a readable {kind}: {exc}") from exc
    try:
        xyz = check_xyz(np.asarray(arr), field)
    except DataError as exc:
        raise InputError(str(exc)) from exc
    if not valid_points(xyz).any():
        raise InputError(f"{field} has no valid points: every point is missing (0, 0, 0) or not finite")
    return xyz


def check_pair(image: Image.Image, xyz: np.ndarray, fields: tuple[str, str] = ("rgb", "xyz")) -> None:
    """RGB and xyz may differ in resolution, not in aspect ratio (more than 1%)."""
    (w, h), (xh, xw) = image.size, xyz.shape[:2]
    a, b = w / h, xw / xh
    if abs(a - b) > ASPECT_TOLERANCE * a:
        raise InputError(
            f"{fields[0]} ({w}x{h}) and {fields[1]} ({xw}x{xh}) have different aspect ratios "
            f"({a:.3f} vs {b:.3f})"
        )
