"""The CPU/GPU work of one request, run in a worker thread: decode, features, search, post-processing."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import numpy as np

from patchbank.decode import check_pair, decode_rgb, decode_xyz
from patchbank.preprocess import prepare
from patchbank.regions import find_regions, heatmap_png
from patchbank.scorer import BankScorer, resize_map
from service.models import AnomalyMap, MapFormat, RegionOut, ScoreResponse, Timings


@dataclass(frozen=True)
class Upload:
    """One sample as received: raw bytes of both files and the xyz file's name (its suffix picks the codec)."""

    rgb: bytes
    xyz: bytes
    xyz_name: str | None = None
    sample_id: str | None = None


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def score_uploads(scorer: BankScorer, uploads: list[Upload], map_format: MapFormat) -> list[ScoreResponse]:
    """Score uploads in one batch (one backbone pass, one search); timings are per batch."""
    t0 = time.perf_counter()
    prepared = []
    for i, up in enumerate(uploads):
        suffix = f"[{i}]" if len(uploads) > 1 else ""
        image = decode_rgb(up.rgb, f"rgb{suffix}")
        xyz = decode_xyz(up.xyz, up.xyz_name, f"xyz{suffix}")
        check_pair(image, xyz)
        prepared.append(prepare(image, xyz, scorer.image_size))
    decode_ms = _ms(t0)

    t1 = time.perf_counter()
    feats = scorer.features(prepared)
    features_ms = _ms(t1)

    t2 = time.perf_counter()
    scores = scorer.score_features(feats)
    search_ms = _ms(t2)

    t3 = time.perf_counter()
    m = scorer.bank.manifest
    bodies = []
    for i, (up, p) in enumerate(zip(uploads, prepared, strict=True)):
        amap = resize_map(scores.maps[i], p.input_size)
        image_score = float(scores.image[i])
        bodies.append(
            dict(
                category=m.category,
                bank_version=m.version,
                sample_id=up.sample_id,
                image_score=image_score,
                threshold=m.thresholds.image,
                pixel_threshold=m.thresholds.pixel,
                is_anomalous=image_score > m.thresholds.image,
                anomaly_map=encode_map(amap, map_format, m.thresholds.pixel),
                regions=[
                    RegionOut(bbox=r.bbox, area_px=r.area_px, peak_score=r.peak_score)
                    for r in find_regions(amap, m.thresholds.pixel)
                ],
            )
        )
    post_ms = _ms(t3)
    timings = Timings(decode=decode_ms, features=features_ms, search=search_ms, post=post_ms, total=_ms(t0))
    return [ScoreResponse(**b, timings_ms=timings) for b in bodies]


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
