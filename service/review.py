"""The live view and review routes: ``GET /recent`` (the last decisions, last hour's counts, score
histograms), ``GET /recent/{id}/rgb`` and ``/map`` (a recent sample's image and anomaly map), ``POST`` and
``GET /feedback`` (an operator's or the MES's verdict, kept with the sample's files).

The console polls ``/recent`` with the ``cursor`` of its last answer (no server-sent events: a browser's
EventSource cannot send the X-API-Key header). With Redis, the view holds every replica's decisions."""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Annotated, Any, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from PIL import Image

from patchbank.decode import decode_rgb
from patchbank.errors import NotFoundError
from patchbank.loaded import LoadedBanks
from patchbank.predict import Sample
from patchbank.regions import Region, heatmap_png
from patchbank_service.feedback import (
    FEEDBACK_PREFIX,
    FeedbackList,
    FeedbackNotStored,
    FeedbackRecord,
    FeedbackRequest,
    FeedbackStore,
    from_pointer,
    pointer,
)
from patchbank_service.models import ScoreResponse
from patchbank_service.observability import Metrics
from patchbank_service.recent import (
    CATEGORY_PATTERN,
    REDIS_ERRORS,
    Decision,
    RecentDecisions,
    RecentResponse,
    StoredSample,
    find_in_streams,
    stream_view,
)
from patchbank_service.replicas import ReplicaLink
from patchbank_service.settings import ServiceSettings

log = logging.getLogger("patchbank.review")

IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
CategoryQuery = Annotated[str | None, Query(pattern=CATEGORY_PATTERN, description="only this category")]
LimitQuery = Annotated[int, Query(ge=1, le=1000, description="at most this many")]


AUTO_ACCEPT = (
    "auto-accept"  # the reviewer name of parts kept by PATCHBANK_AUTO_ACCEPT_BELOW (refresh-bank reads it)
)
AUTO_ACCEPT_QUEUE = 8


class Review:
    """A replica's recent decisions and feedback records, and its link to the other replicas' (Redis)."""

    def __init__(
        self,
        settings: ServiceSettings,
        loaded: LoadedBanks,
        replicas: ReplicaLink | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.loaded = loaded
        self.replicas = replicas
        self.metrics = metrics
        self.recent = RecentDecisions(
            settings.recent_size, settings.recent_samples, int(settings.recent_samples_mb * 1024 * 1024)
        )
        root = settings.feedback_dir or loaded.banks / ".feedback"
        self.feedback = FeedbackStore(root, settings.feedback_keep, self.recent.replica)
        self.render_limiter = anyio.CapacityLimiter(1)  # maps are drawn one at a time, beside the scoring
        self.auto_accept_below = settings.auto_accept_below
        self._auto = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patchbank-auto-accept")
        self._auto_pending = 0  # writes queued; beyond AUTO_ACCEPT_QUEUE a part is skipped, never waited for
        self._auto_lock = threading.Lock()

    def record(self, r: ScoreResponse, upload: Sample | None, latency_ms: float, at: float) -> Decision:
        """Keep one answered sample (on the scoring path: an append under a lock)."""
        return self.recent.record(r, upload, latency_ms, at)

    def auto_accept(self, decision: Decision, calibration: Sequence[float]) -> bool:
        """With ``auto_accept_below`` set, keep an OK part scoring below that quantile of the calibration goods'
        scores as a confirmed-good candidate (written in a background thread; skipped when writes lag)."""
        q = self.auto_accept_below
        if q is None or decision.decision != "OK" or not calibration:
            return False
        kept = self.recent.sample(decision.id)
        if kept is None or decision.image_score >= float(np.quantile(calibration, q)):
            return False
        with self._auto_lock:
            if self._auto_pending >= AUTO_ACCEPT_QUEUE:
                return False
            self._auto_pending += 1
        ask = FeedbackRequest(
            decision_id=decision.id,
            verdict="confirmed",
            who=AUTO_ACCEPT,
            note=f"scored below the {q:g} quantile of the calibration goods",
        )

        def write() -> None:
            try:
                self.feedback.write(ask, decision, kept, None)
            except FeedbackNotStored as exc:
                log.warning("auto-accepted part %s not kept: %s", decision.id, exc)
            finally:
                with self._auto_lock:
                    self._auto_pending -= 1

        self._auto.submit(write)
        return True

    @property
    def shared(self) -> bool:
        return self.replicas is not None and not self.replicas.degraded

    async def view(self, since: str | None, category: str | None, limit: int) -> RecentResponse:
        categories = [category] if category else self.loaded.categories()
        if self.replicas is not None and self.shared:
            try:
                return await stream_view(
                    self.replicas.aclient, self.recent, since, categories, limit, time.time()
                )
            except REDIS_ERRORS as exc:
                log.warning("live view from this replica alone: redis unreachable (%s)", type(exc).__name__)
        return self.recent.view(since, category, limit, categories)

    def stored(self, ident: str) -> StoredSample:
        kept = self.recent.sample(ident)
        if kept is None:
            raise NotFoundError(self._why_not_held(ident))
        return kept

    def _why_not_held(self, ident: str) -> str:
        if self.recent.samples == 0:
            return "this service keeps no samples (PATCHBANK_RECENT_SAMPLES=0)"
        if not ident.startswith(self.recent.replica + "-"):
            return f"decision {ident} was not scored by this replica, which holds only its own samples"
        return (
            f"decision {ident} is unknown or its files were evicted: this replica keeps the last "
            f"{self.recent.samples} samples ({self.recent.max_bytes / 2**20:g} MiB at most)"
        )

    async def decision(self, ask: FeedbackRequest) -> Decision:
        """The decision a verdict is about: this replica's, else (with Redis) another replica's."""
        if ask.decision_id is not None:
            found = self.recent.get(ask.decision_id)
        else:
            found = self.recent.find(ask.category or "", ask.sample_id or "")
        if self.replicas is not None and self.shared and (found is None or ask.sample_id is not None):
            categories = [ask.category] if ask.category else self.loaded.categories()
            with suppress(*REDIS_ERRORS):
                other = await find_in_streams(
                    self.replicas.aclient, categories, self.recent.size, ask.decision_id, ask.sample_id
                )
                if other is not None and (found is None or other.time > found.time):
                    found = other
        if found is None:
            named = ask.decision_id or f"sample {ask.sample_id} of {ask.category}"
            raise NotFoundError(
                f"no recent decision {named}: unknown, or older than the last {self.recent.size} decisions kept"
            )
        return found

    async def give(self, ask: FeedbackRequest) -> FeedbackRecord:
        decision = await self.decision(ask)
        kept = self.recent.sample(decision.id)
        missing = None if kept is not None else self._why_not_held(decision.id)
        record = await anyio.to_thread.run_sync(self.feedback.write, ask, decision, kept, missing)
        if self.metrics is not None:
            self.metrics.feedback.labels(
                category=decision.category, decision=decision.decision, verdict=ask.verdict
            ).inc()
        if self.replicas is not None:
            try:
                await self.replicas.aclient.xadd(
                    FEEDBACK_PREFIX + decision.category,
                    pointer(record),
                    maxlen=self.feedback.keep,
                    approximate=True,
                )
            except REDIS_ERRORS:
                log.warning("feedback %s stored here only: redis unreachable", record.id)
        log.info(
            "feedback",
            extra={"category": decision.category, "decision": decision.id, "verdict": ask.verdict},
        )
        return record

    async def records(self, category: str | None, limit: int) -> FeedbackList:
        if self.replicas is not None and self.shared:
            categories = [category] if category else self.loaded.categories()
            try:
                found: list[FeedbackRecord] = []
                for c in categories:
                    entries = await self.replicas.aclient.xrevrange(FEEDBACK_PREFIX + c, count=limit)
                    found += [r for _, f in entries if (r := from_pointer(f)) is not None]
                found.sort(key=lambda r: r.time, reverse=True)
                return FeedbackList(source="redis", records=found[:limit])
            except REDIS_ERRORS:
                pass
        records = await anyio.to_thread.run_sync(self.feedback.newest, category, limit)
        return FeedbackList(source="local", records=records)


# ---------------------------------------------------------------------------------------------- maps


def stored_map(kept: StoredSample) -> np.ndarray | None:
    """The map the answer carried as (H, W) float32 score units: a float16 array as is; a PNG heatmap read
    back from its levels (exact to 1/255 of twice the pixel threshold, saturated above that); None for a
    map carried as a colour image, which is shown as it is."""
    amap = kept.anomaly_map
    if amap is None:
        raise NotFoundError("this sample was scored with map=none: its answer carried no map")
    raw = base64.b64decode(amap.data)
    if amap.format == "array":
        return np.frombuffer(raw, dtype="<f2").reshape(amap.height, amap.width).astype(np.float32)
    try:
        image = Image.open(io.BytesIO(raw))
    except (OSError, ValueError) as exc:
        raise NotFoundError(f"this sample's map ({amap.format}) cannot be shown") from exc
    if image.mode not in ("P", "L"):
        return None
    return np.asarray(image).astype(np.float32) * np.float32(2.0 * kept.pixel_threshold / 255.0)


def render_map(kept: StoredSample, kind: Literal["overlay", "heatmap"], max_side: int | None) -> bytes:
    """The sample's map as a PNG: over its image (with its regions and a colour bar) or alone."""
    values = stored_map(kept)
    assert kept.anomaly_map is not None  # stored_map raises without one
    png = None
    if values is None or (kind == "heatmap" and kept.anomaly_map.format == "png"):
        png = base64.b64decode(kept.anomaly_map.data)  # the answer's own image
    elif kind == "overlay":
        try:
            from patchbank.overlay import overlay_png
        except ImportError:
            overlay_png = None
        if overlay_png is not None:
            image = decode_rgb(kept.rgb)
            regions = [Region(g.bbox, g.area_px, g.peak_score) for g in kept.regions]
            png = overlay_png(image, values, kept.pixel_threshold, regions, alpha=0.5, colour_bar=True)
    if png is None:
        png = heatmap_png(values, kept.pixel_threshold)
    return png if max_side is None else _shrunk(png, max_side)


def _shrunk(png: bytes, max_side: int) -> bytes:
    image = Image.open(io.BytesIO(png))
    if max(image.size) <= max_side:
        return png
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_type(data: bytes) -> str:
    if data.startswith(TIFF_MAGICS):
        return "image/tiff"
    return next((t for magic, t in IMAGE_TYPES if data.startswith(magic)), "application/octet-stream")


# ---------------------------------------------------------------------------------------------- routes


def get_review(request: Request) -> Review:
    review: Review = request.app.state.patchbank.review
    return review


ReviewDep = Annotated[Review, Depends(get_review)]
router = APIRouter(tags=["review"])


@router.get("/recent", response_model=RecentResponse)
async def recent(
    review: ReviewDep,
    since: Annotated[str | None, Query(max_length=4096, description="the cursor of the last answer")] = None,
    category: CategoryQuery = None,
    limit: LimitQuery = 100,
) -> RecentResponse:
    """The last decisions (after ``since``: the next ones, oldest first), each category's OK/NG counts over
    the last hour and its score histogram. With Redis: every replica's decisions."""
    return await review.view(since, category, limit)


RGB_TYPES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/tiff": {}, "application/octet-stream": {}}}
}


@router.get("/recent/{ident}/rgb", response_class=Response, responses=RGB_TYPES)
async def recent_rgb(review: ReviewDep, ident: str) -> Response:
    """A recent sample's RGB image as it was sent; 404 once its files are evicted."""
    kept = review.stored(ident)
    return Response(
        kept.rgb, media_type=image_type(kept.rgb), headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/recent/{ident}/map", response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def recent_map(
    review: ReviewDep,
    ident: str,
    kind: Annotated[Literal["overlay", "heatmap"], Query(description="over the image, or alone")] = "overlay",
    max_side: Annotated[int | None, Query(ge=16, le=4096, description="scale down to this, pixels")] = None,
) -> Response:
    """A recent sample's anomaly map as a PNG (over its image by default); 404 once evicted, or when it was
    scored with map=none."""
    kept = review.stored(ident)
    png = await anyio.to_thread.run_sync(render_map, kept, kind, max_side, limiter=review.render_limiter)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.post("/feedback", response_model=FeedbackRecord, status_code=201)
async def feedback(review: ReviewDep, ask: FeedbackRequest) -> FeedbackRecord:
    """A verdict on a recent decision (confirmed, false_alarm, missed_defect), stored with the sample's
    files for a later refresh of the bank; 404 when the decision is unknown or no longer kept."""
    return await review.give(ask)


@router.get("/feedback", response_model=FeedbackList)
async def feedback_records(review: ReviewDep, category: CategoryQuery = None, limit: LimitQuery = 100) -> Any:
    """Stored verdicts, newest first. With Redis: every replica's."""
    return await review.records(category, limit)
