"""The service's side of one scoring pass, run in a worker thread: the library's :func:`predict`, then the
JSON answer (map encoding, regions and peak as API models)."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
from PIL import Image

from patchbank.overlay import overlay_png
from patchbank.predict import Prediction, Sample, predict
from patchbank.preprocess import DEFAULT_MAX_MAP_SIDE
from patchbank.regions import Region, heatmap_png
from patchbank.scorer import BankScorer
from patchbank_service.models import AnomalyMap, MapFormat, PeakOut, RegionOut, ScoreResponse, Timings
from patchbank_service.recall import RecallKeeper


def score_samples(
    scorer: BankScorer,
    samples: list[Sample],
    map_format: MapFormat,
    max_map_side: int = DEFAULT_MAX_MAP_SIDE,
    recall: RecallKeeper | None = None,
) -> list[ScoreResponse]:
    """Score samples in one pass (one backbone pass, one search); every answer has its own timings and its
    map at most ``max_map_side`` pixels on its longer side. An overlay keeps each image at its map's size.
    The parts decided OK recall the bank vectors they matched (``recall``)."""
    m = scorer.bank.manifest
    preds = predict(scorer, samples, max_map_side=max_map_side, keep_image=map_format == "overlay")
    if recall is not None:
        for p in preds:
            if not p.is_anomalous:
                recall.record(scorer, p.nearest)
    return [response(m.category, m.version, p, map_format) for p in preds]


def response(category: str, version: str, p: Prediction, map_format: MapFormat) -> ScoreResponse:
    """A prediction as the API answers it (``timings_ms.total`` is set when the request completes)."""
    assert p.anomaly_map is not None  # predict() makes full maps by default
    return ScoreResponse(
        category=category,
        bank_version=version,
        sample_id=p.sample_id,
        image_score=p.image_score,
        threshold=p.image_threshold,
        pixel_threshold=p.pixel_threshold,
        is_anomalous=p.is_anomalous,
        anomaly_map=encode_map(
            p.anomaly_map,
            map_format,
            p.pixel_threshold,
            image=p.image,
            regions=p.regions,
            input_size=p.input_size,
        ),
        regions=[RegionOut(bbox=r.bbox, area_px=r.area_px, peak_score=r.peak_score) for r in p.regions],
        peak=PeakOut(x=p.peak.x, y=p.peak.y, score=p.peak.score),
        timings_ms=Timings(**p.timings.model_dump(), total=sum(p.timings.model_dump().values())),
    )


def encode_map(
    amap: np.ndarray,
    fmt: MapFormat,
    pixel_threshold: float,
    *,
    image: Image.Image | None = None,
    regions: Sequence[Region] = (),
    input_size: tuple[int, int] | None = None,
) -> AnomalyMap | None:
    """The (H, W) map as the answer carries it. ``overlay`` needs ``image`` (the part's RGB, any size with
    the map's aspect) and draws ``regions``, given in the pixels of ``input_size`` (default: the image's)."""
    h, w = amap.shape
    if fmt == "none":
        return None
    if fmt in ("png", "overlay"):
        if fmt == "png":
            png = heatmap_png(amap, pixel_threshold)
        else:
            if image is None:
                raise ValueError("an overlay needs the sample's image: predict(..., keep_image=True)")
            size = input_size or image.size
            drawn = [r.scaled(size, image.size) for r in regions]
            png = overlay_png(image, amap, pixel_threshold, drawn)
        return AnomalyMap(format=fmt, width=w, height=h, data=base64.b64encode(png).decode())
    raw = np.ascontiguousarray(amap, dtype="<f2").tobytes()
    return AnomalyMap(
        format="array", width=w, height=h, dtype="float16", shape=(h, w), data=base64.b64encode(raw).decode()
    )
