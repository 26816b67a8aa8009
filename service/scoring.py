"""The service's side of one scoring pass, run in a worker thread: the library's :func:`predict`, then the
JSON answer (map encoding, regions as API models)."""

from __future__ import annotations

import base64

import numpy as np

from patchbank.predict import Prediction, Sample, predict
from patchbank.preprocess import DEFAULT_MAX_MAP_SIDE
from patchbank.regions import heatmap_png
from patchbank.scorer import BankScorer
from patchbank_service.models import AnomalyMap, MapFormat, RegionOut, ScoreResponse, Timings


def score_samples(
    scorer: BankScorer,
    samples: list[Sample],
    map_format: MapFormat,
    max_map_side: int = DEFAULT_MAX_MAP_SIDE,
) -> list[ScoreResponse]:
    """Score samples in one pass (one backbone pass, one search); every answer has its own timings and its
    map at most ``max_map_side`` pixels on its longer side."""
    m = scorer.bank.manifest
    preds = predict(scorer, samples, max_map_side=max_map_side)
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
        anomaly_map=encode_map(p.anomaly_map, map_format, p.pixel_threshold),
        regions=[RegionOut(bbox=r.bbox, area_px=r.area_px, peak_score=r.peak_score) for r in p.regions],
        timings_ms=Timings(**p.timings.model_dump(), total=sum(p.timings.model_dump().values())),
    )


def encode_map(amap: np.ndarray, fmt: MapFormat, pixel_threshold: float) -> AnomalyMap | None:
    h, w = amap.shape
    if fmt == "none":
        return None
    if fmt == "png":
        return AnomalyMap(
            format="png",
            width=w,
            height=h,
            data=base64.b64encode(heatmap_png(amap, pixel_threshold)).decode(),
        )
    raw = np.ascontiguousarray(amap, dtype="<f2").tobytes()
    return AnomalyMap(
        format="array", width=w, height=h, dtype="float16", shape=(h, w), data=base64.b64encode(raw).decode()
    )
