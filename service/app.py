"""The FastAPI app: thin routes over shared state (settings, loaded banks, metrics) given as dependencies.

Errors are typed exceptions (the :class:`PatchbankError` family) mapped to status codes in one place.
Scoring runs in worker threads (never on the event loop), at most ``concurrency`` samples at once with at
most ``queue_size`` waiting; every sample of a batch counts, and a request that cannot be admitted whole is
answered 503 with ``Retry-After`` at once. Concurrent single-sample requests for one bank are batched
(``max_batch``, see :mod:`patchbank_service.batching`). API keys and the body's size are checked before the
body is read (:mod:`patchbank_service.limits`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field

from patchbank import bank as bankfmt
from patchbank.clouds import Intrinsics, XyzUnit
from patchbank.config import require, weights_override
from patchbank.drift import DriftStats, drift_stats
from patchbank.errors import (
    BankError,
    InputError,
    NotFoundError,
    PatchbankError,
    PayloadTooLargeError,
    WeightsError,
    redact,
)
from patchbank.loaded import LoadedBanks
from patchbank.points.scorer import PointBankScorer
from patchbank.predict import Sample
from patchbank.recall import RecallSummary
from patchbank.scorer import BankScorer
from patchbank_service import console
from patchbank_service.batching import Batcher
from patchbank_service.feedback import FeedbackNotStored
from patchbank_service.limits import BodyLimit, KeyGate, api_key, key_ok
from patchbank_service.models import (
    MAX_INTRINSICS,
    MAX_SAMPLE_ID,
    BatchResponse,
    CategoriesResponse,
    CategoryInfo,
    DriftInfo,
    ErrorResponse,
    Health,
    MapFormat,
    MemberInfo,
    Readiness,
    RecallInfo,
    ScoreResponse,
)
from patchbank_service.observability import Metrics
from patchbank_service.points import CloudUpload, score_clouds
from patchbank_service.recall import RecallKeeper
from patchbank_service.replicas import IdempotencyConflict, ReplicaLink, request_digest
from patchbank_service.review import Review
from patchbank_service.review import router as review_router
from patchbank_service.scoring import score_samples
from patchbank_service.settings import ServiceSettings

log = logging.getLogger("patchbank.service")
T = TypeVar("T")


class Busy(PatchbankError):
    """The scoring queue is full."""


class Unauthorized(PatchbankError):
    """Missing or wrong X-API-Key."""


class Forbidden(PatchbankError):
    """An admin route while no admin key is configured (and admin routes are not opened)."""


class NotReady(PatchbankError):
    """Banks are still loading."""


STATUS: list[tuple[type[Exception], int]] = [
    (NotFoundError, 404),
    (PayloadTooLargeError, 413),
    (InputError, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (Busy, 503),
    (NotReady, 503),
    (FeedbackNotStored, 503),
    (IdempotencyConflict, 409),
    (BankError, 409),
    (WeightsError, 409),
    (PatchbankError, 400),
]


class State:
    """What every request shares: settings, the loaded banks, metrics, and the admission counter."""

    def __init__(self, settings: ServiceSettings, loaded: LoadedBanks) -> None:
        self.settings = settings
        self.loaded = loaded
        self.metrics = Metrics()
        self.limiter = anyio.CapacityLimiter(settings.concurrency)
        self.admitted = 0
        self.ready = False
        self.replicas: ReplicaLink | None = None
        if settings.redis_url:
            self.replicas = ReplicaLink(
                settings.redis_url,
                loaded,
                loaded.banks,
                self.metrics,
                settings.sync_interval_s,
                settings.stream_maxlen,
                settings.idempotency_ttl_s,
            )
        # recent decisions and feedback (GET /recent)
        self.review = Review(settings, loaded, self.replicas, self.metrics)
        self.recall = RecallKeeper(  # which bank vectors parts decided OK matched (a living bank's memory)
            settings.recall_dir or loaded.banks / ".recall",
            self.review.recent.replica,
            None if self.replicas is None else self.replicas.client,
            settings.recall_flush_s,
        )
        self.score_samples = partial(score_samples, max_map_side=settings.max_map_side, recall=self.recall)
        self.batcher = None
        if settings.max_batch > 1:
            self.batcher = Batcher(
                self.in_thread, settings.max_batch, self.metrics.batch_size.observe, self.score_samples
            )

    def load(self) -> None:
        """Load every bank, warm the extractors up, then turn ready (runs in a thread at start-up)."""
        self.loaded.load_all()
        self.loaded.warm_up()
        self.recall.start()
        if self.replicas is not None:
            self.replicas.start()
        self.ready = True
        log.info("ready", extra={"categories": self.loaded.categories(), "errors": self.loaded.errors})

    def unready_reasons(self) -> list[str]:
        """Why this replica cannot take traffic: still loading, no bank loaded, a required bank missing."""
        if not self.ready:
            return ["banks are still loading"]
        loaded, errors = self.loaded.categories(), self.errors()
        failed = (
            f"{len(errors)} failed to load, see /categories" if errors else "the banks directory has none"
        )
        reasons = [] if loaded else [f"no bank is loaded ({failed})"]
        for category in self.settings.required_categories:
            if category not in loaded:
                why = errors.get(category, "no bank for it under the banks directory")
                reasons.append(f"required category {category} is not loaded: {why}")
        return reasons

    def errors(self) -> dict[str, str]:
        """The banks that failed to load and why, fit for a client (paths relative to the banks directory)."""
        root = str(self.loaded.banks.resolve())
        return {category: redact(why, root) for category, why in self.loaded.errors.items()}

    def scorer(self, category: str) -> BankScorer | PointBankScorer:
        """The category's scorer; 503 while banks are still loading (not a misleading 404)."""
        if not self.ready:
            raise NotReady("banks are still loading; retry shortly")
        return self.loaded.get(category)

    @contextmanager
    def admit(self, samples: int = 1) -> Iterator[None]:
        """Count ``samples`` in for as long as they run or wait; refuse at once when they do not all fit."""
        capacity = self.settings.concurrency + self.settings.queue_size
        if self.admitted + samples > capacity:
            self.metrics.rejected.inc()
            raise Busy(
                f"scoring queue is full ({self.admitted} of {capacity} samples admitted, {samples} asked); "
                "retry shortly"
            )
        self.admitted += samples
        self.metrics.queue_depth.set(self.admitted)
        try:
            yield
        finally:
            self.admitted -= samples
            self.metrics.queue_depth.set(self.admitted)

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU/GPU work in a worker thread, at most ``concurrency`` at once."""
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter)

    async def score_cloud(
        self, scorer: PointBankScorer, upload: CloudUpload, per_point: bool
    ) -> ScoreResponse:
        """One cloud of a 3D-only bank (not batched: a cloud is a pass of its own)."""
        with self.admit():
            self.metrics.batch_size.observe(1)
            results = await self.in_thread(
                score_clouds, scorer, [upload], per_point, self.settings.max_points
            )
            return results[0]

    async def score_one(self, scorer: BankScorer, upload: Sample, fmt: MapFormat) -> ScoreResponse:
        """One sample, batched with concurrent requests for the same bank when ``max_batch`` > 1."""
        with self.admit():
            if self.batcher is None:
                self.metrics.batch_size.observe(1)
                return (await self.in_thread(self.score_samples, scorer, [upload], fmt))[0]
            return await self.batcher.score(scorer, upload, fmt)


def get_state(request: Request) -> State:
    return request.app.state.patchbank


StateDep = Annotated[State, Depends(get_state)]


XYZ_HELP = (
    "organized point cloud: xyz TIFF or .npy (H x W x 3, metres unless xyz_unit), organized PLY or PCD, or a "
    "depth image (16-bit PNG, float TIFF, H x W .npy) with intrinsics"
)
UNIT_HELP = "unit of an xyz cloud's coordinates: m (default), mm or um; converted to metres"
INTRINSICS_HELP = (
    'a depth image\'s camera as JSON, e.g. {"fx": 240, "fy": 240, "cx": 79.5, "cy": 59.5, "depth_scale": '
    "0.001}; default: the intrinsics stored in the bank"
)

# Paths that need no API key; every other path is checked by KeyGate from the headers alone.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"}) | console.PUBLIC_PATHS  # and /static/...


def require_admin(state: StateDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Admin routes need an admin key; with no key configured they are closed unless opened explicitly."""
    keys = state.settings.admins
    if not keys:
        if state.settings.open_admin:
            return
        raise Forbidden(
            "admin routes are closed: set PATCHBANK_ADMIN_KEYS (or PATCHBANK_API_KEYS) and send one as "
            "X-API-Key, or set PATCHBANK_OPEN_ADMIN=true on a trusted network"
        )
    if not key_ok(x_api_key, keys):
        raise Unauthorized("reloading a bank needs an admin API key (X-API-Key header)")


def category_info(scorer: BankScorer | PointBankScorer) -> CategoryInfo:
    m = scorer.bank.manifest
    return CategoryInfo(
        name=m.category,
        input=m.input,
        method=m.method,
        bank_version=m.version,
        bank_size=sum(len(ix) for ix in scorer.bank.indices),
        dim=sum(member.features.dim for member in m.members),
        members=[
            MemberInfo(name=member.name, bank_size=len(ix), dim=member.features.dim)
            for member, ix in zip(m.members, scorer.bank.indices, strict=True)
        ],
        fusion=m.fusion.rule if m.fusion else None,
        threshold=m.thresholds.image,
        pixel_threshold=m.thresholds.pixel,
        calibration=m.calibration.model_dump() if m.calibration else None,
        evaluation=m.evaluation,
    )


def drift_of(state: State, scorer: BankScorer) -> DriftStats:
    """The drift statistics of a bank from this replica's recent decisions (the active version's OK ones)."""
    m = scorer.bank.manifest
    decisions, _, _ = state.review.recent.since(None, m.category, state.review.recent.size)
    recent = [d.image_score for d in decisions if d.decision == "OK" and d.bank_version == m.version]
    return drift_stats(recent, m.score_stats.image_scores, m.thresholds.image)


def recall_info(scorer: BankScorer, summary: RecallSummary, source: str) -> RecallInfo:
    m = scorer.bank.manifest
    names = {0.5: "p50", 0.9: "p90", 1.0: "max"}
    return RecallInfo(
        category=m.category,
        bank_version=m.version,
        source=source,  # type: ignore[arg-type]
        vectors=summary.vectors,
        recalled=summary.recalled,
        recalled_fraction=summary.recalled_fraction,
        recalls=summary.recalls,
        age_s={names[q]: age for q, age in summary.age_s.items()},
    )


def create_app(settings: ServiceSettings | None = None, loaded: LoadedBanks | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    if loaded is None:
        from patchbank.config import default_device

        banks = require(settings.banks, "banks directory", "--banks", "PATCHBANK_BANKS")
        loaded = LoadedBanks(banks, default_device(settings.device), weights_override(settings.weights))
    state = State(settings, loaded)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(anyio.to_thread.run_sync(state.load))
        yield
        if not loading.done():
            loading.cancel()
        await anyio.to_thread.run_sync(state.recall.stop)  # the last recalls written (and pushed) first
        if state.replicas is not None:
            await anyio.to_thread.run_sync(state.replicas.stop)
            await state.replicas.aclose()

    errors = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 503)}
    app = FastAPI(
        title="Patchbank",
        summary="Anomaly scoring of RGB + 3D inspection samples against memory banks of good parts",
        version="0.1.0",
        lifespan=lifespan,
        responses=errors,
        docs_url=None,  # /docs and /redoc come from patchbank_service.console, with vendored assets
        redoc_url=None,
    )
    app.state.patchbank = state
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    keys = list(dict.fromkeys(settings.api_keys + settings.admins))  # an admin key may also score
    public = PUBLIC_PATHS | {"/openapi.json"}
    app.add_middleware(KeyGate, keys=keys, public=public, public_prefixes=console.PUBLIC_PREFIXES)
    _install_handlers(app, state)
    _install_routes(app)
    app.include_router(review_router, dependencies=[Depends(api_key)])
    console.install(app)  # the console, the API docs and their static files
    return app


def _install_handlers(app: FastAPI, state: State) -> None:
    @app.exception_handler(PatchbankError)
    async def product_error(request: Request, exc: PatchbankError) -> JSONResponse:
        status = next(code for cls, code in STATUS if isinstance(exc, cls))
        headers = {"Retry-After": "1"} if status == 503 else None
        detail = redact(str(exc), str(state.loaded.banks.resolve()))
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "header", "path"))
            reasons.append(
                f"missing field: {field}" if err["type"] == "missing" else f"{field}: {err['msg']}"
            )
        return JSONResponse({"detail": "; ".join(reasons)}, status_code=422)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        state.metrics.requests.labels(route=path, status=str(response.status_code)).inc()
        return response


def _install_routes(app: FastAPI) -> None:
    @app.post("/score", response_model=ScoreResponse, dependencies=[Depends(api_key)], tags=["scoring"])
    async def score(
        state: StateDep,
        request: Request,
        xyz: Annotated[UploadFile, File(description=XYZ_HELP)],
        rgb: Annotated[
            UploadFile | None,
            File(description="RGB image: PNG, JPEG or TIFF (required, except by a 3D-only bank)"),
        ] = None,
        category: Annotated[str | None, Form(description="category of the part, e.g. cable_gland")] = None,
        xyz_unit: Annotated[XyzUnit | None, Form(description=UNIT_HELP)] = None,
        intrinsics: Annotated[
            str | None, Form(max_length=MAX_INTRINSICS, description=INTRINSICS_HELP)
        ] = None,
        map: Annotated[
            MapFormat | None,
            Form(description="none, png (heatmap), overlay (the heatmap over the image) or array (float16)"),
        ] = None,
        sample_id: Annotated[
            str | None, Form(max_length=MAX_SAMPLE_ID, description="the line's id of this part, echoed back")
        ] = None,
        idempotency_key: Annotated[
            str | None,
            Header(max_length=MAX_SAMPLE_ID, description="with Redis: a retry gets the same answer"),
        ] = None,
    ) -> Any:
        """Score one sample: image score, OK/NG decision, defect regions and the anomaly map. A 3D-only bank
        takes one unorganized cloud (PCD or PLY) and no rgb, and answers one score per point (``points``)."""
        start = time.perf_counter()
        await _sent_once(request, ("category", "rgb", "xyz", "map", "sample_id", "xyz_unit", "intrinsics"))
        scorer = state.scorer(category or "")
        name = scorer.bank.manifest.category
        run: Callable[[], Awaitable[ScoreResponse]]
        if isinstance(scorer, PointBankScorer):
            if rgb is not None:
                raise InputError(f"category {name} is a 3D-only bank: send xyz only")
            fmt: MapFormat = map or "array"
            cloud = CloudUpload(await xyz.read(), xyz.filename, sample_id)
            keyed: tuple[Any, ...] = (None, None, b"", cloud.xyz)
            run, kept = partial(state.score_cloud, scorer, cloud, fmt != "none"), None
        else:
            if rgb is None:
                raise InputError(f"field rgb is required: category {name} scores RGB + 3D")
            upload = Sample(
                await rgb.read(),
                await xyz.read(),
                xyz.filename,
                sample_id,
                max_pixels=state.settings.max_pixels,
                intrinsics=Intrinsics.from_json(intrinsics) if intrinsics else None,
                xyz_unit=xyz_unit,
            )
            fmt = map or state.settings.default_map
            keyed = (xyz_unit, intrinsics, upload.rgb, upload.xyz)
            run, kept = partial(state.score_one, scorer, upload, fmt), upload
        digest = None
        if idempotency_key and state.replicas is not None:
            digest = request_digest(name, fmt, sample_id, *keyed)
            stored = await state.replicas.recall(idempotency_key, digest, name, sample_id)
            if stored is not None:
                return stored
        result = await run()
        _observe(state, [result], start, [kept])
        if digest is not None and state.replicas is not None:
            await state.replicas.remember(idempotency_key or "", digest, result)
        return result

    @app.post("/score/batch", response_model=BatchResponse, dependencies=[Depends(api_key)], tags=["scoring"])
    async def score_batch(
        state: StateDep,
        request: Request,
        rgb: Annotated[list[UploadFile], File(description="RGB images, in order")],
        xyz: Annotated[list[UploadFile], File(description="point clouds, same count and order")],
        category: Annotated[str | None, Form()] = None,
        xyz_unit: Annotated[XyzUnit | None, Form(description="as for /score, for every sample")] = None,
        intrinsics: Annotated[
            str | None, Form(max_length=MAX_INTRINSICS, description="as for /score, for every sample")
        ] = None,
        map: Annotated[MapFormat | None, Form()] = None,
        sample_id: Annotated[list[Annotated[str, Field(max_length=MAX_SAMPLE_ID)]] | None, Form()] = None,
    ) -> BatchResponse:
        """Score several samples of one category in one request (one backbone pass); answers in order. Every
        sample counts against the scoring queue: a batch that does not fit whole is answered 503 at once."""
        start = time.perf_counter()
        await _sent_once(request, ("category", "map", "xyz_unit", "intrinsics"))
        if len(rgb) != len(xyz):
            raise InputError(f"batch has {len(rgb)} rgb files but {len(xyz)} xyz files")
        if sample_id is not None and len(sample_id) != len(rgb):
            raise InputError(f"batch has {len(rgb)} samples but {len(sample_id)} sample_id values")
        if len(rgb) > state.settings.batch_cap:
            raise PayloadTooLargeError(
                f"batch has {len(rgb)} samples; the limit is {state.settings.batch_cap} "
                "(PATCHBANK_MAX_BATCH_SAMPLES): send them in several requests"
            )
        scorer = state.scorer(category or "")
        if isinstance(scorer, PointBankScorer):
            raise InputError(
                f"category {scorer.bank.manifest.category} is a 3D-only bank: it takes no batches, send each "
                "cloud in a score request of its own"
            )
        camera = Intrinsics.from_json(intrinsics) if intrinsics else None
        with state.admit(len(rgb)):
            ids = sample_id or [None] * len(rgb)
            uploads = [
                Sample(
                    await r.read(),
                    await x.read(),
                    x.filename,
                    i,
                    max_pixels=state.settings.max_pixels,
                    intrinsics=camera,
                    xyz_unit=xyz_unit,
                )
                for r, x, i in zip(rgb, xyz, ids, strict=True)
            ]
            state.metrics.batch_size.observe(len(uploads))
            fmt = map or state.settings.default_map
            results = await state.in_thread(state.score_samples, scorer, uploads, fmt)
        _observe(state, results, start, uploads)
        return BatchResponse(results=results)

    @app.get(
        "/categories", response_model=CategoriesResponse, dependencies=[Depends(api_key)], tags=["banks"]
    )
    async def categories(state: StateDep) -> CategoriesResponse:
        """Every loaded category with its bank, and the banks that failed to load."""
        infos = [category_info(state.loaded.get(c)) for c in state.loaded.categories()]
        return CategoriesResponse(categories=infos, errors=state.errors())

    @app.get(
        "/categories/{name}", response_model=CategoryInfo, dependencies=[Depends(api_key)], tags=["banks"]
    )
    async def category(state: StateDep, name: str) -> CategoryInfo:
        """One loaded category: method, bank size, dimension, version, thresholds, evaluation figures."""
        return category_info(state.loaded.get(name))

    @app.get(
        "/categories/{name}/recall",
        response_model=RecallInfo,
        dependencies=[Depends(api_key)],
        tags=["banks"],
    )
    async def recall(state: StateDep, name: str) -> RecallInfo:
        """How much of the category's active bank parts decided OK have recalled (matched) since it was built,
        and how long ago: every replica's counts (Redis, else the replicas' files)."""
        scorer = state.scorer(name)
        stats, source = await anyio.to_thread.run_sync(state.recall.merged, scorer)
        return recall_info(scorer, stats.summary(time.time()), source)

    @app.get(
        "/categories/{name}/drift",
        response_model=DriftInfo,
        dependencies=[Depends(api_key)],
        tags=["banks"],
    )
    async def drift(state: StateDep, name: str) -> DriftInfo:
        """Whether the line drifts: the recent OK scores against the calibration goods' (KS test, median
        shift) and the reviewed parts' false-alarm rate. The same figures are Prometheus metrics."""
        scorer = state.scorer(name)
        stats = drift_of(state, scorer)
        records = await anyio.to_thread.run_sync(
            state.review.feedback.newest, name, state.settings.feedback_keep
        )
        on_ng = [r for r in records if r.decision.decision == "NG"]
        false_alarms = sum(r.verdict == "false_alarm" for r in on_ng)
        return DriftInfo(
            category=name,
            bank_version=scorer.bank.manifest.version,
            **vars(stats),
            reviewed_ng=len(on_ng),
            false_alarms=false_alarms,
            reviewed_false_alarm_rate=false_alarms / len(on_ng) if on_ng else None,
        )

    @app.post(
        "/categories/{name}/reload",
        response_model=CategoryInfo,
        dependencies=[Depends(require_admin)],
        tags=["banks"],
    )
    async def reload(state: StateDep, name: str) -> CategoryInfo:
        """Load the category's active bank again (e.g. after build-bank); the old bank serves until then."""
        if name not in bankfmt.list_categories(state.loaded.banks):
            raise NotFoundError(f"no bank directory for category {name!r} under the banks directory")
        scorer = await anyio.to_thread.run_sync(state.loaded.reload, name)
        return category_info(scorer)

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is alive."""
        return Health()

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, tags=["health"])
    async def readyz(state: StateDep) -> Any:
        """200 when this replica can score: its banks loaded, at least one, and every required one (setting
        ``required_categories``); else 503 with the reasons. ``/healthz`` says only that it is alive."""
        replicas = state.replicas
        reasons = state.unready_reasons()
        body = Readiness(
            status="loading" if not state.ready else ("not ready" if reasons else "ready"),
            categories=state.loaded.categories(),
            reasons=reasons,
            redis="off" if replicas is None else ("unreachable" if replicas.degraded else "ok"),
            degraded=replicas is not None and replicas.degraded,
        )
        return JSONResponse(body.model_dump(), status_code=503 if body.status != "ready" else 200)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    async def metrics(state: StateDep) -> Response:
        """Prometheus metrics."""
        if state.ready:
            for name in state.loaded.categories():
                stats = drift_of(state, state.loaded.get(name))
                if stats.ks is not None and stats.shift is not None:
                    state.metrics.drift_ks.labels(category=name).set(stats.ks)
                    state.metrics.drift_shift.labels(category=name).set(stats.shift)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _sent_once(request: Request, names: tuple[str, ...]) -> None:
    """400 when a field that takes one value came more than once: a second ``rgb`` must not silently
    replace the first (the form is parsed already; this reads FastAPI's parsed copy)."""
    form = await request.form()
    for name in names:
        if (count := len(form.getlist(name))) > 1:
            raise InputError(f"field {name} was sent {count} times; send it once")


def _observe(state: State, results: list[ScoreResponse], start: float, uploads: list[Sample | None]) -> None:
    latency_ms = (time.perf_counter() - start) * 1000.0
    m = state.metrics
    t = results[0].timings_ms
    for stage in ("decode", "features", "search", "post"):
        m.stage_seconds.labels(stage=stage).observe(getattr(t, stage) / 1000.0)
    m.stage_seconds.labels(stage="total").observe(latency_ms / 1000.0)
    now = time.time()
    for r, upload in zip(results, uploads, strict=True):
        r.timings_ms.total = latency_ms
        recorded = state.review.record(r, upload, latency_ms, now)
        if state.review.auto_accept_below is not None:
            calibration = state.loaded.get(r.category).bank.manifest.score_stats.image_scores
            state.review.auto_accept(recorded, calibration)
        if state.replicas is not None:
            state.replicas.record_score(recorded.to_event())
        decision = "NG" if r.is_anomalous else "OK"
        m.image_score.labels(category=r.category).observe(r.image_score)
        m.decisions.labels(category=r.category, decision=decision).inc()
        log.info(
            "scored",
            extra={
                "sample_id": r.sample_id,
                "category": r.category,
                "bank_version": r.bank_version,
                "score": round(r.image_score, 6),
                "decision": decision,
                "latency_ms": round(latency_ms, 2),
            },
        )
