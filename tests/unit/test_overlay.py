"""The overlay PNG: a demo part's image under its anomaly map, in the heatmap's colour scale, with the regions
outlined, the peak marked and a colour bar whose ticks sit where the palette says."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchbank.data import list_samples
from patchbank.overlay import MARK, TICK, overlay_png, palette_rgb
from patchbank.regions import Peak, Region, find_peak, find_regions, heatmap_png
from tests.conftest import CATEGORY

THRESHOLD = 1.0


@pytest.fixture(scope="module")
def part(demo_root: Path) -> Image.Image:
    """A hole sample's RGB image (160 x 120)."""
    (ref,) = list_samples(demo_root, CATEGORY, "test", kinds=["hole"])
    with Image.open(ref.rgb) as im:
        return im.convert("RGB")


def blob_map(size: tuple[int, int], centre: tuple[float, float], peak: float, sigma: float) -> np.ndarray:
    """(H, W) float32: a Gaussian bump of height ``peak`` at ``centre`` (x, y), on zero."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    bump = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))
    return (peak * bump).astype(np.float32)


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def nearest_level(rgb: np.ndarray) -> int:
    """The palette level whose colour is closest to ``rgb``."""
    palette = np.asarray(palette_rgb(), dtype=np.int64)
    return int(np.argmin(((palette - rgb.astype(np.int64)) ** 2).sum(axis=1)))


def test_palette_is_the_heatmaps() -> None:
    png = Image.open(io.BytesIO(heatmap_png(np.zeros((4, 4), np.float32), 1.0)))
    expected = png.getpalette()
    assert expected is not None
    rgb = palette_rgb()
    assert len(rgb) == 256 and all(len(c) == 3 for c in rgb)
    assert [v for c in rgb for v in c] == expected[: 256 * 3]


def test_size_is_the_maps_plus_the_bar(part: Image.Image) -> None:
    amap = blob_map((80, 60), (30, 20), 3.0, 4.0)  # half the image's resolution, as max_map_side makes it
    with_bar = decode(overlay_png(part, amap, THRESHOLD, []))
    assert with_bar.shape[0] == 60 and with_bar.shape[1] > 80
    alone = decode(overlay_png(part, amap, THRESHOLD, [], colour_bar=False))
    assert alone.shape == (60, 80, 3)
    assert np.array_equal(with_bar[:, :80], alone)  # the bar is beside the map, not over it


def test_colour_scale_matches_the_heatmap(part: Image.Image) -> None:
    """With alpha 1 the map's own colours show: 2x threshold saturates, the threshold is mid-scale; below half
    the threshold the part shows through unchanged."""
    amap = np.zeros((120, 160), np.float32)
    amap[10:30, 10:30] = 2.5 * THRESHOLD
    amap[60:80, 60:80] = THRESHOLD
    amap[90:110, 120:140] = 0.2 * THRESHOLD
    got = decode(overlay_png(part, amap, THRESHOLD, [], alpha=1.0, colour_bar=False))
    palette = np.asarray(palette_rgb())
    assert tuple(got[20, 20]) == tuple(palette[255])
    assert nearest_level(got[70, 70]) in (127, 128)
    assert np.array_equal(got[100, 130], np.asarray(part)[100, 130])


def test_regions_are_outlined_at_their_input_pixels(part: Image.Image) -> None:
    """Regions are given in the image's pixels (160 x 120); the map is half that: the outline is at half the
    box, and its peak score is written next to it."""
    amap = blob_map((80, 60), (40, 30), 3.0, 5.0)
    (found,) = find_regions(amap, THRESHOLD)
    region = found.scaled((80, 60), (160, 120))
    got = decode(overlay_png(part, amap, THRESHOLD, [region], colour_bar=False))
    x0, y0, x1, y1 = found.bbox
    mark = np.asarray(MARK)
    assert (got[y0:y1, x0] == mark).all(axis=1).all()  # left edge
    assert (got[y0:y1, x1 - 1] == mark).all(axis=1).all()  # right edge
    assert (got[y1 - 1, x0:x1] == mark).all(axis=1).all()  # bottom edge
    assert not (got[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3] == mark).all(axis=2).any()  # the inside is the map's
    label = got[:y0, x0:x1]  # the peak score above the box
    assert (label == mark).all(axis=2).any()


def test_peak_is_crossed_when_there_is_no_region(part: Image.Image) -> None:
    amap = blob_map((160, 120), (110, 40), 0.9 * THRESHOLD, 6.0)  # NG by its image score, no region
    assert find_regions(amap, THRESHOLD) == []
    peak = find_peak(amap)
    assert (peak.x, peak.y) == (110, 40)
    got = decode(overlay_png(part, amap, THRESHOLD, [], colour_bar=False))
    mark = np.asarray(MARK)
    assert (got[40, 106:115] == mark).all() and (got[36:45, 110] == mark).all()
    far = (got == mark).all(axis=2)
    far[30:51, 100:121] = False
    assert not far.any()  # nothing else marked

    # with a region, the region is what is pointed at: no cross
    region = Region((100, 30, 121, 51), 300, 0.9)
    boxed = decode(overlay_png(part, amap, THRESHOLD, [region], colour_bar=False))
    assert not (boxed[40, 106:115] == mark).all(axis=1).all()


def test_threshold_tick_sits_where_the_bar_crosses_mid_scale(part: Image.Image) -> None:
    amap = blob_map((160, 120), (80, 60), 2.0, 10.0)
    got = decode(overlay_png(part, amap, THRESHOLD, []))
    bar = got[:, 160:]
    palette = {tuple(c) for c in palette_rgb()}
    # the bar's column: the one with the most palette colours
    column = max(range(bar.shape[1]), key=lambda c: sum(tuple(p) in palette for p in bar[:, c]))
    strip = bar[:, column]
    rows = [r for r in range(len(strip)) if tuple(strip[r]) in palette]
    top, bottom = rows[0], rows[-1]
    assert nearest_level(strip[top]) == 255 and nearest_level(strip[bottom]) == 0
    ticks = [r for r in range(top, bottom + 1) if tuple(strip[r]) == TICK]
    assert len(ticks) == 1
    (t,) = ticks
    assert nearest_level(strip[t - 1]) >= 128 and nearest_level(strip[t + 1]) <= 127
    levels = [nearest_level(strip[r]) for r in range(top, bottom + 1) if r != t]
    assert levels == sorted(levels, reverse=True)  # 2x threshold at the top, 0 at the bottom


@pytest.mark.parametrize("size", [(400, 3), (400, 1), (3, 400), (1, 1)])
def test_thin_maps_still_draw(part: Image.Image, size: tuple[int, int]) -> None:
    amap = blob_map(size, (size[0] / 2, size[1] / 2), 2.0, 2.0)
    regions = [r.scaled(size, part.size) for r in find_regions(amap, THRESHOLD)]
    got = decode(overlay_png(part, amap, THRESHOLD, regions))
    assert got.shape[0] == size[1] and got.shape[1] > size[0]


def test_peak_in_input_pixels() -> None:
    amap = np.zeros((60, 80), np.float32)
    amap[59, 79] = 5.0
    amap[0, 0] = 4.0
    assert find_peak(amap) == Peak(79, 59, 5.0)
    assert find_peak(amap).scaled((80, 60), (160, 120)) == Peak(159, 119, 5.0)
    assert Peak(0, 0, 4.0).scaled((80, 60), (160, 120)) == Peak(1, 1, 4.0)  # the pixel's centre
    assert Peak(10, 20, 1.0).scaled((80, 60), (80, 60)) == Peak(10, 20, 1.0)
