"""The inspection console and the API docs, served by the service itself with no internet access.

A quality engineer opens ``/`` in a browser on the line's network: an overview of the loaded banks, a page to
inspect one part (its anomaly map over the image, defect regions, and its point cloud in 3D), the live
decisions of every line, and a review page where an operator confirms or corrects a decision. The pages are
static files (``static/console/``, plain HTML, CSS and JavaScript modules, no build step) calling the
service's own API with the operator's key; the third-party scripts they load (Swagger UI, Redoc, three.js)
are vendored under ``static/vendor/`` (see its README). The page files need no key; every answer with data
does.

Two small helpers serve the console: ``/console/colorbar.png``, the anomaly map's palette from
:func:`patchbank.regions.heatmap_png` itself (so the console's overlay and colour bar cannot drift from the
server's PNG maps), and ``/console/points``, a point cloud in a form a browser can draw.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from patchbank.clouds import Intrinsics, XyzUnit
from patchbank.data import has_split, list_samples
from patchbank.errors import NotFoundError, shorten
from patchbank.points.io import read_points
from patchbank.points.scorer import PointBankScorer
from patchbank.predict import Sample
from patchbank.preprocess import valid_points
from patchbank.regions import heatmap_png
from patchbank.report import render_report
from patchbank_service.limits import api_key
from patchbank_service.models import MAX_INTRINSICS

if TYPE_CHECKING:
    from patchbank_service.app import State

STATIC = Path(__file__).resolve().parent / "static"
VENDOR = "static/vendor"
MAX_POINTS = 50_000  # points sent to the browser's 3D view, at most

# Paths that need no API key: the pages and their files carry no data; what they show comes from API
# calls that send the operator's key.
PUBLIC_PATHS = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/redoc", "/console/colorbar.png"})
PUBLIC_PREFIXES = ("/static/",)

router = APIRouter()


class CloudPoints(BaseModel):
    """A point cloud's valid points, evenly subsampled, for the console's 3D view."""

    width: int = Field(description="columns of the organized cloud (pixels)")
    height: int = Field(description="rows of the organized cloud (pixels)")
    valid: int = Field(description="valid points in the cloud (finite, not (0, 0, 0))")
    count: int = Field(description=f"points sent: every valid point, or {MAX_POINTS} evenly spread ones")
    points: str = Field(description="base64 of little-endian float32 (count, 3) x, y, z in metres")
    pixels: str = Field(
        description="base64 of little-endian uint32 (count,): each point's pixel, row * width + column"
    )


def install(app: FastAPI) -> None:
    """Add the console, the offline API docs and the static files to ``app`` (built with no docs URLs)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _base(request: Request) -> str:
    """The service's URL prefix when it runs behind a proxy under a sub-path ('' otherwise)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/", include_in_schema=False)
async def console() -> FileResponse:
    """The inspection console."""
    return FileResponse(STATIC / "console" / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI, from the vendored files."""
    base = _base(request)
    return get_swagger_ui_html(
        openapi_url=base + str(request.app.openapi_url),
        title=f"{request.app.title} - API",
        swagger_js_url=f"{base}/{VENDOR}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{base}/{VENDOR}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{base}/{VENDOR}/swagger-ui/favicon-32x32.png",
        oauth2_redirect_url=base + "/docs/oauth2-redirect",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


# Redoc's sidebar always shows a logo from its vendor's CDN: this policy keeps the browser from asking for
# it (or anything else outside this server); the logo's place stays empty, as it would offline.
REDOC_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' blob:; worker-src 'self' blob:; font-src 'self' data:"
)


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    """Redoc, from the vendored file, without web fonts or anything else from outside."""
    base = _base(request)
    page = get_redoc_html(
        openapi_url=base + str(request.app.openapi_url),
        title=f"{request.app.title} - API reference",
        redoc_js_url=f"{base}/{VENDOR}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{base}/{VENDOR}/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = REDOC_POLICY
    return page


def colorbar_png() -> bytes:
    """A 256 x 1 PNG of the anomaly map's palette, left to right: 0 to twice the pixel threshold (the
    threshold at mid-scale), exactly as :func:`heatmap_png` colours a map: value k / 127.5 gets level k."""
    return heatmap_png((np.arange(256, dtype=np.float64) / 127.5)[None, :], 1.0)


_COLORBAR = colorbar_png()


@router.get("/console/colorbar.png", include_in_schema=False)
async def colorbar() -> Response:
    """The anomaly map's palette (see :func:`colorbar_png`)."""
    return Response(_COLORBAR, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@router.post("/console/points", response_model=CloudPoints, dependencies=[Depends(api_key)], tags=["console"])
async def points(
    request: Request,
    xyz: Annotated[UploadFile, File(description="point cloud, any format /score accepts")],
    category: Annotated[
        str | None, Form(description="its category: a depth image sent without intrinsics uses the bank's")
    ] = None,
    xyz_unit: Annotated[XyzUnit | None, Form(description="as for /score")] = None,
    intrinsics: Annotated[str | None, Form(max_length=MAX_INTRINSICS, description="as for /score")] = None,
) -> CloudPoints:
    """A point cloud's valid points in metres (at most 50 000, evenly spread) with each point's pixel, for
    the console's 3D view; the console colours each point by the anomaly map at its pixel. Decoded as
    ``/score`` decodes it, under the same limits. For a 3D-only bank's category the cloud is unorganized:
    ``height`` is 1, ``width`` the file's point count and a point's "pixel" its index in the file, where the
    answer's per-point scores are."""
    state: State = request.app.state.patchbank
    scorer = state.scorer(category) if category else None
    if isinstance(scorer, PointBankScorer):
        data = await xyz.read()
        with state.admit():
            return await state.in_thread(unorganized_points, data, xyz.filename, state.settings.max_points)
    bank_camera = scorer.bank.manifest.intrinsics if scorer else None
    sample = Sample(
        b"",
        await xyz.read(),
        xyz.filename,
        max_pixels=state.settings.max_pixels,
        intrinsics=Intrinsics.from_json(intrinsics) if intrinsics else None,
        xyz_unit=xyz_unit,
    )
    with state.admit():
        return await state.in_thread(cloud_points, sample, bank_camera)


MAX_SAMPLES = 500  # parts the Inspect page lists from the configured folder


class FolderSample(BaseModel):
    """A part of the configured sample folder: its files as paths relative to that folder."""

    category: str
    name: str = Field(description="split/kind/NNN, e.g. test/hole/000")
    rgb: str
    xyz: str


def _sample_folder(state: State) -> Path:
    root = state.settings.console_samples
    if root is None:
        raise NotFoundError("no sample folder is configured (PATCHBANK_CONSOLE_SAMPLES)")
    return root.resolve()


@router.get(
    "/console/samples", response_model=list[FolderSample], dependencies=[Depends(api_key)], tags=["console"]
)
async def samples(request: Request) -> list[FolderSample]:
    """The test parts of the configured sample folder, for the loaded categories (at most 500)."""
    state: State = request.app.state.patchbank
    root = _sample_folder(state)
    found: list[FolderSample] = []
    for category in state.loaded.categories():
        if not has_split(root, category, "test"):
            continue
        for ref in list_samples(root, category, "test"):
            rel = (str(ref.rgb.relative_to(root)), str(ref.xyz.relative_to(root)))
            found.append(FolderSample(category=category, name=ref.name, rgb=rel[0], xyz=rel[1]))
    return found[:MAX_SAMPLES]


@router.get("/console/samples/file", dependencies=[Depends(api_key)], tags=["console"])
async def sample_file(request: Request, path: str) -> FileResponse:
    """One file of the sample folder, by its path relative to the folder; nothing outside it."""
    root = _sample_folder(request.app.state.patchbank)
    target = (root / path).resolve()
    if (
        not target.is_relative_to(root)
        or not target.is_file()
        or target.suffix.lower() not in SAMPLE_SUFFIXES
    ):
        raise NotFoundError(f"no sample file {shorten(path)} in the sample folder")
    return FileResponse(target, filename=target.name)


# Errors of an HTML route are still JSON (the app's error handlers): said so, or the docs would claim HTML.
JSON_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": "what was wrong",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for code in (400, 401, 403, 404, 409, 413, 422, 503)
}


@router.get(
    "/console/report/{category}",
    response_class=HTMLResponse,
    responses=JSON_ERRORS,
    dependencies=[Depends(api_key)],
    tags=["console"],
)
async def report(request: Request, category: str) -> HTMLResponse:
    """The evaluation report of a category's loaded bank, drawn from the evaluation the bank recorded when it
    was built (figures, per-defect table, ROC curves, score distributions): a self-contained HTML page,
    cached per bank version; it scores nothing."""
    state: State = request.app.state.patchbank
    manifest = state.scorer(category).bank.manifest
    if manifest.evaluation is None:
        raise NotFoundError(f"bank {manifest.category}/{manifest.version} was built without an evaluation")
    cache: dict[tuple[str, str], str] = request.app.state.__dict__.setdefault("reports", {})
    key = (manifest.category, manifest.version)
    if key not in cache:
        title = f"{manifest.category} {manifest.version} ({manifest.method})"
        cache[key] = await state.in_thread(
            render_report, title, manifest.evaluation, None, manifest.thresholds.pixel
        )
    return HTMLResponse(cache[key])


SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".ply", ".pcd")


def cloud_points(sample: Sample, bank_camera: Intrinsics | None, limit: int = MAX_POINTS) -> CloudPoints:
    """Decode ``sample``'s cloud and keep at most ``limit`` of its valid points, evenly spread in pixel
    order (so the view keeps the part's whole surface)."""
    xyz = sample.cloud(bank_camera)  # (H, W, 3) float32 metres
    valid = np.flatnonzero(valid_points(xyz) & np.isfinite(xyz).all(axis=-1))
    return _spread(xyz, valid, limit)


def unorganized_points(
    data: bytes, filename: str | None, max_points: int, limit: int = MAX_POINTS
) -> CloudPoints:
    """An unorganized cloud (a 3D-only bank's) as one row: each point's "pixel" is its index in the file."""
    xyz = read_points(data, filename, "xyz", max_points)[None]  # (1, N, 3)
    return _spread(xyz, np.flatnonzero(np.isfinite(xyz[0]).all(axis=-1)), limit)


def _spread(xyz: np.ndarray, valid: np.ndarray, limit: int) -> CloudPoints:
    """At most ``limit`` of the ``valid`` points of an (H, W, 3) cloud, evenly spread in pixel order."""
    h, w, _ = xyz.shape
    keep = valid
    if len(valid) > limit:
        keep = valid[np.linspace(0, len(valid) - 1, limit).round().astype(np.int64)]
    coords = np.ascontiguousarray(xyz.reshape(-1, 3)[keep], dtype="<f4")
    return CloudPoints(
        width=w,
        height=h,
        valid=len(valid),
        count=len(keep),
        points=base64.b64encode(coords.tobytes()).decode(),
        pixels=base64.b64encode(keep.astype("<u4").tobytes()).decode(),
    )
