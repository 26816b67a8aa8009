"""The HTTP client and the ``score`` CLI against a stub of the service contract under real uvicorn, and the
point cloud options (formats, ``xyz_unit``, ``intrinsics``) against the real service.

The stub decodes what arrives (PNG with Pillow, TIFF with tifffile, .npy with np.load) and echoes it back
(image_score = mean of the xyz z values, plus an ``echo`` object), so the tests see that array, bytes and path
inputs reach the server intact.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.datastructures import FormData, UploadFile

from patchbank.cloud_write import encode_cloud
from patchbank.clouds import Intrinsics
from patchbank.data import list_samples
from patchbank_builder.build import BuildResult
from patchbank_client import (
    APIError,
    AsyncPatchbankClient,
    BadRequest,
    CategoryInfo,
    Conflict,
    ConnectionFailed,
    NotFound,
    PatchbankClient,
    PatchbankClientError,
    PayloadTooLarge,
    ScoreResult,
    ServiceUnavailable,
    Unauthorized,
    UnexpectedResponse,
)
from patchbank_client.cli import find_samples, main
from patchbank_client.client import _ClientCore, _parse_retry_after
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY

ROOT = Path(__file__).resolve().parents[2]
H, W = 12, 16

# --------------------------------------------------------------------------------------------------- stub

CALLS: Counter[str] = Counter()
STATE = {"flaky_failures": 2}
KNOWN = {"puck", "secret", "huge", "flaky", "busy", "invalid", "garbled"}
API_KEY = "k1"


def _info(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "method": "fpfh",
        "bank_version": "v0001",
        "bank_size": 1000,
        "dim": 33,
        "threshold": 15.0,
        "pixel_threshold": 14.2,
        "evaluation": {"image_auroc": 0.9} if name == "puck" else None,
    }


def _gate(request: Request, category: str, idempotency_key: str | None = None) -> None:
    """The error answers of the contract, chosen by category name."""
    CALLS[category] += 1
    if category == "secret" and request.headers.get("x-api-key") != API_KEY:
        raise HTTPException(401, "missing or invalid API key")
    if category not in KNOWN:
        raise HTTPException(404, f"unknown category {category!r}")
    if category == "huge":
        raise HTTPException(413, "upload is over the 1 MiB limit")
    if category == "flaky" and CALLS[category] <= STATE["flaky_failures"]:
        raise HTTPException(503, "bank is loading", headers={"Retry-After": "0"})
    if category == "busy":
        raise HTTPException(503, "too many requests in flight")
    if idempotency_key == "used":
        raise HTTPException(409, "Idempotency-Key was used with another request")


async def _decode(rgb: UploadFile, xyz: UploadFile) -> tuple[np.ndarray, np.ndarray]:
    try:
        rgb_arr = np.asarray(Image.open(io.BytesIO(await rgb.read())))
    except Exception as exc:
        raise HTTPException(400, f"rgb is not an image: {exc}") from exc
    data = await xyz.read()
    try:
        if (xyz.filename or "").endswith(".npy"):
            xyz_arr = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            xyz_arr = tifffile.imread(io.BytesIO(data))
    except Exception as exc:
        raise HTTPException(400, f"xyz is not a TIFF or .npy file: {exc}") from exc
    return rgb_arr, xyz_arr


def _answer(
    category: str,
    rgb: np.ndarray,
    xyz: np.ndarray,
    names: tuple[str | None, str | None],
    map_format: str,
    sample_id: str | None,
    request: Request,
    form: FormData,
) -> dict[str, Any]:
    z = xyz[..., 2].astype(np.float32)
    h, w = z.shape
    score = float(z.mean())
    anomaly_map: dict[str, Any] | None = None
    if map_format == "array":
        raw = z.astype("<f2").tobytes()
        anomaly_map = {
            "format": "array",
            "dtype": "float16",
            "shape": [h, w],
            "data": base64.b64encode(raw).decode(),
        }
    elif map_format == "png":
        buf = io.BytesIO()
        Image.fromarray(rgb).convert("L").save(buf, format="PNG")
        anomaly_map = {
            "format": "png",
            "width": w,
            "height": h,
            "data": base64.b64encode(buf.getvalue()).decode(),
        }
    return {
        "category": category,
        "bank_version": "v0001",
        "sample_id": sample_id,
        "image_score": score,
        "threshold": 15.0,
        "pixel_threshold": 14.2,
        "is_anomalous": score > 15.0,
        "anomaly_map": anomaly_map,
        "regions": [{"bbox": [1, 2, w - 1, h - 1], "area_px": 42, "peak_score": float(z.max())}],
        "timings_ms": {"decode": 1.0, "features": 2.0, "search": 3.0, "post": 0.5, "total": 6.5},
        # Not in the contract: lets the tests see what arrived (and that unknown fields are kept).
        "echo": {
            "rgb_shape": list(rgb.shape),
            "rgb_sum": int(rgb.astype(np.int64).sum()),
            "xyz_shape": list(xyz.shape),
            "xyz_dtype": str(xyz.dtype),
            "rgb_filename": names[0],
            "xyz_filename": names[1],
            "api_key": request.headers.get("x-api-key"),
            "idempotency_key": request.headers.get("idempotency-key"),
            "xyz_unit": form.get("xyz_unit"),
            "intrinsics": form.get("intrinsics"),
        },
    }


def _upload(value: Any, field: str) -> UploadFile:
    if not isinstance(value, UploadFile):
        raise HTTPException(422, [{"loc": ["body", field], "msg": "Field required", "type": "missing"}])
    return value


APP = FastAPI()


@APP.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@APP.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


@APP.post("/score")
async def score(request: Request) -> Any:
    async with request.form() as form:
        return await _score_form(request, form)


async def _score_form(request: Request, form: FormData) -> Any:
    category = str(form.get("category", ""))
    if category == "invalid":
        raise HTTPException(422, [{"loc": ["body", "category"], "msg": "Field required", "type": "missing"}])
    _gate(request, category, request.headers.get("idempotency-key"))
    if category == "garbled":
        return {"category": category}
    rgb_up, xyz_up = _upload(form.get("rgb"), "rgb"), _upload(form.get("xyz"), "xyz")
    rgb, xyz = await _decode(rgb_up, xyz_up)
    sample_id = form.get("sample_id")
    return _answer(
        category,
        rgb,
        xyz,
        (rgb_up.filename, xyz_up.filename),
        str(form.get("map", "png")),
        None if sample_id is None else str(sample_id),
        request,
        form,
    )


@APP.post("/score/batch")
async def score_batch(request: Request) -> Any:
    async with request.form() as form:
        return await _batch_form(request, form)


async def _batch_form(request: Request, form: FormData) -> Any:
    category = str(form.get("category", ""))
    _gate(request, category)
    rgbs = [_upload(v, "rgb") for v in form.getlist("rgb")]
    xyzs = [_upload(v, "xyz") for v in form.getlist("xyz")]
    ids = [str(v) for v in form.getlist("sample_id")]
    if len(rgbs) != len(xyzs) or (ids and len(ids) != len(rgbs)):
        raise HTTPException(400, "rgb, xyz and sample_id counts differ")
    results = []
    for i, (rgb_up, xyz_up) in enumerate(zip(rgbs, xyzs, strict=True)):
        rgb, xyz = await _decode(rgb_up, xyz_up)
        sid = ids[i] if ids else None
        names = (rgb_up.filename, xyz_up.filename)
        results.append(_answer(category, rgb, xyz, names, str(form.get("map", "png")), sid, request, form))
    return {"results": results}


@APP.get("/categories")
async def categories() -> dict[str, Any]:
    return {"categories": [_info("puck"), _info("flaky")]}


@APP.get("/categories/{name}")
async def category(name: str, request: Request) -> Any:
    if name not in KNOWN:
        return JSONResponse({"detail": f"unknown category {name!r}"}, status_code=404)
    return _info(name)


@APP.post("/categories/{name}/reload")
async def reload(name: str, request: Request) -> Any:
    if request.headers.get("x-api-key") != "admin":
        raise HTTPException(401, "reload needs the admin key")
    return {**_info(name), "bank_version": "v0002"}


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    config = uvicorn.Config(APP, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the stub server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _reset_stub() -> None:
    CALLS.clear()
    STATE["flaky_failures"] = 2


@pytest.fixture
def closed_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _xyz(seed: int = 0, z: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    xyz = rng.normal(0.0, 0.1, size=(H, W, 3)).astype(np.float32)
    xyz[..., 2] += z
    return xyz


def _png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _tiff_bytes(xyz: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, xyz, photometric="rgb")
    return buf.getvalue()


def _npy_bytes(xyz: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, xyz, allow_pickle=False)
    return buf.getvalue()


def _expected_score(xyz: np.ndarray) -> float:
    return float(xyz[..., 2].astype(np.float32).mean())


# --------------------------------------------------------------------------------------------------- client


def test_healthy_and_ready(url: str, closed_url: str) -> None:
    with PatchbankClient(url) as client:
        assert client.healthy()
        assert client.ready()
    with PatchbankClient(closed_url, retries=0) as client:
        assert not client.healthy()
        assert not client.ready()


@pytest.mark.parametrize("rgb_kind", ["array", "bytes", "path"])
@pytest.mark.parametrize("xyz_kind", ["array", "tiff-bytes", "npy-bytes", "tiff-path", "npy-path"])
def test_score_inputs_arrive_intact(url: str, tmp_path: Path, rgb_kind: str, xyz_kind: str) -> None:
    rgb, xyz = _rgb(1), _xyz(1, z=3.0)
    rgb_in: Any = {"array": rgb, "bytes": _png_bytes(rgb), "path": tmp_path / "a.png"}[rgb_kind]
    (tmp_path / "a.png").write_bytes(_png_bytes(rgb))
    (tmp_path / "a.tiff").write_bytes(_tiff_bytes(xyz))
    (tmp_path / "a.npy").write_bytes(_npy_bytes(xyz))
    xyz_in: Any = {
        "array": xyz,
        "tiff-bytes": _tiff_bytes(xyz),
        "npy-bytes": _npy_bytes(xyz),
        "tiff-path": str(tmp_path / "a.tiff"),
        "npy-path": tmp_path / "a.npy",
    }[xyz_kind]
    with PatchbankClient(url) as client:
        result = client.score("puck", rgb_in, xyz_in)
    assert isinstance(result, ScoreResult)
    assert result.image_score == pytest.approx(_expected_score(xyz), rel=1e-6)
    assert result.threshold == 15.0 and result.pixel_threshold == 14.2 and not result.is_anomalous
    assert result.anomaly_map is None and result.map_array() is None and result.map_png() is None
    echo = (result.model_extra or {})["echo"]
    assert echo["rgb_shape"] == [H, W, 3] and echo["rgb_sum"] == int(rgb.astype(np.int64).sum())
    assert echo["xyz_shape"] == [H, W, 3] and echo["xyz_dtype"] == "float32"
    assert echo["rgb_filename"] == "rgb.png"
    assert (
        echo["xyz_filename"]
        == {  # a path goes under its own name: the service may need its extension
            "array": "xyz.npy",
            "tiff-bytes": "xyz.tiff",
            "npy-bytes": "xyz.npy",
            "tiff-path": "a.tiff",
            "npy-path": "a.npy",
        }[xyz_kind]
    )
    assert echo["xyz_unit"] is None and echo["intrinsics"] is None
    assert result.regions[0].bbox == (1, 2, W - 1, H - 1) and result.regions[0].area_px == 42
    assert result.timings_ms["total"] == 6.5


def test_map_array_and_png_round_trip(url: str) -> None:
    rgb, xyz = _rgb(2), _xyz(2)
    with PatchbankClient(url) as client:
        arr_result = client.score("puck", rgb, xyz, map="array")
        png_result = client.score("puck", rgb, xyz, map="png")
    heat = arr_result.map_array()
    assert heat is not None and heat.dtype == np.float32 and heat.shape == (H, W)
    np.testing.assert_array_equal(heat, xyz[..., 2].astype(np.float16).astype(np.float32))
    assert arr_result.map_png() is None
    png = png_result.map_png()
    assert png is not None and png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).size == (W, H)
    assert png_result.map_array() is None


def test_headers_sample_id_and_api_key_pass_through(url: str) -> None:
    with PatchbankClient(url, api_key=API_KEY) as client:
        result = client.score("secret", _rgb(), _xyz(), sample_id="line-3/0001", idempotency_key="req-1")
    assert result.sample_id == "line-3/0001"
    echo = (result.model_extra or {})["echo"]
    assert echo["api_key"] == API_KEY and echo["idempotency_key"] == "req-1"


def test_score_batch_keeps_order_and_ids(url: str) -> None:
    samples = [(_rgb(i), _xyz(i, z=float(i))) for i in range(3)]
    with PatchbankClient(url) as client:
        results = client.score_batch("puck", samples, map="array", sample_ids=["a", "b", "c"])
    assert [r.sample_id for r in results] == ["a", "b", "c"]
    for (_, xyz), r in zip(samples, results, strict=True):
        assert r.image_score == pytest.approx(_expected_score(xyz), rel=1e-6)
        assert r.map_array() is not None
    with PatchbankClient(url) as client, pytest.raises(ValueError, match="sample_ids"):
        client.score_batch("puck", samples, sample_ids=["a"])


def test_categories_category_and_reload(url: str) -> None:
    with PatchbankClient(url) as client:
        infos = client.categories()
        assert [c.name for c in infos] == ["puck", "flaky"]
        assert isinstance(infos[0], CategoryInfo) and infos[0].evaluation == {"image_auroc": 0.9}
        assert client.category("puck").bank_size == 1000
        with pytest.raises(NotFound, match="unknown category 'nope'"):
            client.category("nope")
        with pytest.raises(Unauthorized, match="admin key"):
            client.reload("puck")
    with PatchbankClient(url, api_key="admin") as admin:
        assert admin.reload("puck").bank_version == "v0002"


@pytest.mark.parametrize(
    ("category", "kwargs", "error", "status", "reason"),
    [
        ("nope", {}, NotFound, 404, "unknown category 'nope'"),
        ("secret", {}, Unauthorized, 401, "missing or invalid API key"),
        ("huge", {}, PayloadTooLarge, 413, "over the 1 MiB limit"),
        ("puck", {"idempotency_key": "used"}, Conflict, 409, "Idempotency-Key was used"),
        ("invalid", {}, BadRequest, 422, "category: Field required"),
    ],
)
def test_typed_errors_carry_the_reason_and_are_not_retried(
    url: str, category: str, kwargs: dict[str, Any], error: type[APIError], status: int, reason: str
) -> None:
    with PatchbankClient(url, retries=3, backoff=0.01) as client, pytest.raises(error) as info:
        client.score(category, _rgb(), _xyz(), **kwargs)
    assert info.value.status_code == status and reason in info.value.reason
    assert str(info.value).startswith(f"HTTP {status}: ")
    assert isinstance(info.value, PatchbankClientError)
    assert CALLS[category] <= 1  # 422 is answered before the count


def test_bad_upload_is_bad_request(url: str) -> None:
    with PatchbankClient(url) as client, pytest.raises(BadRequest, match="not a TIFF"):
        client.score("puck", _rgb(), b"definitely not a point cloud")


def test_unexpected_answer_is_reported(url: str) -> None:
    with PatchbankClient(url) as client, pytest.raises(UnexpectedResponse, match="image_score"):
        client.score("garbled", _rgb(), _xyz())


def test_503_is_retried_honouring_retry_after(url: str) -> None:
    with PatchbankClient(url, retries=3, backoff=5.0) as client:  # Retry-After: 0 beats the 5 s backoff
        t0 = time.monotonic()
        result = client.score("flaky", _rgb(), _xyz())
        assert time.monotonic() - t0 < 2.0
    assert result.category == "flaky" and CALLS["flaky"] == 3

    CALLS.clear()
    with PatchbankClient(url, retries=1, backoff=5.0) as client, pytest.raises(ServiceUnavailable) as info:
        client.score("flaky", _rgb(), _xyz())
    assert CALLS["flaky"] == 2 and info.value.retry_after == 0.0 and "bank is loading" in info.value.reason


def test_503_without_retry_after_backs_off(url: str) -> None:
    with PatchbankClient(url, retries=2, backoff=0.05) as client, pytest.raises(ServiceUnavailable):
        t0 = time.monotonic()
        client.score("busy", _rgb(), _xyz())
    assert CALLS["busy"] == 3
    assert time.monotonic() - t0 >= 0.05 + 0.1


def test_retry_delays() -> None:
    core = _ClientCore("http://x", backoff=0.5, max_delay=10.0)
    assert [core._delay(a) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert core._delay(0, retry_after=3.0) == 3.0
    assert core._delay(0, retry_after=3600.0) == 10.0
    assert _parse_retry_after("7") == 7.0
    assert _parse_retry_after(" 0 ") == 0.0
    assert _parse_retry_after("soon") is None
    assert _parse_retry_after(None) is None
    assert _parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    with pytest.raises(ValueError):
        _ClientCore("http://x", retries=-1)


def test_connection_refused_raises_connection_failed(closed_url: str) -> None:
    with (
        PatchbankClient(closed_url, retries=1, backoff=0.01) as client,
        pytest.raises(ConnectionFailed) as info,
    ):
        client.score("puck", _rgb(), _xyz())
    assert "after 2 tries" in str(info.value)


def test_invalid_inputs_fail_before_sending(url: str, tmp_path: Path) -> None:
    with PatchbankClient(url) as client:
        with pytest.raises(TypeError, match="uint8"):
            client.score("puck", _rgb().astype(np.float32), _xyz())
        with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
            client.score("puck", _rgb(), _xyz()[..., :2])
        with pytest.raises(TypeError, match="float32"):
            client.score("puck", _rgb(), _xyz().astype(np.int32))
        with pytest.raises(ValueError, match="map"):
            client.score("puck", _rgb(), _xyz(), map="jpeg")  # type: ignore[arg-type]
        with pytest.raises(FileNotFoundError):
            client.score("puck", tmp_path / "missing.png", _xyz())
    assert not CALLS


CAMERA = {"fx": 240.0, "fy": 240.0, "cx": 79.5, "cy": 59.5, "depth_scale": 0.001}


def _echo(result: ScoreResult) -> dict[str, Any]:
    return dict((result.model_extra or {})["echo"])


def test_xyz_unit_and_intrinsics_are_sent(url: str, tmp_path: Path) -> None:
    camera_file = tmp_path / "camera.json"
    camera_file.write_text(json.dumps({**CAMERA, "width": W, "height": H}, indent=2))
    rgb, xyz = _rgb(4), _xyz(4)
    with PatchbankClient(url) as client:
        # the positional arguments keep their meaning; the new ones are keywords
        result = client.score("puck", rgb, xyz, "array", "s1", "k1", xyz_unit="mm", intrinsics=CAMERA)
        assert result.sample_id == "s1" and result.map_array() is not None
        echo = _echo(result)
        assert echo["idempotency_key"] == "k1" and echo["xyz_unit"] == "mm"
        assert json.loads(echo["intrinsics"]) == CAMERA
        from_file = _echo(client.score("puck", rgb, xyz, intrinsics=camera_file))
        assert json.loads(from_file["intrinsics"]) == {**CAMERA, "width": W, "height": H}
        assert from_file["xyz_unit"] is None
        from_text = _echo(client.score("puck", rgb, xyz, intrinsics=json.dumps(CAMERA)))
        assert json.loads(from_text["intrinsics"]) == CAMERA
        numpy_values = {k: np.float64(v) for k, v in CAMERA.items()}
        assert (
            json.loads(_echo(client.score("puck", rgb, xyz, intrinsics=numpy_values))["intrinsics"]) == CAMERA
        )
        batch = client.score_batch("puck", [(rgb, xyz), (rgb, xyz)], xyz_unit="um", intrinsics=camera_file)
        assert [_echo(r)["xyz_unit"] for r in batch] == ["um", "um"]
        assert all(json.loads(_echo(r)["intrinsics"])["width"] == W for r in batch)

    async def run() -> None:
        async with AsyncPatchbankClient(url) as aclient:
            one = await aclient.score("puck", rgb, xyz, xyz_unit="mm", intrinsics=camera_file)
            assert _echo(one)["xyz_unit"] == "mm" and json.loads(_echo(one)["intrinsics"])["height"] == H
            many = await aclient.score_batch("puck", [(rgb, xyz)], xyz_unit="m", intrinsics=CAMERA)
            assert _echo(many[0])["xyz_unit"] == "m" and json.loads(_echo(many[0])["intrinsics"]) == CAMERA

    asyncio.run(run())


def test_bad_unit_or_intrinsics_fail_before_sending(url: str, tmp_path: Path) -> None:
    rgb, xyz = _rgb(), _xyz()
    (tmp_path / "list.json").write_text("[240, 240]")
    with PatchbankClient(url) as client:
        with pytest.raises(ValueError, match="xyz_unit must be one of m, mm, um, got 'cm'"):
            client.score("puck", rgb, xyz, xyz_unit="cm")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="xyz_unit"):
            client.score_batch("puck", [(rgb, xyz)], xyz_unit="cm")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="intrinsics lacks depth_scale"):
            client.score("puck", rgb, xyz, intrinsics={"fx": 1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0})
        with pytest.raises(ValueError, match=r"not valid JSON.*pathlib\.Path"):
            client.score("puck", rgb, xyz, intrinsics="camera.json")
        with pytest.raises(ValueError, match=r"list\.json must be a JSON object"):
            client.score("puck", rgb, xyz, intrinsics=tmp_path / "list.json")
        with pytest.raises(ValueError, match="at most 1000"):
            client.score("puck", rgb, xyz, intrinsics={**CAMERA, "note": "x" * 1000})  # type: ignore[dict-item]
        with pytest.raises(ValueError, match="not a finite number"):
            client.score("puck", rgb, xyz, intrinsics={**CAMERA, "fx": float("nan")})
        with pytest.raises(FileNotFoundError):
            client.score("puck", rgb, xyz, intrinsics=tmp_path / "missing.json")
        with pytest.raises(TypeError, match="intrinsics must be a mapping"):
            client.score("puck", rgb, xyz, intrinsics=240)  # type: ignore[arg-type]
    assert not CALLS


def test_async_client(url: str, closed_url: str) -> None:
    async def run() -> None:
        rgb, xyz = _rgb(3), _xyz(3)
        async with AsyncPatchbankClient(url, retries=3, backoff=0.01) as client:
            assert await client.healthy() and await client.ready()
            result = await client.score("puck", _png_bytes(rgb), xyz, map="array", sample_id="s1")
            assert result.sample_id == "s1"
            assert result.image_score == pytest.approx(_expected_score(xyz), rel=1e-6)
            heat = result.map_array()
            assert heat is not None and heat.shape == (H, W)
            batch = await client.score_batch("puck", [(rgb, xyz), (rgb, _tiff_bytes(xyz))])
            assert len(batch) == 2 and batch[0].image_score == pytest.approx(batch[1].image_score)
            assert [c.name for c in await client.categories()] == ["puck", "flaky"]
            assert (await client.category("puck")).name == "puck"
            flaky = await client.score("flaky", rgb, xyz)
            assert flaky.category == "flaky" and CALLS["flaky"] == 3
            with pytest.raises(NotFound, match="unknown category"):
                await client.score("nope", rgb, xyz)
        async with AsyncPatchbankClient(closed_url, retries=1, backoff=0.01) as down:
            assert not await down.healthy()
            with pytest.raises(ConnectionFailed):
                await down.score("puck", rgb, xyz)

    asyncio.run(run())


def test_package_does_not_import_the_engine() -> None:
    code = (
        "import sys, clients, patchbank_client.cli\n"
        "bad = {'patchbank', 'service', 'patchbank_builder', 'torch', 'faiss', 'open3d'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in bad)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# --------------------------------------------------------------------------------------------------- cli


def _write_sample(rgb_path: Path, xyz_path: Path, seed: int, z: float = 1.0) -> None:
    rgb_path.parent.mkdir(parents=True, exist_ok=True)
    xyz_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(seed)).save(rgb_path)
    if xyz_path.suffix == ".npy":
        np.save(xyz_path, _xyz(seed, z), allow_pickle=False)
    else:
        tifffile.imwrite(xyz_path, _xyz(seed, z), photometric="rgb")


@pytest.fixture
def mvtec(tmp_path: Path) -> Path:
    """``puck/test/{good,hole}/{rgb,xyz,gt}``, 2 samples per kind; one hole sample scores over threshold."""
    cat = tmp_path / "data" / "puck"
    for kind in ("good", "hole"):
        for i in range(2):
            d = cat / "test" / kind
            _write_sample(
                d / "rgb" / f"{i:03d}.png",
                d / "xyz" / f"{i:03d}.tiff",
                i,
                z=20.0 if kind == "hole" and i else 1.0,
            )
            if kind == "hole":
                (d / "gt").mkdir(exist_ok=True)
                Image.fromarray(np.zeros((H, W), np.uint8)).save(d / "gt" / f"{i:03d}.png")
    return cat


def test_cli_single_prints_summary_and_saves_map(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_sample(tmp_path / "a.png", tmp_path / "a.tiff", 0)
    heat = tmp_path / "heat.png"
    argv = [
        "--url",
        url,
        "--category",
        "puck",
        "--rgb",
        str(tmp_path / "a.png"),
        "--xyz",
        str(tmp_path / "a.tiff"),
    ]
    assert main([*argv, "--save-map", str(heat)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"puck/v0001 {tmp_path / 'a.png'}: score 1.")
    assert out.endswith("(threshold 15.00) OK, 1 region, 6 ms")
    with Image.open(heat) as im:
        assert im.size == (W, H) and im.format == "PNG"

    assert main([*argv, "--json", "--map", "array"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["category"] == "puck" and answer["anomaly_map"]["format"] == "array"


def test_cli_single_errors_exit_2(
    url: str, closed_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_sample(tmp_path / "a.png", tmp_path / "a.tiff", 0)
    pair = ["--rgb", str(tmp_path / "a.png"), "--xyz", str(tmp_path / "a.tiff")]
    assert main(["--url", url, "--category", "nope", *pair]) == 2
    assert capsys.readouterr().err.strip() == "error: HTTP 404: unknown category 'nope'"
    assert main(["--url", closed_url, "--category", "puck", "--retries", "0", *pair]) == 2
    assert capsys.readouterr().err.startswith("error: cannot reach")
    assert main(["--url", url, "--category", "puck", "--rgb", str(tmp_path / "b.png"), "--xyz", pair[3]]) == 2
    assert "error: cannot read" in capsys.readouterr().err
    assert main(["--url", url, "--category", "puck", "--rgb", pair[1]]) == 2  # usage: --xyz missing
    assert main(["--url", url, "--category", "puck", *pair, "--save-map", "x.png", "--map", "array"]) == 2


def test_cli_dir_mvtec_layout(
    url: str, mvtec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    assert main(["--url", url, "--category", "puck", "--dir", str(mvtec), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["rgb"]).relative_to(mvtec).as_posix() for r in lines] == [
        "test/good/rgb/000.png",
        "test/good/rgb/001.png",
        "test/hole/rgb/000.png",
        "test/hole/rgb/001.png",
    ]
    assert all(
        Path(r["xyz"]).parent.name == "xyz" and Path(r["xyz"]).stem == Path(r["rgb"]).stem for r in lines
    )
    assert [r["is_anomalous"] for r in lines] == [False, False, False, True]
    assert all(r["bank_version"] == "v0001" and r["latency_ms"] > 0 for r in lines)
    summary = capsys.readouterr().out
    assert "4 samples: 3 OK, 1 NG, 0 errors; latency p50" in summary

    # a kind folder, and the rgb folder itself, work too
    assert (
        main(["--url", url, "--category", "puck", "--dir", str(mvtec / "test" / "hole"), "--out", str(out)])
        == 0
    )
    assert len(out.read_text().splitlines()) == 2
    assert (
        main(
            [
                "--url",
                url,
                "--category",
                "puck",
                "--dir",
                str(mvtec / "test" / "good" / "rgb"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(out.read_text().splitlines()) == 2


def test_cli_dir_flat_folder_with_a_failing_sample(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flat = tmp_path / "line"
    _write_sample(flat / "b.png", flat / "b.tiff", 1)
    _write_sample(flat / "a.png", flat / "a.npy", 0)
    Image.fromarray(_rgb(2)).save(flat / "c.png")
    (flat / "c.tiff").write_bytes(b"garbage")
    Image.fromarray(_rgb(3)).save(flat / "lonely.png")  # no xyz: skipped with a warning
    out = tmp_path / "r.jsonl"
    assert main(["--url", url, "--category", "puck", "--dir", str(flat), "--out", str(out)]) == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["rgb"]).name for r in lines] == ["a.png", "b.png", "c.png"]
    assert Path(lines[0]["xyz"]).name == "a.npy" and "image_score" in lines[0]
    assert lines[2]["status"] == 400 and "not a TIFF" in lines[2]["error"] and "image_score" not in lines[2]
    captured = capsys.readouterr()
    assert "3 samples: 2 OK, 0 NG, 1 errors" in captured.out
    assert "skipped 1 rgb file without an xyz file" in captured.err


def test_cli_dir_usage_errors(
    url: str, mvtec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    (empty / "rgb").mkdir(parents=True)
    out = str(tmp_path / "r.jsonl")
    assert main(["--url", url, "--category", "puck", "--dir", str(empty), "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no samples found in") and "\n" not in err
    assert main(["--url", url, "--category", "puck", "--dir", str(tmp_path / "absent"), "--out", out]) == 2
    assert capsys.readouterr().err.strip().endswith("does not exist")
    assert main(["--url", url, "--category", "nope", "--dir", str(mvtec), "--out", out]) == 2
    assert capsys.readouterr().err.strip() == "error: HTTP 404: unknown category 'nope'"
    assert main(["--url", url, "--category", "puck", "--dir", str(mvtec)]) == 2  # --out missing


def test_find_samples_ignores_gt_and_sorts(mvtec: Path) -> None:
    samples, unpaired = find_samples(mvtec.parent)
    assert unpaired == 0
    assert [s.rgb.relative_to(mvtec).as_posix() for s in samples][:2] == [
        "test/good/rgb/000.png",
        "test/good/rgb/001.png",
    ]
    assert len(samples) == 4


def test_find_samples_finds_every_cloud_format_and_the_category_intrinsics(tmp_path: Path) -> None:
    kind = tmp_path / "data" / "puck" / "test" / "good"
    flat = tmp_path / "line"
    for name in (
        "rgb/000.png",
        "xyz/000.png",  # a 16-bit PNG depth image: only in an MVTec xyz folder
        "rgb/001.png",
        "xyz/001.ply",
        "rgb/002.png",
        "xyz/002.pcd",
    ):
        (kind / name).parent.mkdir(parents=True, exist_ok=True)
        (kind / name).write_bytes(b"x")
    (tmp_path / "data" / "puck" / "intrinsics.json").write_text(json.dumps(CAMERA))
    flat.mkdir()
    for name in ("a.png", "a.ply", "b.png", "b.pcd", "c.png"):  # c.png is an RGB image without a cloud
        (flat / name).write_bytes(b"x")
    samples, unpaired = find_samples(tmp_path)
    assert unpaired == 1
    pairs = [(s.rgb.relative_to(tmp_path).as_posix(), s.xyz.name) for s in samples]
    assert pairs == [
        ("data/puck/test/good/rgb/000.png", "000.png"),
        ("data/puck/test/good/rgb/001.png", "001.ply"),
        ("data/puck/test/good/rgb/002.png", "002.pcd"),
        ("line/a.png", "a.ply"),
        ("line/b.png", "b.pcd"),
    ]
    camera = tmp_path / "data" / "puck" / "intrinsics.json"
    assert [s.intrinsics for s in samples] == [camera, camera, camera, None, None]
    (flat / "intrinsics.json").write_text(json.dumps(CAMERA))
    assert find_samples(flat)[0][0].intrinsics == flat / "intrinsics.json"


def test_cli_sends_xyz_unit_and_intrinsics(
    url: str, mvtec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (mvtec / "intrinsics.json").write_text(json.dumps(CAMERA))
    mine = {**CAMERA, "depth_scale": 1.0}
    (tmp_path / "mine.json").write_text(json.dumps(mine))
    out = tmp_path / "r.jsonl"
    base = ["--url", url, "--category", "puck"]
    assert main([*base, "--dir", str(mvtec), "--out", str(out), "--xyz-unit", "mm"]) == 0
    assert f"using the camera intrinsics in {mvtec / 'intrinsics.json'}" in capsys.readouterr().err
    echoes = [json.loads(line)["echo"] for line in out.read_text().splitlines()]
    assert len(echoes) == 4 and all(e["xyz_unit"] == "mm" for e in echoes)
    assert all(json.loads(e["intrinsics"]) == CAMERA for e in echoes)

    # --intrinsics wins over the dataset's file
    assert (
        main([*base, "--dir", str(mvtec), "--out", str(out), "--intrinsics", str(tmp_path / "mine.json")])
        == 0
    )
    echoes = [json.loads(line)["echo"] for line in out.read_text().splitlines()]
    assert all(json.loads(e["intrinsics"]) == mine and e["xyz_unit"] is None for e in echoes)
    assert "using the camera intrinsics" not in capsys.readouterr().err

    _write_sample(tmp_path / "a.png", tmp_path / "a.tiff", 0)
    pair = ["--rgb", str(tmp_path / "a.png"), "--xyz", str(tmp_path / "a.tiff")]
    assert (
        main([*base, *pair, "--xyz-unit", "um", "--intrinsics", str(tmp_path / "mine.json"), "--json"]) == 0
    )
    echo = json.loads(capsys.readouterr().out)["echo"]
    assert echo["xyz_unit"] == "um" and json.loads(echo["intrinsics"]) == mine

    # a missing or broken camera file is a usage error, before anything is sent
    CALLS.clear()
    assert main([*base, *pair, "--intrinsics", str(tmp_path / "absent.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read intrinsics {tmp_path / 'absent.json'}")
    (mvtec / "intrinsics.json").write_text("{fx: 240}")
    assert main([*base, "--dir", str(mvtec), "--out", str(out)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert main([*base, *pair, "--xyz-unit", "cm"]) == 2  # argparse: not a choice
    assert not CALLS


# --------------------------------------------------------------------------------------------------- real service

DEMO_CAMERA = Intrinsics(
    fx=240, fy=240, cx=79.5, cy=59.5, depth_scale=1.0
)  # the demo data's 160 x 120 camera


@pytest.fixture(scope="module")
def real_url(fpfh_build: tuple[Path, BuildResult], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service with the session's FPFH bank of the demo category."""
    banks = tmp_path_factory.mktemp("client-banks")
    shutil.copytree(fpfh_build[0] / CATEGORY, banks / CATEGORY)
    with live_server(create_app(ServiceSettings(banks=banks, device="cpu"))) as base:
        yield base


@pytest.fixture(scope="module")
def clouds(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A demo defect sample's RGB and its cloud as files: the xyz TIFF in metres (``m``) and in millimetres
    (``mm``), a float depth TIFF with its ``camera`` JSON, an organized PLY and PCD."""
    ref = next(r for r in list_samples(demo_root, CATEGORY, "test") if r.kind != "good")
    xyz = tifffile.imread(ref.xyz)
    d = tmp_path_factory.mktemp("clouds")
    tifffile.imwrite(d / "mm.tiff", xyz * 1000, photometric="rgb")
    (d / "depth.tiff").write_bytes(encode_cloud(xyz, "depth-tiff", DEMO_CAMERA))
    (d / "cloud.ply").write_bytes(encode_cloud(xyz, "ply"))
    (d / "cloud.pcd").write_bytes(encode_cloud(xyz, "pcd"))
    (d / "camera.json").write_text(DEMO_CAMERA.model_dump_json(exclude_none=True))
    return {
        "rgb": ref.rgb,
        "m": ref.xyz,
        "mm": d / "mm.tiff",
        "depth": d / "depth.tiff",
        "camera": d / "camera.json",
        "ply": d / "cloud.ply",
        "pcd": d / "cloud.pcd",
    }


def test_real_service_millimetres_need_their_unit(real_url: str, clouds: dict[str, Path]) -> None:
    rgb = clouds["rgb"]
    with PatchbankClient(real_url) as client:
        metres = client.score(CATEGORY, rgb, clouds["m"]).image_score
        with pytest.raises(BadRequest) as info:
            client.score(CATEGORY, rgb, clouds["mm"])
        assert info.value.status_code == 400
        assert "millimetres" in info.value.reason and "xyz_unit=mm" in info.value.reason
        got = client.score(CATEGORY, rgb, clouds["mm"], xyz_unit="mm")
        assert got.image_score == pytest.approx(metres, abs=1e-5)
        batch = client.score_batch(CATEGORY, [(rgb, clouds["mm"]), (rgb, clouds["mm"])], xyz_unit="mm")
        assert [r.image_score for r in batch] == pytest.approx([metres, metres], abs=1e-5)


def test_real_service_depth_image_with_intrinsics(real_url: str, clouds: dict[str, Path]) -> None:
    rgb, depth = clouds["rgb"], clouds["depth"]
    with PatchbankClient(real_url) as client:
        metres = client.score(CATEGORY, rgb, clouds["m"]).image_score
        bank_camera = client.score(CATEGORY, rgb, depth)  # the camera the bank stored from the dataset
        assert bank_camera.image_score == pytest.approx(metres, rel=1e-4)
        got = client.score(CATEGORY, rgb, depth, intrinsics=DEMO_CAMERA.model_dump(exclude_none=True))
        assert got.image_score == pytest.approx(metres, rel=1e-4)
        with pytest.raises(BadRequest, match="xyz_unit"):
            client.score(CATEGORY, rgb, depth, xyz_unit="mm", intrinsics=clouds["camera"])

    async def run() -> float:
        async with AsyncPatchbankClient(real_url) as aclient:
            return (await aclient.score(CATEGORY, rgb, depth, intrinsics=clouds["camera"])).image_score

    assert asyncio.run(run()) == pytest.approx(metres, rel=1e-4)


def test_real_service_organized_ply_and_pcd_score_like_the_tiff(
    real_url: str, clouds: dict[str, Path]
) -> None:
    with PatchbankClient(real_url) as client:
        tiff = client.score(CATEGORY, clouds["rgb"], clouds["m"]).image_score
        assert client.score(CATEGORY, clouds["rgb"], clouds["ply"]).image_score == tiff
        assert client.score(CATEGORY, clouds["rgb"], clouds["pcd"]).image_score == tiff


def test_real_service_cli_xyz_unit_and_intrinsics(
    real_url: str, clouds: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--url", real_url, "--category", CATEGORY, "--rgb", str(clouds["rgb"])]
    assert main([*base, "--xyz", str(clouds["m"]), "--json"]) == 0
    metres = json.loads(capsys.readouterr().out)["image_score"]
    assert main([*base, "--xyz", str(clouds["mm"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: HTTP 400: ") and "millimetres" in err and "\n" not in err
    assert main([*base, "--xyz", str(clouds["mm"]), "--xyz-unit", "mm", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_score"] == pytest.approx(metres, abs=1e-5)
    assert main([*base, "--xyz", str(clouds["depth"]), "--intrinsics", str(clouds["camera"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_score"] == pytest.approx(metres, rel=1e-4)


def test_real_service_cli_dir_of_depth_pngs_uses_the_category_intrinsics(
    real_url: str,
    fpfh_build: tuple[Path, BuildResult],
    demo_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The layout ``patchbank convert --format depth-png`` writes: ``xyz/NNN.png`` and the category's
    ``intrinsics.json``, found without ``--intrinsics``."""
    assert fpfh_build[1].evaluation is not None
    offline = {s.name: s.image_score for s in fpfh_build[1].evaluation.scores}
    camera = DEMO_CAMERA.model_copy(update={"depth_scale": 1e-5})  # 10 um steps
    category = tmp_path / "data" / CATEGORY
    expected: dict[Path, float] = {}
    for ref in list_samples(demo_root, CATEGORY, "test"):
        kind = category / "test" / ref.kind
        (kind / "rgb").mkdir(parents=True)
        (kind / "xyz").mkdir()
        shutil.copy(ref.rgb, kind / "rgb" / ref.rgb.name)
        depth = encode_cloud(tifffile.imread(ref.xyz), "depth-png", camera)
        (kind / "xyz" / f"{ref.rgb.stem}.png").write_bytes(depth)
        expected[kind / "rgb" / ref.rgb.name] = offline[ref.name]
    (category / "intrinsics.json").write_text(camera.model_dump_json(exclude_none=True))
    out = tmp_path / "r.jsonl"
    assert main(["--url", real_url, "--category", CATEGORY, "--dir", str(category), "--out", str(out)]) == 0
    assert "using the camera intrinsics in" in capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(expected) and all("error" not in r for r in lines)
    for r in lines:
        assert Path(r["xyz"]).suffix == ".png"
        assert r["image_score"] == pytest.approx(expected[Path(r["rgb"])], rel=0.03)  # 16-bit depth steps
