"""Defect regions against scipy's labelled statistics, and the heatmap PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from patchbank.regions import EIGHT_CONNECTED, find_regions, heatmap_png


def test_regions_match_scipy_labelled_statistics() -> None:
    rng = np.random.default_rng(0)
    amap = ndimage.gaussian_filter(rng.random((120, 160)), 3)
    threshold = float(np.quantile(amap, 0.9))
    regions = find_regions(amap, threshold)
    labels, n = ndimage.label(amap > threshold, structure=EIGHT_CONNECTED)
    assert n > 2 and len(regions) == n
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(np.ones_like(amap), labels, index)
    peaks = ndimage.maximum(amap, labels, index)
    assert sorted((r.area_px, r.peak_score) for r in regions) == sorted(
        zip(areas.astype(int), peaks, strict=True)
    )
    assert [r.peak_score for r in regions] == sorted((r.peak_score for r in regions), reverse=True)
    for r in regions:
        x0, y0, x1, y1 = r.bbox
        assert (amap[y0:y1, x0:x1] > threshold).any() and amap[y0:y1, x0:x1].max() >= r.peak_score


def test_two_blobs_and_none() -> None:
    amap = np.zeros((50, 60), np.float32)
    amap[5:10, 5:8] = 2.0
    amap[30:32, 40:50] = 3.0
    amap[31, 45] = 4.0
    big, small = find_regions(amap, 1.0)
    assert big.bbox == (40, 30, 50, 32) and big.area_px == 20 and big.peak_score == 4.0
    assert small.bbox == (5, 5, 8, 10) and small.area_px == 15 and small.peak_score == 2.0
    assert find_regions(amap, 5.0) == []


def test_heatmap_is_a_palette_png_of_the_map_size() -> None:
    amap = np.linspace(0, 2, 800 * 600, dtype=np.float32).reshape(600, 800)
    image = Image.open(io.BytesIO(heatmap_png(amap, threshold=0.5)))
    assert image.format == "PNG" and image.size == (800, 600) and image.mode == "P"
    rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[0, 0]) == (0, 0, 4) and tuple(rgb[-1, -1]) == (252, 255, 164)  # dark to saturated
