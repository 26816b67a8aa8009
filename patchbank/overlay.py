"""The anomaly map drawn over the part's image, for a person to read: the service's ``map=overlay``, the
console and the evaluation report all draw it here.

One picture says where and how much: the part at the map's size, the map blended in with the heatmap's colour
scale (:func:`patchbank.regions.heatmap_png`: 0 at the palette's start, the pixel threshold at mid-scale,
twice it and above saturated), each region outlined with its peak score, a cross on the map's peak when no
region is above the threshold, and a colour bar with ticks in score units. Pillow only: it runs on the
service's request path.

Pixels below half the pixel threshold are left transparent, so the part stays visible where nothing is
wrong; the map fades in from there to ``alpha`` at the threshold and above.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from patchbank.regions import PALETTE, Region, find_peak, heatmap_levels

Rgb = tuple[int, int, int]
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont | ImageFont.TransposedFont

MARK: Rgb = (0, 255, 255)
"""Region outlines, their peak scores and the peak's cross: cyan, a colour the palette never takes."""
SHADOW: Rgb = (0, 0, 0)
"""Drawn under the cross so it shows on bright and dark parts alike."""
TICK: Rgb = (255, 255, 255)
"""The colour bar's ticks, labels and its line at the pixel threshold."""
PANEL: Rgb = (24, 24, 24)
"""Behind the colour bar and behind the regions' labels."""
COMPRESS_LEVEL = 1  # zlib's fastest: an overlay is a photograph, higher levels gain little


def palette_rgb() -> list[Rgb]:
    """The 256 colours of the heatmap's scale, level 0 (a score of 0) to 255 (twice the pixel threshold and
    above); a score s has level ``round(s / (2 * pixel_threshold) * 255)``, clipped. The console draws its
    legend with these."""
    return [(int(r), int(g), int(b)) for r, g, b in PALETTE]


@functools.cache
def _font(size: int) -> Font | None:
    """Pillow's built-in font at ``size`` pixels (its bitmap font without FreeType); None without either."""
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, ValueError):
        try:
            return ImageFont.load_default()
        except OSError:
            return None


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Font | None) -> tuple[int, int]:
    if font is None:
        return 0, 0
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return int(x1 - x0), int(y1 - y0)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Font | None, fill: Rgb) -> None:
    """``text`` with its top-left corner at ``xy``, on a dark box."""
    if font is None:
        return
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = xy
    draw.rectangle((x - 1, y - 1, x + right - left, y + bottom - top), fill=PANEL)
    draw.text((x - left, y - top), text, font=font, fill=fill)


def _blend(image: Image.Image, amap: np.ndarray, pixel_threshold: float, alpha: float) -> Image.Image:
    """The part at the map's size with the map's colours blended in: transparent below half the threshold,
    ``alpha`` from the threshold up. Only the pixels that change are computed: a good part costs the resize."""
    h, w = amap.shape
    part = image.convert("RGB")
    if part.size != (w, h):
        part = part.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = np.array(part)  # (H, W, 3) uint8, a copy
    if pixel_threshold > 0:
        ramp = amap * np.float32(2.0 / pixel_threshold) - np.float32(1.0)
        shown = ramp > 0
        weight = np.minimum(ramp[shown], 1.0) * np.float32(alpha)
    else:
        shown = np.ones(amap.shape, dtype=bool)
        weight = np.full(int(shown.sum()), alpha, dtype=np.float32)
    colour = PALETTE[heatmap_levels(amap[shown], pixel_threshold)].astype(np.float32)
    base = out[shown].astype(np.float32)
    out[shown] = np.clip(base + (colour - base) * weight[:, None] + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _outline(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    width: int,
    text: str,
    font: Font | None,
    size: tuple[int, int],
) -> None:
    """A region's box (x1, y1 exclusive) and its peak score beside it: above, else below, else inside."""
    x0, y0 = max(0, box[0]), max(0, box[1])
    x1, y1 = min(size[0], box[2]), min(size[1], box[3])
    if x1 <= x0 or y1 <= y0:
        return
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=MARK, width=width)
    tw, th = _text_size(draw, text, font)
    if font is None:
        return
    x = max(1, min(x0, size[0] - tw - 1))
    if y0 - th - 2 >= 1:
        y = y0 - th - 2
    elif y1 + th + 2 <= size[1]:
        y = y1 + 2
    else:
        x, y = min(x0 + width + 1, size[0] - tw - 1), y0 + width + 1
    _label(draw, (x, y), text, font, MARK)


def _cross(draw: ImageDraw.ImageDraw, x: int, y: int, arm: int, width: int) -> None:
    """A cross centred on pixel (x, y), ``arm`` pixels each way, on a dark outline."""
    for colour, extra in ((SHADOW, 1), (MARK, 0)):
        draw.line((x - arm - extra, y, x + arm + extra, y), fill=colour, width=width + 2 * extra)
        draw.line((x, y - arm - extra, x, y + arm + extra), fill=colour, width=width + 2 * extra)


def _colour_bar(height: int, pixel_threshold: float, font: Font | None) -> Image.Image:
    """A panel ``height`` pixels tall: the palette as a vertical bar (twice the threshold at the top, 0 at the
    bottom), a tick and a label at 0, at the pixel threshold (a line across the bar) and at twice it."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = ("0", f"{pixel_threshold:.3g}", f"{2 * pixel_threshold:.3g}")
    text_w = max(_text_size(probe, t, font)[0] for t in labels)
    text_h = max(_text_size(probe, t, font)[1] for t in labels)
    margin, bar_w, tick = 3, max(8, min(24, height // 16)), 3
    width = margin + bar_w + tick + (2 + text_w if font is not None else 0) + margin
    panel = Image.new("RGB", (width, height), PANEL)
    pad = max(margin, text_h // 2 + 1)
    if height - 1 - 2 * pad < 2:  # a thin strip of a map: the bar takes the whole height
        pad = 0
    top, bottom = pad, max(pad + 1, height - 1 - pad)
    if bottom >= height:
        return panel
    rows = np.arange(top, bottom + 1)
    levels = np.round(255.0 * (bottom - rows) / (bottom - top)).astype(np.int64)
    strip = np.asarray(panel).copy()
    strip[top : bottom + 1, margin : margin + bar_w] = PALETTE[levels][:, None, :]
    panel = Image.fromarray(strip)
    draw = ImageDraw.Draw(panel)
    draw.fontmode = "1"  # crisp text in exactly its colour
    mid = round(bottom - 0.5 * (bottom - top))  # level 127.5: the pixel threshold
    draw.line((margin, mid, margin + bar_w - 1, mid), fill=TICK)
    right = margin + bar_w
    for y, text in zip((bottom, mid, top), labels, strict=True):
        draw.line((right, y, right + tick - 1, y), fill=TICK)
        if font is not None:
            th = _text_size(draw, text, font)[1]
            ty = min(max(0, y - th // 2), height - th - 1)
            left, upper, _, _ = draw.textbbox((0, 0), text, font=font)
            draw.text((right + tick + 2 - left, ty - upper), text, font=font, fill=TICK)
    return panel


def overlay_png(
    image: Image.Image,
    amap: np.ndarray,
    pixel_threshold: float,
    regions: Sequence[Region],
    *,
    alpha: float = 0.5,
    colour_bar: bool = True,
) -> bytes:
    """The anomaly map over the part, as PNG bytes.

    ``image``: the part's RGB image, at any size with the map's aspect (it is resized to the map's);
    ``amap``: (H, W) float anomaly map; ``regions``: in ``image``'s pixels (the input's, as the service
    answers them), scaled here to the map's. The PNG is H pixels tall and W wide, plus the colour bar's
    panel at the right with ``colour_bar``. Colours as :func:`palette_rgb`; the map covers the part with
    weight ``alpha`` from the pixel threshold up, fading out to nothing at half the threshold. Each region's
    box is outlined in :data:`MARK` with its peak score beside it; with no region, a cross marks the map's
    peak."""
    h, w = amap.shape
    picture = _blend(image, amap, pixel_threshold, alpha)
    draw = ImageDraw.Draw(picture)
    draw.fontmode = "1"  # crisp text in exactly its colour
    width = max(1, round(min(w, h) / 256))
    font = _font(max(10, round(h / 40)))
    if regions:
        for r in regions:
            box = r.scaled(image.size, (w, h)).bbox
            _outline(draw, box, width, f"{r.peak_score:.3g}", font, (w, h))
    else:
        peak = find_peak(amap)
        _cross(draw, peak.x, peak.y, max(4, round(min(w, h) / 30)), width)
    if colour_bar:
        bar = _colour_bar(h, pixel_threshold, font)
        canvas = Image.new("RGB", (w + bar.width, h), PANEL)
        canvas.paste(picture, (0, 0))
        canvas.paste(bar, (w, 0))
        picture = canvas
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=COMPRESS_LEVEL)
    return buf.getvalue()
