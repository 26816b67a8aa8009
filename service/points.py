"""A 3D-only bank's side of ``POST /score``, run in a worker thread: one unorganized point cloud in (PCD or
PLY, no RGB), the library's point scorer, then the JSON answer with one score per point of the file."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import numpy as np

from patchbank.bank import Manifest
from patchbank.points.io import read_points
from patchbank.points.scorer import PointBankScorer, PointPrediction
from patchbank_service.models import PointScores, ScoreResponse, Timings


@dataclass(frozen=True)
class CloudUpload:
    """An uploaded cloud as the request carried it (decoded in the worker thread, not on the event loop)."""

    xyz: bytes
    xyz_name: str | None
    sample_id: str | None


def score_clouds(
    scorer: PointBankScorer, uploads: list[CloudUpload], per_point: bool, max_points: int
) -> list[ScoreResponse]:
    """Decode and score clouds in one pass; ``per_point`` False leaves the per-point scores out (map=none)."""
    start = time.perf_counter()
    clouds = [read_points(u.xyz, u.xyz_name, "xyz", max_points) for u in uploads]
    decode_ms = (time.perf_counter() - start) * 1000.0 / len(uploads)
    preds = scorer.predict(clouds, decode_ms)
    return [
        point_response(scorer.bank.manifest, u.sample_id, cloud, p, per_point)
        for u, cloud, p in zip(uploads, clouds, preds, strict=True)
    ]


def point_response(
    m: Manifest,
    sample_id: str | None,
    cloud: np.ndarray,
    p: PointPrediction,
    per_point: bool,
) -> ScoreResponse:
    """A point prediction as the API answers it; ``cloud``: (N, 3) the points that were scored, in file order."""
    m_thr = m.thresholds.pixel
    timings = p.timings
    points = None
    if per_point:
        scores = np.asarray(p.point_scores, dtype=np.float32)
        peak = int(np.argmax(scores))
        points = PointScores(
            count=int(scores.size),
            data=base64.b64encode(scores.astype("<f2").tobytes()).decode(),
            peak_index=peak,
            peak_xyz=tuple(float(v) for v in cloud[peak]),  # type: ignore[arg-type]
            above_threshold=int((scores > m_thr).sum()),
        )
    return ScoreResponse(
        category=m.category,
        bank_version=m.version,
        sample_id=sample_id,
        image_score=float(p.object_score),
        threshold=m.thresholds.image,
        pixel_threshold=m_thr,
        is_anomalous=bool(p.is_anomalous),
        anomaly_map=None,
        regions=[],
        peak=None,
        points=points,
        timings_ms=Timings(**timings.model_dump(), total=sum(timings.model_dump().values())),
    )
