"""Decoding one uploaded RGB image in memory, and checking that it belongs with its point cloud (clouds are
decoded by :mod:`patchbank.clouds`).

Nothing is written to disk. Every problem is an :class:`InputError` whose message names the field and the
problem.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from patchbank.cloud_formats import DEFAULT_MAX_PIXELS, check_min_side, check_pixels
from patchbank.errors import InputError

RGB_FORMATS = ("PNG", "JPEG", "TIFF")
ASPECT_TOLERANCE = 0.01
# Pillow's single-channel modes: a greyscale image is refused, not silently copied into three channels.
GREYSCALE_MODES = ("1", "L", "LA", "La", "I", "F")


def decode_rgb(data: bytes, field: str = "rgb", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """PNG/JPEG/TIFF bytes -> an RGB PIL image (fully decoded, so corrupt data fails here); its size is
    checked against ``max_pixels`` and :data:`MIN_SIDE` from the header, before decoding. Colour layouts
    (palette, alpha, CMYK) are converted to RGB; a greyscale image is refused."""
    if not data:
        raise InputError(f"{field} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format not in RGB_FORMATS:
                raise InputError(f"{field} must be a PNG, JPEG or TIFF image, got {im.format}")
            check_pixels(*im.size, max_pixels, field)
            check_min_side(*im.size, field)
            if im.mode in GREYSCALE_MODES or im.mode.startswith("I;"):
                raise InputError(
                    f"{field} is a single-channel (greyscale, mode {im.mode}) image; the banks score colour "
                    "images: send the camera's RGB image"
                )
            im.load()
    except UnidentifiedImageError as exc:
        raise InputError(f"{field} is not a PNG, JPEG or TIFF image (its content is not one)") from exc
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InputError(f"{field} is not a readable PNG, JPEG or TIFF image: {exc}") from exc
    return im.convert("RGB")


def check_pair(image: Image.Image, xyz: np.ndarray, fields: tuple[str, str] = ("rgb", "xyz")) -> None:
    """RGB and xyz may differ in resolution, not in aspect ratio (more than 1%)."""
    (w, h), (xh, xw) = image.size, xyz.shape[:2]
    a, b = w / h, xw / xh
    if abs(a - b) > ASPECT_TOLERANCE * a:
        raise InputError(
            f"{fields[0]} ({w}x{h}) and {fields[1]} ({xw}x{xh}) have different aspect ratios "
            f"({a:.3f} vs {b:.3f})"
        )
