"""Typed API payloads; the OpenAPI docs at /docs are generated from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from patchbank.bank import EvaluationRecord
from patchbank.predict import StageTimings

MapFormat = Literal["none", "png", "overlay", "array"]
MAX_SAMPLE_ID = 256  # characters of a sample_id: it is echoed, logged and stored with every decision
MAX_INTRINSICS = 1000  # characters of a depth camera's intrinsics JSON in a form field


HEATMAP_SCALE = (
    "png/overlay heatmap: 0 at the colour map's start, the bank's pixel_threshold at mid-scale, twice it and "
    "above saturated"
)


class AnomalyMap(BaseModel):
    """The anomaly map at the input image's resolution (scaled down, aspect kept, above the service's
    max_map_side)."""

    format: Literal["png", "overlay", "array"] = Field(
        description="png: the heatmap alone, an 8-bit palette image of the map's size; overlay: the heatmap "
        "over the part's image, transparent below half the pixel threshold, each region outlined with its peak "
        "score (or a cross on the peak when there is none), and a colour bar with ticks at 0, the pixel "
        "threshold and twice it to the right of the map; array: raw float16 values. " + HEATMAP_SCALE
    )
    width: int = Field(description="pixels of the map (an overlay's PNG is wider by its colour bar)")
    height: int = Field(description="pixels of the map")
    data: str = Field(
        description="base64 of the PNG file, or of the little-endian float16 (H, W) C-order bytes"
    )
    dtype: Literal["float16"] | None = Field(None, description="element type of an array map")
    shape: tuple[int, int] | None = Field(None, description="(height, width) of an array map")


class RegionOut(BaseModel):
    bbox: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1 in input pixels (x1, y1 exclusive)")
    area_px: int = Field(description="pixels above the pixel threshold")
    peak_score: float = Field(description="largest anomaly-map value in the region")


class PeakOut(BaseModel):
    """Where the anomaly map is highest: a location to look at even when no region is above the pixel
    threshold (an NG part with ``regions: []``)."""

    x: int = Field(description="column of the map's maximum, in input pixels (0 = left)")
    y: int = Field(description="row of the map's maximum, in input pixels (0 = top)")
    score: float = Field(description="the map's largest value: above pixel_threshold when there is a region")


class PointScores(BaseModel):
    """A 3D-only bank's answer per point: one anomaly score per point of the uploaded cloud, in the file's
    point order (a cloud with a NaN or infinite point is refused: send the measured points only)."""

    count: int = Field(description="points in the uploaded cloud (the file's point count)")
    dtype: Literal["float16"] = Field("float16", description="element type of data")
    data: str = Field(description="base64 of the little-endian float16 (count,) scores, in the file's order")
    peak_index: int = Field(description="the highest-scoring point's index in the file")
    peak_xyz: tuple[float, float, float] = Field(description="that point's coordinates, in the file's unit")
    above_threshold: int = Field(description="points scoring above pixel_threshold (the point threshold)")


class Timings(StageTimings):
    total: float = Field(description="milliseconds from the request's arrival to the answer")


class ScoreResponse(BaseModel):
    category: str
    bank_version: str
    sample_id: str | None = None
    image_score: float = Field(
        description="the part's score: the image score of an RGB + 3D bank (its rule: PatchCore's reweighted "
        "maximum, or the map's maximum), the object score of a 3D-only bank (its highest point score)"
    )
    threshold: float = Field(description="image (object) threshold of the bank; above it the part is NG")
    pixel_threshold: float = Field(
        description="anomaly-map value above which a pixel belongs to a region (a 3D-only bank: a point)"
    )
    is_anomalous: bool
    anomaly_map: AnomalyMap | None = None
    regions: list[RegionOut] = Field(default_factory=list, description="none for a 3D-only bank")
    peak: PeakOut | None = Field(
        description="the anomaly map's maximum, in input pixels, and its value: every answer of an RGB + 3D bank "
        "names where to look, even an NG part with no region above the pixel threshold; the top region, if "
        "any, contains it. None for a 3D-only bank (see points.peak_index)"
    )
    points: PointScores | None = Field(
        None, description="a 3D-only bank's per-point scores (absent with map=none, and for RGB + 3D banks)"
    )
    timings_ms: Timings


class BatchResponse(BaseModel):
    results: list[ScoreResponse] = Field(description="one answer per sample, in request order")


class MemberInfo(BaseModel):
    name: str = Field(description="feature extractor of this member bank")
    bank_size: int = Field(description="vectors in this member's bank")
    dim: int = Field(description="its feature dimension")


class CategoryInfo(BaseModel):
    name: str
    input: Literal["image", "points"] = Field(
        "image",
        description="what /score takes: image (an RGB image and an organized cloud) or points (a 3D-only "
        "bank: one unorganized point cloud, PCD or PLY, and no rgb)",
    )
    method: str = Field(description="scoring method, e.g. rgb/fpfh (late fusion) or rgb+fpfh (one bank)")
    bank_version: str
    bank_size: int = Field(description="vectors in the bank (all members)")
    dim: int = Field(description="feature dimension (summed over members)")
    members: list[MemberInfo] = Field(default_factory=list, description="one bank per member")
    fusion: str | None = Field(None, description="how member scores combine: max or svm; None for one bank")
    threshold: float
    pixel_threshold: float
    calibration: dict[str, Any] | None = Field(
        None, description="how the thresholds were calibrated and the measured false-reject rate"
    )
    evaluation: EvaluationRecord | None = Field(
        None, description="figures on the test split when the bank was built"
    )


class CategoriesResponse(BaseModel):
    categories: list[CategoryInfo]
    errors: dict[str, str] = Field(default_factory=dict, description="banks that failed to load, and why")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "loading", "not ready"] = Field(
        description="ready: banks loaded (at least one, and every required one); loading: still starting; "
        "not ready: loaded, but no bank or a required bank failed (see reasons)"
    )
    categories: list[str] = Field(default_factory=list, description="categories this replica can score")
    reasons: list[str] = Field(default_factory=list, description="why it is not ready")
    redis: Literal["off", "ok", "unreachable"] = Field("off", description="the shared registry's state")
    degraded: bool = Field(False, description="scoring works, but Redis is unreachable (no sharing)")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, for a person to read")


class RecallInfo(BaseModel):
    """How much of a category's bank the parts decided OK have recalled (matched), and how long ago."""

    category: str
    bank_version: str
    source: Literal["redis", "files"] = Field(
        description="where every replica's counts were read: Redis, else the replicas' files"
    )
    vectors: int = Field(description="bank vectors, all members together")
    recalled: int = Field(description="vectors recalled at least once")
    recalled_fraction: float
    recalls: int = Field(description="recalls in all (each part recalls a vector at most once)")
    age_s: dict[str, float | None] = Field(
        description="seconds since the recalled vectors' last recall: median (p50), p90 and the oldest (max); "
        "None while nothing is recalled"
    )


class DriftInfo(BaseModel):
    """Is the line drifting? This replica's recent OK scores against the bank's calibration goods, and the
    reviewed parts' false-alarm rate."""

    category: str
    bank_version: str
    n_recent: int = Field(description="recent OK decisions of this bank version (this replica's)")
    n_calibration: int = Field(description="the held-out goods the thresholds were set on")
    ks: float | None = Field(
        description="two-sample Kolmogorov-Smirnov statistic; None with < 10 recent OK parts"
    )
    p_value: float | None
    median_recent: float | None
    median_calibration: float
    shift: float | None = Field(
        description="median recent minus median calibration, in the calibration scores' interquartile ranges"
    )
    reviewed_ng: int = Field(description="NG decisions with a verdict (this replica's feedback records)")
    false_alarms: int = Field(description="of those, verdict false_alarm")
    reviewed_false_alarm_rate: float | None
