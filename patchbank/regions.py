"""Defect regions: connected areas of an anomaly map above the pixel threshold, and the map as a heatmap."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)
# a perceptually ordered dark-to-bright ramp (black, purple, red, orange, pale yellow)
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


@dataclass(frozen=True)
class Region:
    """One connected region: bbox (x0, y0, x1, y1) in pixels, x1/y1 exclusive; area in pixels; peak value."""

    bbox: tuple[int, int, int, int]
    area_px: int
    peak_score: float

    def scaled(self, found_at: tuple[int, int], to: tuple[int, int]) -> Region:
        """The region found on a map of ``found_at`` (width, height) in the pixels of a ``to`` image: the box
        widened to whole pixels, the area scaled by the pixels' ratio."""
        if found_at == to:
            return self
        sx, sy = to[0] / found_at[0], to[1] / found_at[1]
        x0, y0, x1, y1 = self.bbox
        box = (
            math.floor(x0 * sx),
            math.floor(y0 * sy),
            min(to[0], math.ceil(x1 * sx)),
            min(to[1], math.ceil(y1 * sy)),
        )
        return Region(box, round(self.area_px * sx * sy), self.peak_score)


def find_regions(amap: np.ndarray, threshold: float) -> list[Region]:
    """8-connected regions of (H, W) ``amap`` > threshold, largest peak first.

    Area and peak are taken inside each region's bounding box (scipy's labelled maximum sorts every pixel:
    ~50 ms at 800 x 800 even for one region)."""
    labels, _ = ndimage.label(amap > threshold, structure=EIGHT_CONNECTED)
    regions = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[sl] == k
        regions.append(
            Region(
                (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop),
                int(inside.sum()),
                float(amap[sl][inside].max()),
            )
        )
    return sorted(regions, key=lambda r: -r.peak_score)


def _palette() -> np.ndarray:
    """(256, 3) uint8: the ramp interpolated linearly at 256 levels."""
    pos = np.linspace(0.0, len(_RAMP) - 1, 256)
    lo = np.minimum(pos.astype(int), len(_RAMP) - 2)
    frac = (pos - lo)[:, None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


_PALETTE = _palette()


def heatmap_png(amap: np.ndarray, threshold: float) -> bytes:
    """(H, W) map -> 8-bit palette PNG bytes; the pixel threshold sits at mid-scale, twice it saturates.

    A palette image at PNG's fastest compression: a few milliseconds for 800 x 800 (the map is smooth, so
    the file stays small)."""
    scale = 255.0 / (2.0 * threshold) if threshold > 0 else 0.0
    level = np.clip(amap * scale + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(level)  # "L"; the palette makes it "P"
    image.putpalette(_PALETTE.tobytes())
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
