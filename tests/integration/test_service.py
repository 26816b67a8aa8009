"""The scoring service under real uvicorn: scores equal the offline evaluation, bad input gets a 4xx with
a reason, concurrent load gives identical scores, the queue refuses with 503, keys are enforced."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from patchbank.data import list_samples
from patchbank_builder.build import BuildRequest, BuildResult, build_bank
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY, OTHER


@pytest.fixture(scope="module")
def banks(
    fpfh_build: tuple[Path, BuildResult], demo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """puck: the session's fpfh bank; bracket: the default method, calibrated (with the packaged weights)."""
    dst = tmp_path_factory.mktemp("service-banks")
    shutil.copytree(fpfh_build[0] / CATEGORY, dst / CATEGORY)
    build_bank(
        BuildRequest(
            category=OTHER,
            data_root=demo_root,
            banks=dst,
            calibrate=True,
            progress=False,
        )
    )
    return dst


@pytest.fixture(scope="module")
def url(banks: Path) -> Iterator[str]:
    settings = ServiceSettings(banks=banks, device="cpu", max_upload_mb=2, concurrency=2, queue_size=32)
    with live_server(create_app(settings)) as base:
        yield base


def files(rgb: bytes, xyz: bytes, xyz_name: str = "xyz.tiff") -> dict[str, tuple[str, bytes]]:
    return {"rgb": ("rgb.png", rgb), "xyz": (xyz_name, xyz)}


def sample_bytes(demo_root: Path, category: str = CATEGORY, kind: str = "good") -> tuple[bytes, bytes]:
    ref = next(r for r in list_samples(demo_root, category, "test") if r.kind == kind)
    return ref.rgb.read_bytes(), ref.xyz.read_bytes()


def tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb" if arr.ndim == 3 and arr.shape[2] == 3 else None)
    return buf.getvalue()


def test_scores_equal_the_offline_evaluation(
    url: str, fpfh_build: tuple[Path, BuildResult], demo_root: Path
) -> None:
    evaluation = fpfh_build[1].evaluation
    assert evaluation is not None
    offline = {s.name: s.image_score for s in evaluation.scores}
    for ref in list_samples(demo_root, CATEGORY, "test"):
        r = httpx.post(
            f"{url}/score",
            data={"category": CATEGORY, "sample_id": ref.name, "map": "array"},
            files=files(ref.rgb.read_bytes(), ref.xyz.read_bytes()),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["image_score"] == pytest.approx(offline[ref.name], rel=1e-5)
        assert body["sample_id"] == ref.name and body["bank_version"] == "v0001"
        assert body["is_anomalous"] == (body["image_score"] > body["threshold"])
        amap = body["anomaly_map"]
        assert amap["shape"] == [120, 160] and (amap["width"], amap["height"]) == (160, 120)
        values = np.frombuffer(base64.b64decode(amap["data"]), dtype="<f2").reshape(120, 160)
        assert np.isfinite(values).all() and values.max() > 0
        assert set(body["timings_ms"]) == {"decode", "features", "search", "post", "total"}


def test_the_client_against_the_real_service(
    url: str, fpfh_build: tuple[Path, BuildResult], demo_root: Path, tmp_path: Path
) -> None:
    """Sync and async clients, paths and arrays, typed errors carrying the server's reason, the CLI."""
    import asyncio

    from patchbank_client import AsyncPatchbankClient, NotFound, PatchbankClient
    from patchbank_client.cli import main as score_main

    assert fpfh_build[1].evaluation is not None
    offline = {s.name: s.image_score for s in fpfh_build[1].evaluation.scores}
    refs = list_samples(demo_root, CATEGORY, "test")
    with PatchbankClient(url) as client:
        for ref in refs:
            got = client.score(CATEGORY, ref.rgb, ref.xyz, map="array")
            assert got.image_score == pytest.approx(offline[ref.name], rel=1e-5)
            assert got.map_array().shape == (120, 160)
        arrays = client.score(CATEGORY, np.asarray(Image.open(refs[0].rgb)), tifffile.imread(refs[0].xyz))
        assert arrays.image_score == pytest.approx(offline[refs[0].name], rel=1e-5)
        with pytest.raises(NotFound, match="unknown category 'nope'"):
            client.score("nope", refs[0].rgb, refs[0].xyz)

    async def run_async() -> list[float]:
        async with AsyncPatchbankClient(url) as aclient:
            results = await asyncio.gather(*(aclient.score(CATEGORY, r.rgb, r.xyz) for r in refs))
        return [r.image_score for r in results]

    np.testing.assert_allclose(asyncio.run(run_async()), [offline[r.name] for r in refs], rtol=1e-5)

    out = tmp_path / "results.jsonl"
    assert (
        score_main(
            [
                "--url",
                url,
                "--category",
                CATEGORY,
                "--dir",
                str(demo_root / CATEGORY / "test"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(refs)
    by_rgb = {Path(line["rgb"]).resolve(): line["image_score"] for line in lines}
    for ref in refs:
        assert by_rgb[ref.rgb.resolve()] == pytest.approx(offline[ref.name], rel=1e-5)


def test_png_map_regions_and_batch(url: str, demo_root: Path) -> None:
    rgb, xyz = sample_bytes(demo_root, OTHER, "hole")
    r = httpx.post(f"{url}/score", data={"category": OTHER}, files=files(rgb, xyz), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    png = Image.open(io.BytesIO(base64.b64decode(body["anomaly_map"]["data"])))
    assert png.format == "PNG" and png.size == (160, 120)
    for region in body["regions"]:
        x0, y0, x1, y1 = region["bbox"]
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120 and region["peak_score"] > body["pixel_threshold"]
    good_rgb, good_xyz = sample_bytes(demo_root, OTHER, "good")
    multi = [
        ("rgb", ("a.png", rgb)),
        ("xyz", ("a.tiff", xyz)),
        ("rgb", ("b.png", good_rgb)),
        ("xyz", ("b.tiff", good_xyz)),
    ]
    b = httpx.post(
        f"{url}/score/batch",
        data={"category": OTHER, "map": "none", "sample_id": ["a", "b"]},
        files=multi,
        timeout=60,
    )
    assert b.status_code == 200, b.text
    results = b.json()["results"]
    assert [x["sample_id"] for x in results] == ["a", "b"]
    assert results[0]["image_score"] == pytest.approx(body["image_score"], rel=1e-5)
    assert results[0]["anomaly_map"] is None


def test_categories_health_and_metrics(url: str) -> None:
    cats = httpx.get(f"{url}/categories").json()["categories"]
    assert {c["name"]: c["method"] for c in cats} == {CATEGORY: "fpfh", OTHER: "rgb/fpfh"}
    one = httpx.get(f"{url}/categories/{OTHER}").json()
    assert one["dim"] == 152 + 33 and one["bank_size"] > 0 and one["evaluation"]["n_test"] == 6
    assert [(m["name"], m["dim"]) for m in one["members"]] == [("rgb", 152), ("fpfh", 33)]
    assert one["fusion"] == "max" and one["calibration"]["target_frr"] == 0.01
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
    text = httpx.get(f"{url}/metrics").text
    for name in (
        "patchbank_requests_total",
        "patchbank_stage_seconds_bucket",
        "patchbank_image_score_bucket",
        "patchbank_queue_depth",
    ):
        assert name in text
    assert "/openapi.json" in httpx.get(f"{url}/docs").text


def _nan_cloud(xyz: np.ndarray) -> np.ndarray:
    out = xyz.copy()
    out[:10, :10] = np.nan
    out[20, 20] = np.inf
    return out


BAD_INPUTS = [
    (
        "unknown category",
        lambda rgb, xyz: ({"category": "nope"}, files(rgb, tiff(xyz))),
        404,
        "unknown category 'nope'",
    ),
    (
        "not an image",
        lambda rgb, xyz: ({"category": CATEGORY}, files(b"hello, I am text", tiff(xyz))),
        400,
        "rgb is not a PNG, JPEG or TIFF image",
    ),
    (
        "corrupt png",
        lambda rgb, xyz: ({"category": CATEGORY}, files(rgb[: len(rgb) // 2], tiff(xyz))),
        400,
        "rgb is not a readable",
    ),
    (
        "corrupt tiff",
        lambda rgb, xyz: ({"category": CATEGORY}, files(rgb, tiff(xyz)[:300])),
        400,
        "xyz is not a readable TIFF",
    ),
    (
        "xyz not HxWx3",
        lambda rgb, xyz: ({"category": CATEGORY}, files(rgb, tiff(np.concatenate([xyz, xyz[..., :1]], -1)))),
        400,
        "H x W x 3",
    ),
    (
        "all points missing",
        lambda rgb, xyz: ({"category": CATEGORY}, files(rgb, tiff(np.zeros_like(xyz)))),
        400,
        "no valid points",
    ),
    (
        "all points NaN",
        lambda rgb, xyz: ({"category": CATEGORY}, files(rgb, tiff(np.full_like(xyz, np.nan)))),
        400,
        "no valid points",
    ),
    (
        "aspect ratio",
        lambda rgb, xyz: ({"category": CATEGORY}, files(rgb, tiff(xyz[:, :100].copy()))),
        400,
        "different aspect ratios",
    ),
    (
        "pickled npy",
        lambda rgb, xyz: ({"category": CATEGORY}, files(rgb, _pickled_npy(), "xyz.npy")),
        400,
        "xyz is not a readable .npy",
    ),
    (
        "over the limit",
        lambda rgb, xyz: ({"category": CATEGORY}, files(rgb, b"\0" * (3 * 1024 * 1024))),
        413,
        "upload too large",
    ),
    (
        "missing field",
        lambda rgb, xyz: ({"category": CATEGORY}, {"rgb": ("rgb.png", rgb)}),
        422,
        "missing field: xyz",
    ),
    (
        "bad map option",
        lambda rgb, xyz: ({"category": CATEGORY, "map": "jpeg"}, files(rgb, tiff(xyz))),
        422,
        "map",
    ),
]


def _pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(("case", "make", "status", "reason"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_4xx_with_a_reason(
    url: str, demo_root: Path, case: str, make, status: int, reason: str
) -> None:
    rgb, xyz_bytes = sample_bytes(demo_root)
    data, upload = make(rgb, tifffile.imread(io.BytesIO(xyz_bytes)))
    r = httpx.post(f"{url}/score", data=data, files=upload, timeout=60)
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]


def test_non_finite_points_are_treated_as_missing(url: str, demo_root: Path) -> None:
    rgb, xyz_bytes = sample_bytes(demo_root)
    xyz = tifffile.imread(io.BytesIO(xyz_bytes))
    clean = httpx.post(f"{url}/score", data={"category": CATEGORY}, files=files(rgb, tiff(xyz)), timeout=60)
    r = httpx.post(
        f"{url}/score", data={"category": CATEGORY}, files=files(rgb, tiff(_nan_cloud(xyz))), timeout=60
    )
    assert clean.status_code == r.status_code == 200, r.text
    npy = io.BytesIO()
    np.save(npy, xyz, allow_pickle=False)
    via_npy = httpx.post(
        f"{url}/score", data={"category": CATEGORY}, files=files(rgb, npy.getvalue(), "xyz.npy")
    )
    assert via_npy.json()["image_score"] == pytest.approx(clean.json()["image_score"], rel=1e-6)


def test_concurrent_requests_give_identical_scores(url: str, demo_root: Path) -> None:
    rgb, xyz = sample_bytes(demo_root, OTHER, "bump")

    def one(_: int) -> httpx.Response:
        return httpx.post(
            f"{url}/score", data={"category": OTHER, "map": "none"}, files=files(rgb, xyz), timeout=120
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(16)))
    assert [a.status_code for a in answers] == [200] * 16
    scores = np.array([a.json()["image_score"] for a in answers])
    np.testing.assert_allclose(scores, scores[0], rtol=1e-5)


def test_full_queue_answers_503_with_retry_after(banks: Path, demo_root: Path) -> None:
    settings = ServiceSettings(banks=banks, device="cpu", concurrency=1, queue_size=0)
    rgb, xyz = sample_bytes(demo_root)
    with live_server(create_app(settings)) as base:

        def one(_: int) -> httpx.Response:
            return httpx.post(
                f"{base}/score", data={"category": CATEGORY}, files=files(rgb, xyz), timeout=120
            )

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(one, range(6)))
    codes = sorted(a.status_code for a in answers)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    busy = next(a for a in answers if a.status_code == 503)
    assert busy.headers["Retry-After"] == "1" and "queue is full" in busy.json()["detail"]


def test_api_keys(banks: Path, demo_root: Path) -> None:
    settings = ServiceSettings(banks=banks, device="cpu", api_keys=["line-1", "line-2"], admin_keys=["boss"])
    rgb, xyz = sample_bytes(demo_root)
    with live_server(create_app(settings)) as base:
        assert httpx.get(f"{base}/healthz").status_code == 200  # health endpoints stay open
        no_key = httpx.post(f"{base}/score", data={"category": CATEGORY}, files=files(rgb, xyz), timeout=60)
        assert no_key.status_code == 401 and "API key" in no_key.json()["detail"]
        wrong = httpx.get(f"{base}/categories", headers={"X-API-Key": "line-3"})
        assert wrong.status_code == 401
        ok = httpx.post(
            f"{base}/score",
            data={"category": CATEGORY},
            files=files(rgb, xyz),
            headers={"X-API-Key": "line-2"},
            timeout=60,
        )
        assert ok.status_code == 200
        assert (
            httpx.post(f"{base}/categories/{CATEGORY}/reload", headers={"X-API-Key": "line-1"}).status_code
            == 401
        )
        reloaded = httpx.post(
            f"{base}/categories/{CATEGORY}/reload", headers={"X-API-Key": "boss"}, timeout=60
        )
        assert reloaded.status_code == 200 and reloaded.json()["bank_version"] == "v0001"
        missing = httpx.post(f"{base}/categories/..%2Fetc/reload", headers={"X-API-Key": "boss"})
        assert missing.status_code == 404


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_and_logs_are_json(banks: Path, demo_root: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from patchbank_service.live import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATCHBANK_DEVICE": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "patchbank", "serve", "--banks", str(banks), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "serve did not become ready"
            time.sleep(0.2)
        rgb, xyz = sample_bytes(demo_root, OTHER, "good")
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(
                httpx.post,
                f"{base}/score",
                data={"category": OTHER, "sample_id": "in-flight"},
                files=files(rgb, xyz),
                timeout=60,
            )
            time.sleep(0.3)  # the request is being scored now
            proc.send_signal(signal.SIGTERM)
            answer = pending.result()
        assert answer.status_code == 200 and answer.json()["sample_id"] == "in-flight"
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after draining
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    scored = [r for r in records if r["message"] == "scored"]
    assert scored and scored[0]["sample_id"] == "in-flight"
    assert {"category", "bank_version", "score", "decision", "latency_ms"} <= set(scored[0])


def test_a_bad_bank_is_reported_and_skipped(banks: Path, tmp_path: Path, demo_root: Path) -> None:
    mixed = tmp_path / "banks"
    shutil.copytree(banks / CATEGORY, mixed / CATEGORY)
    shutil.copytree(banks / CATEGORY, mixed / "broken")  # its manifest names another category: refused
    (mixed / "empty").mkdir()  # no versions at all: not a bank, ignored
    settings = ServiceSettings(banks=mixed, device="cpu")
    rgb, xyz = sample_bytes(demo_root)
    with live_server(create_app(settings)) as base:
        body = httpx.get(f"{base}/categories").json()
        assert [c["name"] for c in body["categories"]] == [CATEGORY]
        assert "broken" in body["errors"] and "holds puck/v0001" in body["errors"]["broken"]
        ok = httpx.post(f"{base}/score", data={"category": CATEGORY}, files=files(rgb, xyz), timeout=60)
        assert ok.status_code == 200
        assert (
            httpx.post(f"{base}/score", data={"category": "broken"}, files=files(rgb, xyz)).status_code == 404
        )


def test_before_banks_are_loaded_scoring_answers_503(banks: Path, demo_root: Path) -> None:
    """Through the ASGI app without its start-up (lifespan not run): nothing is loaded yet."""
    import asyncio

    app = create_app(ServiceSettings(banks=banks, device="cpu"))
    rgb, xyz = sample_bytes(demo_root)

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pb") as client:
            ready = await client.get("/readyz")
            scored = await client.post("/score", data={"category": CATEGORY}, files=files(rgb, xyz))
        return ready, scored

    ready, scored = asyncio.run(ask())
    assert ready.status_code == 503 and ready.json()["status"] == "loading"
    assert scored.status_code == 503 and "still loading" in scored.json()["detail"]
    assert scored.headers["Retry-After"] == "1"
