"""HTTP clients for the Patchbank scoring service.

Light on purpose: httpx, numpy, pillow and pydantic only (never the engine: no patchbank, torch, faiss or
open3d), so a line PC can install it on its own. :class:`PatchbankClient` (sync) and
:class:`AsyncPatchbankClient` (async) share every non-I/O step (request building, response parsing, the retry
decision) through :class:`_ClientCore`; each only sends requests and sleeps its own way.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, TypeVar
from urllib.parse import quote, urlencode

import httpx
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "APIError",
    "AnomalyMap",
    "AsyncPatchbankClient",
    "BadRequest",
    "CategoryInfo",
    "Conflict",
    "ConnectionFailed",
    "Decision",
    "FeedbackRecord",
    "IntrinsicsInput",
    "MapFormat",
    "NotFound",
    "PatchbankClient",
    "PatchbankClientError",
    "PayloadTooLarge",
    "Peak",
    "PointCloudInput",
    "PointScores",
    "RecentView",
    "Region",
    "RgbInput",
    "ScoreResult",
    "ServiceUnavailable",
    "Unauthorized",
    "UnexpectedResponse",
    "Verdict",
    "XyzInput",
    "XyzUnit",
    "intrinsics_json",
]

RgbInput: TypeAlias = str | PathLike[str] | bytes | np.ndarray
"""A path to a PNG/JPEG/TIFF file, the file's bytes, or a uint8 array (H, W, 3) (sent as PNG)."""
XyzInput: TypeAlias = str | PathLike[str] | bytes | np.ndarray
"""The sample's point cloud: a path to an xyz TIFF or ``.npy`` (H x W x 3), an organized ``.ply`` or ``.pcd``,
or a depth image (16-bit ``.png``, float ``.tiff``, H x W ``.npy``; needs intrinsics), sent under its own
file name; or a file's bytes; or a float array (H, W, 3) (sent as .npy). The service tells the format from the
file's first bytes, then from its name's extension."""
XyzUnit: TypeAlias = Literal["m", "mm", "um"]
"""The unit of an xyz cloud's coordinates; the service converts them to metres (not for depth images)."""
IntrinsicsInput: TypeAlias = Mapping[str, float] | str | PathLike[str]
"""A depth image's camera: a mapping ``{"fx", "fy", "cx", "cy", "depth_scale"[, "width", "height"]}``, the
same as a JSON string, or a path to a JSON file (read by the client)."""
PointCloudInput: TypeAlias = str | PathLike[str] | bytes | np.ndarray
"""A 3D-only bank's sample: a path to an unorganized ``.pcd`` or ``.ply`` cloud (sent under its own name), its
bytes, or a float array (N, 3) (sent as a binary PLY)."""
MapFormat: TypeAlias = Literal["none", "png", "overlay", "array"]
"""The anomaly map to ask for: none; png, the heatmap alone; overlay, the heatmap drawn over the part's image
with the regions outlined and a colour bar; array, the float16 values. The heatmaps' scale: 0 at the colour
map's start, the bank's pixel threshold at mid-scale, twice it and above saturated."""

MAP_FORMATS: tuple[str, ...] = ("none", "png", "overlay", "array")
XYZ_UNITS: tuple[str, ...] = ("m", "mm", "um")
INTRINSICS_KEYS = ("fx", "fy", "cx", "cy", "depth_scale")  # the keys a camera must give
MAX_INTRINSICS = 1000  # characters of the intrinsics JSON the service accepts
NPY_MAGIC = b"\x93NUMPY"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
RETRY_STATUSES = frozenset({502, 503, 504})
"""Answers worth another try: the service is busy or loading (503), or a proxy in front of it is (502, 504)."""
DEFAULT_MAX_DELAY = 10.0


# --------------------------------------------------------------------------------------------------- errors


class PatchbankClientError(Exception):
    """Base class of every error this package raises on purpose."""


class ConnectionFailed(PatchbankClientError):
    """The service could not be reached (refused, reset, DNS, timeout), even after the retries."""


class UnexpectedResponse(PatchbankClientError):
    """A successful answer whose body is not what the contract promises (wrong shape, not JSON)."""


class APIError(PatchbankClientError):
    """The service answered 4xx/5xx. ``reason`` is its ``detail`` (or the body / reason phrase without one)."""

    def __init__(self, status_code: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(status_code, reason)
        self.status_code = status_code
        self.reason = reason
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {self.reason}"


class BadRequest(APIError):
    """400 (bad input) or 422 (a missing or malformed field)."""


class Unauthorized(APIError):
    """401: a missing or invalid API key."""


class NotFound(APIError):
    """404: unknown category (or route)."""


class Conflict(APIError):
    """409: the Idempotency-Key was already used with another request."""


class PayloadTooLarge(APIError):
    """413: the upload is over the service's limit."""


class ServiceUnavailable(APIError):
    """503: the service is busy or still loading, even after the retries. ``retry_after`` is in seconds."""


_ERROR_CLASSES: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: BadRequest,
    503: ServiceUnavailable,
}


# --------------------------------------------------------------------------------------------------- models


class _Model(BaseModel):
    # extra="allow": fields a newer server adds are kept (``model_extra``, ``model_dump``), not dropped.
    model_config = ConfigDict(frozen=True, extra="allow")


class Region(_Model):
    """One connected anomalous region of the anomaly map, in pixels of the input image."""

    bbox: tuple[int, int, int, int]
    """``(x0, y0, x1, y1)``."""
    area_px: int
    peak_score: float


class Peak(_Model):
    """Where the anomaly map is highest, in pixels of the input image, and its value: a place to look at even
    when no region is above the pixel threshold."""

    x: int
    y: int
    score: float


class AnomalyMap(_Model):
    """The anomaly map as sent: a base64 PNG (``png`` heatmap, ``overlay`` over the image), or base64 raw
    little-endian array bytes."""

    format: str
    data: str
    width: int | None = None
    height: int | None = None
    dtype: str | None = None
    shape: tuple[int, ...] | None = None


class PointScores(_Model):
    """A 3D-only bank's per-point scores: one per point of the sent cloud, in the file's order."""

    count: int
    dtype: str = "float16"
    data: str
    peak_index: int
    """The highest-scoring point's index in the file."""
    peak_xyz: tuple[float, float, float]
    above_threshold: int
    """Points scoring above the bank's point threshold (``pixel_threshold``)."""


class ScoreResult(_Model):
    """The answer of ``POST /score`` for one sample (an RGB + 3D bank's, or a 3D-only bank's: then
    ``image_score`` is the object score, ``points`` holds the per-point scores and there is no map)."""

    category: str
    bank_version: str
    sample_id: str | None = None
    image_score: float
    threshold: float
    pixel_threshold: float
    is_anomalous: bool
    anomaly_map: AnomalyMap | None = None
    regions: tuple[Region, ...] = ()
    peak: Peak | None = None
    """The map's maximum (None from a service too old to send it, and for a 3D-only bank)."""
    points: PointScores | None = None
    """A 3D-only bank's per-point scores (see :meth:`point_scores`)."""
    timings_ms: dict[str, float] = {}

    def point_scores(self) -> np.ndarray | None:
        """A 3D-only bank's score of every point of the sent cloud, float32 (N,) in the file's point order, or
        None (an RGB + 3D bank, or scored with ``per_point=False``)."""
        p = self.points
        if p is None:
            return None
        raw = _b64decode(p.data, "points.data")
        if len(raw) != 2 * p.count:
            raise UnexpectedResponse(
                f"points holds {len(raw)} bytes, expected {2 * p.count} for {p.count} float16"
            )
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)

    def map_array(self) -> np.ndarray | None:
        """The per-pixel anomaly scores as a float32 (H, W) array, or None unless ``map="array"`` was asked."""
        m = self.anomaly_map
        if m is None or m.format != "array":
            return None
        if m.shape is None:
            raise UnexpectedResponse("anomaly_map of format 'array' has no shape")
        try:
            dtype = np.dtype(m.dtype or "float16").newbyteorder("<")
        except TypeError as exc:
            raise UnexpectedResponse(f"anomaly_map has an unknown dtype {m.dtype!r}") from exc
        raw = _b64decode(m.data, "anomaly_map.data")
        expected = math.prod(m.shape) * dtype.itemsize
        if len(raw) != expected:
            raise UnexpectedResponse(
                f"anomaly_map holds {len(raw)} bytes, expected {expected} for shape {list(m.shape)} {dtype.name}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(m.shape).astype(np.float32)

    def map_png(self) -> bytes | None:
        """The PNG heatmap's bytes, or None unless ``map="png"`` was asked."""
        return self._png("png")

    def overlay_png(self) -> bytes | None:
        """The overlay's PNG bytes (the heatmap over the part, regions outlined, a colour bar at the right), or
        None unless ``map="overlay"`` was asked."""
        return self._png("overlay")

    def save_overlay(self, path: str | PathLike[str]) -> Path:
        """Write the overlay PNG to ``path`` (its folder is made) and return the path. The answer holds one
        only when scored with ``map="overlay"``: ValueError otherwise."""
        png = self.overlay_png()
        if png is None:
            sent = "no map" if self.anomaly_map is None else f'map="{self.anomaly_map.format}"'
            raise ValueError(f'this answer holds {sent}: score with map="overlay" to save an overlay')
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png)
        return out

    def _png(self, fmt: str) -> bytes | None:
        m = self.anomaly_map
        if m is None or m.format != fmt:
            return None
        return _b64decode(m.data, "anomaly_map.data")


class CategoryInfo(_Model):
    """One loaded category: its bank and its calibrated thresholds."""

    name: str
    method: str
    bank_version: str
    bank_size: int
    dim: int
    threshold: float
    pixel_threshold: float
    input: str = "image"
    """What :meth:`PatchbankClient.score` takes: ``image`` (RGB + organized cloud) or ``points`` (a 3D-only bank:
    use :meth:`PatchbankClient.score_points`)."""
    members: list[dict[str, Any]] = []
    fusion: str | None = None
    calibration: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None


class Decision(_Model):
    """One decision of the live view (``GET /recent``)."""

    id: str
    """``"<replica>-<seq>"``; give it to :meth:`PatchbankClient.feedback`."""
    replica: str
    seq: int
    time: float
    """Epoch seconds."""
    category: str
    sample_id: str | None = None
    bank_version: str
    image_score: float
    threshold: float
    decision: str
    """``"OK"`` or ``"NG"``."""
    regions: int
    peak: float | None = None
    latency_ms: float
    has_sample: bool = False
    has_map: bool = False


class RecentView(_Model):
    """The answer of ``GET /recent``: decisions oldest first, and each category's counts and histogram."""

    source: str
    """``"local"`` (the answering replica's) or ``"redis"`` (every replica's)."""
    replica: str
    cursor: str | None = None
    """Pass as ``since`` in the next call to get only newer decisions."""
    more: bool = False
    decisions: tuple[Decision, ...] = ()
    categories: dict[str, dict[str, Any]] = {}
    """Per category: ``ok_last_hour``, ``ng_last_hour``, ``histogram`` (``edges``, ``counts``, ``threshold``)."""


class FeedbackRecord(_Model):
    """A stored verdict on a decision (``POST /feedback``), with where the sample's files are kept."""

    id: str
    path: str
    """``<category>/<id>`` inside the service's feedback folder."""
    time: float
    replica: str
    verdict: str
    who: str
    note: str | None = None
    decision: dict[str, Any]
    files: dict[str, str] = {}
    files_missing: str | None = None


Verdict: TypeAlias = Literal["confirmed", "false_alarm", "missed_defect"]
"""confirmed: the decision was right; false_alarm: NG but the part is good; missed_defect: OK but defective."""
VERDICTS: tuple[str, ...] = ("confirmed", "false_alarm", "missed_defect")

_M = TypeVar("_M", bound=BaseModel)


def _b64decode(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (ValueError, TypeError) as exc:
        raise UnexpectedResponse(f"{what} is not valid base64") from exc


# --------------------------------------------------------------------------------------------------- inputs


def _sniff_image(data: bytes) -> tuple[str, str]:
    """(upload filename, content type) for an image's bytes."""
    if data.startswith(PNG_MAGIC):
        return "rgb.png", "image/png"
    if data.startswith(JPEG_MAGIC):
        return "rgb.jpg", "image/jpeg"
    if data.startswith(TIFF_MAGICS):
        return "rgb.tiff", "image/tiff"
    return "rgb.png", "application/octet-stream"  # let the server say what is wrong with it


def _encode_rgb(rgb: RgbInput) -> tuple[str, bytes, str]:
    """The multipart file tuple ``(filename, bytes, content type)`` for an RGB input."""
    if isinstance(rgb, np.ndarray):
        if rgb.dtype != np.uint8:
            raise TypeError(f"rgb array must be uint8, got {rgb.dtype}")
        if not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] in (3, 4))):
            raise ValueError(f"rgb array must be (H, W, 3), (H, W, 4) or (H, W), got shape {rgb.shape}")
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
        return "rgb.png", buf.getvalue(), "image/png"
    if isinstance(rgb, bytes | bytearray | memoryview):
        data = bytes(rgb)
    elif isinstance(rgb, str | PathLike):
        data = Path(rgb).read_bytes()
    else:
        raise TypeError(f"rgb must be a path, bytes or a numpy array, got {type(rgb).__name__}")
    if not data:
        raise ValueError("rgb is empty")
    name, content_type = _sniff_image(data)
    return name, data, content_type


def _xyz_content_type(data: bytes) -> str:
    if data.startswith(TIFF_MAGICS):
        return "image/tiff"
    if data.startswith(PNG_MAGIC):
        return "image/png"
    return "application/octet-stream"


def _encode_xyz(xyz: XyzInput) -> tuple[str, bytes, str]:
    """The multipart file tuple for an xyz input. A path is sent under its own file name (the service falls
    back on its extension to tell the format); bytes and arrays as ``xyz.npy`` or ``xyz.tiff`` by content."""
    if isinstance(xyz, np.ndarray):
        if not np.issubdtype(xyz.dtype, np.floating):
            raise TypeError(f"xyz array must be float32, got {xyz.dtype}")
        if xyz.ndim != 3 or xyz.shape[2] != 3:
            raise ValueError(f"xyz array must be (H, W, 3), got shape {xyz.shape}")
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(xyz, dtype="<f4"), allow_pickle=False)
        return "xyz.npy", buf.getvalue(), "application/octet-stream"
    if isinstance(xyz, str | PathLike):
        path = Path(xyz)
        data = path.read_bytes()
        if not data:
            raise ValueError(f"xyz {path.name} is empty")
        return path.name, data, _xyz_content_type(data)
    if isinstance(xyz, bytes | bytearray | memoryview):
        data = bytes(xyz)
    else:
        raise TypeError(f"xyz must be a path, bytes or a numpy array, got {type(xyz).__name__}")
    if not data:
        raise ValueError("xyz is empty")
    if data.startswith(NPY_MAGIC):
        return "xyz.npy", data, "application/octet-stream"
    return "xyz.tiff", data, "image/tiff"


def _encode_points(cloud: PointCloudInput) -> tuple[str, bytes, str]:
    """The multipart file tuple for an unorganized cloud: a file under its own name, bytes named by their
    header (``ply`` or PCD), an (N, 3) float array as a binary little-endian PLY."""
    if isinstance(cloud, np.ndarray):
        if not np.issubdtype(cloud.dtype, np.floating) or cloud.ndim != 2 or cloud.shape[1] != 3:
            raise ValueError(f"a point cloud array must be float (N, 3), got {cloud.dtype} {cloud.shape}")
        header = (
            "ply\nformat binary_little_endian 1.0\n"
            f"element vertex {len(cloud)}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
        )
        data = header.encode() + np.ascontiguousarray(cloud, dtype="<f4").tobytes()
        return "points.ply", data, "application/octet-stream"
    if isinstance(cloud, str | PathLike):
        path = Path(cloud)
        data = path.read_bytes()
        name = path.name
    elif isinstance(cloud, bytes | bytearray | memoryview):
        data = bytes(cloud)
        name = "points.ply" if data.startswith(b"ply") else "points.pcd"
    else:
        raise TypeError(f"a point cloud must be a path, bytes or a numpy array, got {type(cloud).__name__}")
    if not data:
        raise ValueError(f"point cloud {name} is empty")
    return name, data, "application/octet-stream"


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):  # numpy numbers from a calibration tool
        return value.item()
    raise TypeError(f"intrinsics hold numbers, got {type(value).__name__}")


def intrinsics_json(intrinsics: IntrinsicsInput) -> str:
    """A depth camera as the compact JSON text the service takes in its ``intrinsics`` field.

    ``intrinsics`` is a mapping, a JSON string, or a path to a JSON file. Raises ValueError when it is not a
    JSON object with ``fx``, ``fy``, ``cx``, ``cy`` and ``depth_scale`` or is too long for the service, TypeError
    for another type, OSError when the file cannot be read. The service checks the values and names a wrong
    one."""
    where = "intrinsics"
    if isinstance(intrinsics, Mapping):
        obj: Any = dict(intrinsics)
    elif isinstance(intrinsics, str | PathLike):
        if isinstance(intrinsics, str):
            text = intrinsics
        else:
            where = f"intrinsics file {intrinsics}"
            raw = Path(intrinsics).read_bytes()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where} is not UTF-8 text") from exc
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = "" if not isinstance(intrinsics, str) else " (give a pathlib.Path to read a JSON file)"
            raise ValueError(f"{where} is not valid JSON: {exc}{hint}") from exc
    else:
        raise TypeError(
            f"intrinsics must be a mapping, a JSON string or a path, got {type(intrinsics).__name__}"
        )
    if not isinstance(obj, dict):
        raise ValueError(f'{where} must be a JSON object like {{"fx": 240, ...}}, got {type(obj).__name__}')
    missing = [k for k in INTRINSICS_KEYS if k not in obj]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)} (needs {', '.join(INTRINSICS_KEYS)})")
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_value)
    except ValueError as exc:
        raise ValueError(f"{where} holds a value that is not a finite number") from exc
    if len(text) > MAX_INTRINSICS:
        raise ValueError(
            f"{where} is {len(text)} characters of JSON; the service takes at most {MAX_INTRINSICS}"
        )
    return text


# --------------------------------------------------------------------------------------------------- core


@dataclass(frozen=True)
class _Request:
    """Everything needed to send (and resend) one request; bodies are bytes so a retry can resend them."""

    method: str
    path: str
    data: dict[str, str | list[str]] = field(default_factory=dict)
    files: list[tuple[str, tuple[str, bytes, str]]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None  # a JSON body


def _error_reason(response: httpx.Response) -> str:
    """The server's ``detail`` as one line (FastAPI's 422 lists are flattened), else the body or phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict) and "msg" in item:
                    loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                    parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        return str(detail)
    text = response.text.strip()
    if text:
        return text if len(text) <= 300 else text[:300] + "..."
    return response.reason_phrase or f"HTTP {response.status_code}"


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent or garbled."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _api_error(response: httpx.Response) -> APIError:
    cls = _ERROR_CLASSES.get(response.status_code, APIError)
    return cls(
        response.status_code, _error_reason(response), _parse_retry_after(response.headers.get("Retry-After"))
    )


class _ClientCore:
    """What the sync and the async client share: configuration, request building, parsing, retry policy."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_delay: float = DEFAULT_MAX_DELAY,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if backoff < 0 or max_delay < 0:
            raise ValueError("backoff and max_delay must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_delay = max_delay

    def _default_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "patchbank-client/0.1"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        return headers

    # -- retry policy ------------------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before try ``attempt + 1``: the server's Retry-After, else exponential backoff."""
        delay = retry_after if retry_after is not None else self.backoff * 2**attempt
        return min(delay, self.max_delay)

    def _after_response(self, response: httpx.Response, attempt: int) -> float | None:
        """None when ``response`` is a success to parse; the delay before a retry; else raises its APIError."""
        if response.is_success:
            return None
        error = _api_error(response)
        if response.status_code in RETRY_STATUSES and attempt < self.retries:
            return self._delay(attempt, error.retry_after)
        raise error

    def _after_transport_error(self, exc: httpx.TransportError, attempt: int) -> float:
        """The delay before a retry after a connection error; raises ConnectionFailed after the last try."""
        if attempt < self.retries:
            return self._delay(attempt)
        tries = f" after {attempt + 1} tries" if attempt else ""
        reason = str(exc) or type(exc).__name__
        raise ConnectionFailed(f"cannot reach {self.base_url}{tries}: {reason}") from exc

    # -- requests ----------------------------------------------------------------------------------------

    @staticmethod
    def _check_map(map: str) -> None:
        if map not in MAP_FORMATS:
            raise ValueError(f"map must be one of {', '.join(MAP_FORMATS)}, got {map!r}")

    @staticmethod
    def _cloud_fields(xyz_unit: str | None, intrinsics: IntrinsicsInput | None) -> dict[str, str]:
        """The form fields that say how to read the clouds: ``xyz_unit`` and ``intrinsics`` when given."""
        fields: dict[str, str] = {}
        if xyz_unit is not None:
            if xyz_unit not in XYZ_UNITS:
                raise ValueError(f"xyz_unit must be one of {', '.join(XYZ_UNITS)}, got {xyz_unit!r}")
            fields["xyz_unit"] = xyz_unit
        if intrinsics is not None:
            fields["intrinsics"] = intrinsics_json(intrinsics)
        return fields

    def _score_request(
        self,
        category: str,
        rgb: RgbInput,
        xyz: XyzInput,
        map: str,
        sample_id: str | None,
        idempotency_key: str | None,
        xyz_unit: str | None = None,
        intrinsics: IntrinsicsInput | None = None,
    ) -> _Request:
        self._check_map(map)
        data: dict[str, str | list[str]] = {"category": category, "map": map}
        data.update(self._cloud_fields(xyz_unit, intrinsics))
        if sample_id is not None:
            data["sample_id"] = sample_id
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        files = [("rgb", _encode_rgb(rgb)), ("xyz", _encode_xyz(xyz))]
        return _Request("POST", "/score", data=data, files=files, headers=headers)

    def _points_request(
        self,
        category: str,
        cloud: PointCloudInput,
        per_point: bool,
        sample_id: str | None,
        idempotency_key: str | None,
    ) -> _Request:
        data: dict[str, str | list[str]] = {"category": category, "map": "array" if per_point else "none"}
        if sample_id is not None:
            data["sample_id"] = sample_id
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return _Request("POST", "/score", data=data, files=[("xyz", _encode_points(cloud))], headers=headers)

    def _batch_request(
        self,
        category: str,
        samples: Sequence[tuple[RgbInput, XyzInput]],
        map: str,
        sample_ids: Sequence[str] | None,
        idempotency_key: str | None,
        xyz_unit: str | None = None,
        intrinsics: IntrinsicsInput | None = None,
    ) -> _Request:
        self._check_map(map)
        if not samples:
            raise ValueError("score_batch needs at least one sample")
        data: dict[str, str | list[str]] = {"category": category, "map": map}
        data.update(self._cloud_fields(xyz_unit, intrinsics))
        if sample_ids is not None:
            if isinstance(sample_ids, str) or len(sample_ids) != len(samples):
                raise ValueError(f"sample_ids must be a sequence of {len(samples)} ids, one per sample")
            data["sample_id"] = [str(s) for s in sample_ids]
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        for i, sample in enumerate(samples):
            try:
                rgb, xyz = sample
            except (TypeError, ValueError) as exc:
                raise TypeError(f"samples[{i}] must be an (rgb, xyz) pair") from exc
            files.append(("rgb", _encode_rgb(rgb)))
            files.append(("xyz", _encode_xyz(xyz)))
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return _Request("POST", "/score/batch", data=data, files=files, headers=headers)

    @staticmethod
    def _category_path(name: str) -> str:
        return "/categories/" + quote(name, safe="")

    # -- parsing -----------------------------------------------------------------------------------------

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise UnexpectedResponse(
                f"{response.request.method} {response.request.url.path} answered {response.status_code} "
                "with a body that is not JSON"
            ) from exc

    @classmethod
    def _parse_score(cls, response: httpx.Response) -> ScoreResult:
        return cls._validate(ScoreResult, cls._json(response), "score answer")

    @classmethod
    def _parse_batch(cls, response: httpx.Response, expected: int) -> list[ScoreResult]:
        body = cls._json(response)
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise UnexpectedResponse("batch answer has no 'results' list")
        if len(results) != expected:
            raise UnexpectedResponse(f"batch answer has {len(results)} results for {expected} samples")
        return [cls._validate(ScoreResult, r, f"results[{i}]") for i, r in enumerate(results)]

    @classmethod
    def _parse_categories(cls, response: httpx.Response) -> list[CategoryInfo]:
        body = cls._json(response)
        items = body.get("categories") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise UnexpectedResponse("categories answer has no 'categories' list")
        return [cls._validate(CategoryInfo, c, f"categories[{i}]") for i, c in enumerate(items)]

    @classmethod
    def _parse_category(cls, response: httpx.Response) -> CategoryInfo:
        return cls._validate(CategoryInfo, cls._json(response), "category answer")

    @staticmethod
    def _validate(model: type[_M], body: Any, what: str) -> _M:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]
            )
            raise UnexpectedResponse(f"unexpected {what}: {errors}") from exc

    @staticmethod
    def _recent_request(since: str | None, category: str | None, limit: int | None) -> _Request:
        query = {
            k: v for k, v in (("since", since), ("category", category), ("limit", limit)) if v is not None
        }
        return _Request("GET", "/recent" + ("?" + urlencode(query) if query else ""))

    @staticmethod
    def _feedback_request(
        decision_id: str | None,
        verdict: str,
        who: str,
        note: str | None,
        sample_id: str | None,
        category: str | None,
    ) -> _Request:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        if (decision_id is None) == (sample_id is None) or (sample_id is not None and category is None):
            raise ValueError("give either decision_id, or sample_id with category")
        body = {"decision_id": decision_id, "sample_id": sample_id, "category": category}
        body = {k: v for k, v in body.items() if v is not None} | {"verdict": verdict, "who": who}
        if note is not None:
            body["note"] = note
        headers = {"Content-Type": "application/json"}
        return _Request("POST", "/feedback", headers=headers, content=json.dumps(body).encode())

    @staticmethod
    def _feedback_list_request(category: str | None, limit: int | None) -> _Request:
        query = {k: v for k, v in (("category", category), ("limit", limit)) if v is not None}
        return _Request("GET", "/feedback" + ("?" + urlencode(query) if query else ""))

    @classmethod
    def _parse_feedback_list(cls, response: httpx.Response) -> list[FeedbackRecord]:
        body = cls._json(response)
        items = body.get("records") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise UnexpectedResponse("feedback answer has no 'records' list")
        return [cls._validate(FeedbackRecord, r, f"records[{i}]") for i, r in enumerate(items)]

    @staticmethod
    def _is_healthy(response: httpx.Response) -> bool:
        if response.status_code != 200:
            return False
        try:
            body = response.json()
        except ValueError:
            return False
        return isinstance(body, dict) and body.get("status") == "ok"


# --------------------------------------------------------------------------------------------------- sync


class PatchbankClient(_ClientCore):
    """Synchronous client. Use as a context manager, or call :meth:`close`.

    ``retries`` is the number of extra tries after the first one, on connection errors and 503 (and 502/504)
    only; the wait before try ``n + 1`` is the server's ``Retry-After`` when it sends one, else
    ``backoff * 2**n``, capped at ``max_delay`` seconds. Other 4xx/5xx are raised at once as :class:`APIError`
    subclasses; connection errors after the last try as :class:`ConnectionFailed`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        *,
        max_delay: float = DEFAULT_MAX_DELAY,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retries, backoff, max_delay)
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=self._default_headers(), transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _send(self, req: _Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    req.method,
                    req.path,
                    data=req.data or None,
                    files=req.files or None,
                    headers=req.headers or None,
                    content=req.content,
                )
            except httpx.TransportError as exc:
                delay = self._after_transport_error(exc, attempt)
            else:
                maybe = self._after_response(response, attempt)
                if maybe is None:
                    return response
                delay = maybe
            time.sleep(delay)
            attempt += 1

    def score(
        self,
        category: str,
        rgb: RgbInput,
        xyz: XyzInput,
        map: MapFormat = "none",
        sample_id: str | None = None,
        idempotency_key: str | None = None,
        *,
        xyz_unit: XyzUnit | None = None,
        intrinsics: IntrinsicsInput | None = None,
    ) -> ScoreResult:
        """Score one sample. See :data:`RgbInput` and :data:`XyzInput` for what the inputs may be, and
        :data:`MapFormat` for ``map`` (``"overlay"`` for :meth:`ScoreResult.save_overlay`).

        ``xyz_unit``: the unit of an xyz cloud's coordinates when not metres (``"mm"``, ``"um"``); the service
        refuses a cloud far off the bank's scale sent without one. ``intrinsics``: the camera of a depth image
        (see :data:`IntrinsicsInput`), unless the bank stores one."""
        req = self._score_request(
            category, rgb, xyz, map, sample_id, idempotency_key, xyz_unit=xyz_unit, intrinsics=intrinsics
        )
        return self._parse_score(self._send(req))

    def score_points(
        self,
        category: str,
        cloud: PointCloudInput,
        per_point: bool = True,
        sample_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> ScoreResult:
        """Score one unorganized cloud against a 3D-only bank (no colour image): the object score, the
        decision, and unless ``per_point`` is False every point's score (:meth:`ScoreResult.point_scores`)."""
        req = self._points_request(category, cloud, per_point, sample_id, idempotency_key)
        return self._parse_score(self._send(req))

    def score_batch(
        self,
        category: str,
        samples: Sequence[tuple[RgbInput, XyzInput]],
        map: MapFormat = "none",
        sample_ids: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        *,
        xyz_unit: XyzUnit | None = None,
        intrinsics: IntrinsicsInput | None = None,
    ) -> list[ScoreResult]:
        """Score several samples of one category in one request; results in the order of ``samples``.
        ``xyz_unit`` and ``intrinsics`` (as for :meth:`score`) apply to every sample."""
        req = self._batch_request(
            category, samples, map, sample_ids, idempotency_key, xyz_unit=xyz_unit, intrinsics=intrinsics
        )
        return self._parse_batch(self._send(req), len(samples))

    def categories(self) -> list[CategoryInfo]:
        return self._parse_categories(self._send(_Request("GET", "/categories")))

    def category(self, name: str) -> CategoryInfo:
        return self._parse_category(self._send(_Request("GET", self._category_path(name))))

    def reload(self, name: str) -> CategoryInfo:
        """Reload a category's bank from disk (needs an admin key when the server has keys)."""
        return self._parse_category(self._send(_Request("POST", self._category_path(name) + "/reload")))

    def healthy(self) -> bool:
        """True when ``/healthz`` answers ok. One try, never raises."""
        try:
            return self._is_healthy(self._http.get("/healthz"))
        except httpx.HTTPError:
            return False

    def ready(self) -> bool:
        """True when ``/readyz`` answers 200 (False while loading (503) or unreachable). One try, never raises."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def recent(
        self, since: str | None = None, category: str | None = None, limit: int | None = None
    ) -> RecentView:
        """The live view: the last decisions (after ``since``, a previous answer's ``cursor``: only newer
        ones), each category's OK/NG counts over the last hour and its score histogram."""
        response = self._send(self._recent_request(since, category, limit))
        return self._validate(RecentView, self._json(response), "recent answer")

    def feedback(
        self,
        decision_id: str | None = None,
        *,
        verdict: Verdict,
        who: str,
        note: str | None = None,
        sample_id: str | None = None,
        category: str | None = None,
    ) -> FeedbackRecord:
        """A verdict on a recent decision, named by ``decision_id`` or by ``sample_id`` and ``category``; the
        service keeps it with the sample's files. :class:`NotFound` when the decision is no longer kept."""
        req = self._feedback_request(decision_id, verdict, who, note, sample_id, category)
        return self._validate(FeedbackRecord, self._json(self._send(req)), "feedback answer")

    def feedback_records(self, category: str | None = None, limit: int | None = None) -> list[FeedbackRecord]:
        """Stored verdicts, newest first."""
        return self._parse_feedback_list(self._send(self._feedback_list_request(category, limit)))


# --------------------------------------------------------------------------------------------------- async


class AsyncPatchbankClient(_ClientCore):
    """Asynchronous twin of :class:`PatchbankClient` (same methods, awaited). Use ``async with``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        *,
        max_delay: float = DEFAULT_MAX_DELAY,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retries, backoff, max_delay)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=self._default_headers(), transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _send(self, req: _Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    req.method,
                    req.path,
                    data=req.data or None,
                    files=req.files or None,
                    headers=req.headers or None,
                    content=req.content,
                )
            except httpx.TransportError as exc:
                delay = self._after_transport_error(exc, attempt)
            else:
                maybe = self._after_response(response, attempt)
                if maybe is None:
                    return response
                delay = maybe
            await asyncio.sleep(delay)
            attempt += 1

    async def score(
        self,
        category: str,
        rgb: RgbInput,
        xyz: XyzInput,
        map: MapFormat = "none",
        sample_id: str | None = None,
        idempotency_key: str | None = None,
        *,
        xyz_unit: XyzUnit | None = None,
        intrinsics: IntrinsicsInput | None = None,
    ) -> ScoreResult:
        """Score one sample; as :meth:`PatchbankClient.score`."""
        # Reading files and PNG encoding are blocking: keep them off the event loop.
        req = await asyncio.to_thread(
            self._score_request,
            category,
            rgb,
            xyz,
            map,
            sample_id,
            idempotency_key,
            xyz_unit=xyz_unit,
            intrinsics=intrinsics,
        )
        return self._parse_score(await self._send(req))

    async def score_points(
        self,
        category: str,
        cloud: PointCloudInput,
        per_point: bool = True,
        sample_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> ScoreResult:
        """Score one unorganized cloud against a 3D-only bank; as :meth:`PatchbankClient.score_points`."""
        req = await asyncio.to_thread(
            self._points_request, category, cloud, per_point, sample_id, idempotency_key
        )
        return self._parse_score(await self._send(req))

    async def score_batch(
        self,
        category: str,
        samples: Sequence[tuple[RgbInput, XyzInput]],
        map: MapFormat = "none",
        sample_ids: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        *,
        xyz_unit: XyzUnit | None = None,
        intrinsics: IntrinsicsInput | None = None,
    ) -> list[ScoreResult]:
        """Score several samples in one request; as :meth:`PatchbankClient.score_batch`."""
        req = await asyncio.to_thread(
            self._batch_request,
            category,
            samples,
            map,
            sample_ids,
            idempotency_key,
            xyz_unit=xyz_unit,
            intrinsics=intrinsics,
        )
        return self._parse_batch(await self._send(req), len(samples))

    async def categories(self) -> list[CategoryInfo]:
        return self._parse_categories(await self._send(_Request("GET", "/categories")))

    async def category(self, name: str) -> CategoryInfo:
        return self._parse_category(await self._send(_Request("GET", self._category_path(name))))

    async def reload(self, name: str) -> CategoryInfo:
        return self._parse_category(await self._send(_Request("POST", self._category_path(name) + "/reload")))

    async def healthy(self) -> bool:
        try:
            return self._is_healthy(await self._http.get("/healthz"))
        except httpx.HTTPError:
            return False

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def recent(
        self, since: str | None = None, category: str | None = None, limit: int | None = None
    ) -> RecentView:
        """The live view; as :meth:`PatchbankClient.recent`."""
        response = await self._send(self._recent_request(since, category, limit))
        return self._validate(RecentView, self._json(response), "recent answer")

    async def feedback(
        self,
        decision_id: str | None = None,
        *,
        verdict: Verdict,
        who: str,
        note: str | None = None,
        sample_id: str | None = None,
        category: str | None = None,
    ) -> FeedbackRecord:
        """A verdict on a recent decision; as :meth:`PatchbankClient.feedback`."""
        req = self._feedback_request(decision_id, verdict, who, note, sample_id, category)
        return self._validate(FeedbackRecord, self._json(await self._send(req)), "feedback answer")

    async def feedback_records(
        self, category: str | None = None, limit: int | None = None
    ) -> list[FeedbackRecord]:
        """Stored verdicts, newest first."""
        return self._parse_feedback_list(await self._send(self._feedback_list_request(category, limit)))
