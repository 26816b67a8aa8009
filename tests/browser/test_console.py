"""The inspection console and the API docs in a real browser against a live service, with the outside
network blocked: the overview, scoring an uploaded part (its map drawn exactly as the service's PNG map),
the live view updating without a reload, a review reaching GET /feedback, the docs, and signing in."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from patchbank.data import SampleRef, list_samples
from patchbank.points.data import list_point_samples
from patchbank.regions import heatmap_png
from patchbank_builder.build import BuildResult
from patchbank_service.app import create_app
from patchbank_service.limits import KeyGate
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.browser.conftest import Tab, shoot
from tests.conftest import CATEGORY
from tests.integration.conftest import POINT_COUNT, POINT_PART

KEY = "line-7-key"


@pytest.fixture(scope="module")
def url(fpfh_build: tuple[Path, BuildResult], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    feedback = tmp_path_factory.mktemp("feedback")
    settings = ServiceSettings(banks=fpfh_build[0], device="cpu", log_json=False, feedback_dir=feedback)
    with live_server(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="module")
def part(demo_root: Path) -> SampleRef:
    """A test part with a hole (the session's small bank calls it OK)."""
    return list_samples(demo_root, CATEGORY, "test", kinds=["hole"])[0]


@pytest.fixture(scope="module")
def rough_part(part: SampleRef, tmp_path_factory: pytest.TempPathFactory) -> SampleRef:
    """The same part with a rough patch (2 mm of noise on its middle ninth): clearly NG."""
    xyz = tifffile.imread(part.xyz)
    h, w, _ = xyz.shape
    rows, cols = slice(h // 3, 2 * h // 3), slice(w // 3, 2 * w // 3)
    patch = xyz[rows, cols, 2]
    xyz[rows, cols, 2] = patch + np.random.default_rng(0).normal(0, 0.002, patch.shape).astype(np.float32)
    folder = tmp_path_factory.mktemp("rough")
    tifffile.imwrite(folder / "rough.tiff", xyz, photometric="rgb")  # as the demo data
    return replace(part, xyz=folder / "rough.tiff")


def score(url: str, ref: SampleRef, **data: str) -> dict[str, Any]:
    files = {"rgb": (ref.rgb.name, ref.rgb.read_bytes()), "xyz": (ref.xyz.name, ref.xyz.read_bytes())}
    r = httpx.post(f"{url}/score", data={"category": CATEGORY, **data}, files=files, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_overview_lists_the_categories(tab: Tab, url: str) -> None:
    page = tab.page
    page.goto(url + "/")
    row = page.locator(f'#categories tr[data-category="{CATEGORY}"]')
    row.wait_for()
    info = httpx.get(f"{url}/categories/{CATEGORY}").json()
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == CATEGORY and cells[1] == info["method"] and cells[2] == info["bank_version"]
    assert cells[4] == f"{info['threshold']:.3f}" and cells[5] == f"{info['pixel_threshold']:.3f}"
    assert cells[6] == f"{info['evaluation']['image_auroc']:.3f}"
    assert cells[10].isdigit() and cells[11].isdigit()  # last hour's counts, from GET /recent
    drift = httpx.get(f"{url}/categories/{CATEGORY}/drift").json()  # the drift column, from GET .../drift
    expect = f"{drift['n_recent']} OK, too few" if drift["ks"] is None else f"KS {drift['ks']:.2f}"
    row.locator("td.drift", has_text=expect).wait_for()
    shoot(page, "overview")
    with page.context.expect_page() as opened:  # the bank's report, from the evaluation it recorded
        row.locator(".report").click()
    report = opened.value
    report.locator("img[alt='ROC curves']").wait_for()
    assert report.locator("img[alt='scores']").count() == 1
    assert f"I-AUROC{info['evaluation']['image_auroc']:.3f}" in report.inner_text("table.summary").replace(
        "\t", ""
    )
    shoot(report, "report")


def test_inspect_scores_an_uploaded_part(tab: Tab, url: str, rough_part: SampleRef) -> None:
    part = rough_part
    page = tab.page
    page.goto(url + "/#inspect")
    page.locator(f'#inspect-category option[value="{CATEGORY}"]').wait_for(state="attached")
    page.select_option("#inspect-category", CATEGORY)
    page.set_input_files("#inspect-rgb", part.rgb)
    page.set_input_files("#inspect-xyz", part.xyz)
    page.click("#inspect-submit")
    page.locator("#inspect-result").wait_for()
    page.locator("#view3d canvas, #view3d-note:has-text('3D view')").first.wait_for()

    expected = score(url, part, map="array")  # the same part through the API (scores are deterministic)
    assert expected["is_anomalous"] and page.inner_text("#decision") == "NG"
    assert page.locator("#regions tbody tr").count() == len(expected["regions"]) > 0
    assert page.is_visible("#overlay-rgb") and page.is_visible("#overlay-map")
    # the map as the console coloured it equals the service's own heatmap PNG of the same values
    amap = expected["anomaly_map"]
    values = np.frombuffer(base64.b64decode(amap["data"]), "<f2").reshape(amap["shape"]).astype(np.float32)
    png = heatmap_png(values, expected["pixel_threshold"])
    served = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    drawn = page.evaluate(
        """() => { const c = document.getElementById('overlay-map');
                   return [c.width, c.height, Array.from(c.getContext('2d')
                           .getImageData(0, 0, c.width, c.height).data)]; }"""
    )
    ours = np.asarray(drawn[2], dtype=np.uint8).reshape(drawn[1], drawn[0], 4)
    assert ours.shape[:2] == served.shape[:2] and (ours[..., 3] == 255).all()
    np.testing.assert_array_equal(ours[..., :3], served)
    page.fill("#map-opacity", "30")
    assert page.eval_on_selector("#overlay-map", "c => c.style.opacity") == "0.3"
    canvas = page.locator("#view3d canvas")
    if canvas.count():  # WebGL present: the cloud is drawn, and turns with the mouse
        box = canvas.bounding_box()
        assert box is not None and box["width"] > 100
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2 + 20)
        page.mouse.up()
    shoot(page, "inspect")


def test_live_view_updates_without_a_reload(tab: Tab, url: str, rough_part: SampleRef) -> None:
    page = tab.page
    page.goto(url + "/#live")
    page.locator("#live-status:has-text('updated')").wait_for()
    page.evaluate("window.stillTheSamePage = true")
    sample_id = f"api-{uuid.uuid4().hex[:8]}"
    answer = score(url, rough_part, sample_id=sample_id)
    row = page.locator("#live-table tbody tr", has_text=sample_id)
    row.wait_for(timeout=10_000)
    assert page.evaluate("window.stillTheSamePage") is True
    assert answer["is_anomalous"] and row.locator(".badge").inner_text() == "NG"
    card = page.locator(f'#live-categories [data-category="{CATEGORY}"]')
    ng = int(card.locator(".ng").inner_text().removeprefix("NG "))
    assert ng == httpx.get(f"{url}/recent").json()["categories"][CATEGORY]["ng_last_hour"] >= 1
    # the NG part's map, fetched with the key header and shown from memory
    page.locator(f'#live-thumbs figure:has-text("{sample_id}") img[src^="blob:"]').wait_for()
    shoot(page, "live")


def test_a_review_reaches_the_feedback_records(tab: Tab, url: str, part: SampleRef) -> None:
    page = tab.page
    sample_id = f"review-{uuid.uuid4().hex[:8]}"
    answer = score(url, part, sample_id=sample_id)
    verdict = "false_alarm" if answer["is_anomalous"] else "missed_defect"
    page.goto(url + "/#live")
    page.locator("#live-table tbody tr", has_text=sample_id).get_by_role("link", name="Review").click()
    page.locator("#review-detail").wait_for()
    assert sample_id in page.inner_text("#review-facts")
    page.fill("#review-who", "anna")
    page.fill("#review-note", "dust on the lens")
    page.click(f'.verdicts button[value="{verdict}"]')
    page.locator("#review-message:has-text('Recorded')").wait_for()
    page.locator("#feedback-table tbody tr", has_text=sample_id).wait_for()
    records = httpx.get(f"{url}/feedback").json()["records"]
    mine = [r for r in records if r["decision"]["sample_id"] == sample_id]
    assert len(mine) == 1 and mine[0]["verdict"] == verdict and mine[0]["who"] == "anna"
    assert mine[0]["note"] == "dust on the lens"
    assert page.evaluate("localStorage.getItem('patchbank.reviewer')") == "anna"
    shoot(page, "review")


def test_api_docs_work_offline(tab: Tab, url: str) -> None:
    page = tab.page
    page.goto(url + "/docs")
    op = page.locator(".opblock-post", has=page.locator(".opblock-summary-path", has_text="/score"))
    op.first.wait_for()
    assert "POST" in op.first.locator(".opblock-summary-method").inner_text()
    shoot(page, "docs")
    complaints: list[str] = []
    page.on("console", lambda m: complaints.append(m.text) if m.type == "error" else None)
    page.goto(url + "/redoc")
    page.get_by_text("Every loaded category with its bank").first.wait_for()
    shoot(page, "redoc", docs=False)
    # the one complaint: the policy kept Redoc's CDN logo out (no script was refused)
    assert all("logo-mini.svg" in c for c in complaints), complaints
    assert any(u.endswith("/static/vendor/redoc/redoc.standalone.js") for u in tab.urls)


def test_sign_in_when_keys_are_set(tab: Tab, fpfh_build: tuple[Path, BuildResult], tmp_path: Path) -> None:
    settings = ServiceSettings(
        banks=fpfh_build[0], device="cpu", log_json=False, api_keys=[KEY], feedback_dir=tmp_path
    )
    page = tab.page
    with live_server(create_app(settings)) as base:
        assert httpx.get(f"{base}/static/console/app.js").status_code == 200  # the pages need no key
        assert httpx.get(f"{base}/categories").status_code == 401
        page.goto(base + "/")
        page.locator("#login").wait_for()
        shoot(page, "sign-in")
        page.fill("#login-key", "wrong")
        page.press("#login-key", "Enter")
        page.locator("#login-error:has-text('API key')").wait_for()
        page.fill("#login-key", KEY)
        page.press("#login-key", "Enter")
        page.locator(f'#categories tr[data-category="{CATEGORY}"]').wait_for()
        assert page.is_hidden("#login")
        assert page.evaluate("sessionStorage.getItem('patchbank.apiKey')") == KEY
    assert all(KEY not in u for u in tab.urls), "the key went into an address"
    sent = [k for u, k in zip(tab.urls, tab.api_keys, strict=True) if u.endswith("/categories")]
    assert sent[-1] == KEY


def test_only_the_console_files_are_public() -> None:
    gate = KeyGate(None, [KEY], frozenset({"/"}), ("/static/",))  # type: ignore[arg-type]
    assert gate.is_public("/") and gate.is_public("/static/console/app.js")
    assert not gate.is_public("/static/../categories") and not gate.is_public("/static")
    assert not gate.is_public("/categories") and not gate.is_public("/staticx/app.js")


def test_points_for_the_3d_view(url: str, part: SampleRef) -> None:
    """POST /console/points: every valid point of a small cloud, an even 50 000 of a large one, each with its
    pixel, in metres (checked against the file's own arrays)."""

    def points(name: str, data: bytes, **form: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        r = httpx.post(f"{url}/console/points", data=form, files={"xyz": (name, data)}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        xyz = np.frombuffer(base64.b64decode(body["points"]), "<f4").reshape(body["count"], 3)
        return body, xyz, np.frombuffer(base64.b64decode(body["pixels"]), "<u4")

    cloud = tifffile.imread(part.xyz)
    body, xyz, pixels = points(part.xyz.name, part.xyz.read_bytes(), category=CATEGORY)
    valid = (cloud != 0).all(axis=-1)
    assert (body["width"], body["height"]) == (cloud.shape[1], cloud.shape[0])
    assert body["valid"] == body["count"] == valid.sum()
    np.testing.assert_array_equal(pixels, np.flatnonzero(valid))
    np.testing.assert_array_equal(xyz, cloud.reshape(-1, 3)[pixels])

    rng = np.random.default_rng(0)
    big = rng.uniform(100, 200, (300, 400, 3)).astype(np.float32)  # millimetres
    big[:10] = 0  # 4 000 missing points
    buf = io.BytesIO()
    np.save(buf, big)
    body, xyz, pixels = points("big.npy", buf.getvalue(), xyz_unit="mm")
    assert body["valid"] == 290 * 400 and body["count"] == 50_000
    assert len(np.unique(pixels)) == 50_000 and pixels.min() >= 10 * 400
    np.testing.assert_allclose(xyz, big.reshape(-1, 3)[pixels] / 1000, rtol=1e-6)
    gaps = np.diff(pixels)  # evenly spread over the part: no stretch of it left out
    assert gaps.max() <= 3

    bad = httpx.post(f"{url}/console/points", files={"xyz": ("x.npy", b"not a cloud")}, timeout=60)
    assert bad.status_code == 400 and "xyz" in bad.json()["detail"]


def test_inspect_scores_a_part_from_the_sample_folder(
    tab: Tab, fpfh_build: tuple[Path, BuildResult], demo_root: Path, tmp_path: Path
) -> None:
    settings = ServiceSettings(
        banks=fpfh_build[0], device="cpu", log_json=False, feedback_dir=tmp_path, console_samples=demo_root
    )
    with live_server(create_app(settings)) as base:
        listed = httpx.get(f"{base}/console/samples", timeout=30).json()
        assert {"category": CATEGORY, "name": "test/hole/000"} in [
            {"category": p["category"], "name": p["name"]} for p in listed
        ]
        for path in ("../" * 8 + "etc/passwd", str(demo_root / CATEGORY / "test"), f"{CATEGORY}/test"):
            r = httpx.get(f"{base}/console/samples/file", params={"path": path}, timeout=30)
            assert r.status_code == 404, (path, r.status_code)
        page = tab.page
        page.goto(base + "/#inspect")
        page.locator("#inspect-sample-field").wait_for()
        index = next(i for i, p in enumerate(listed) if p["name"] == "test/hole/000")
        page.select_option("#inspect-sample", str(index))
        page.wait_for_function("document.getElementById('inspect-xyz').files.length === 1")
        assert page.input_value("#inspect-id") == "test/hole/000"
        page.click("#inspect-submit")
        page.locator("#inspect-result").wait_for()
        ref = next(r for r in list_samples(demo_root, CATEGORY, "test") if r.name == "test/hole/000")
        expected = score(base, ref)
        assert page.inner_text("#decision") == ("NG" if expected["is_anomalous"] else "OK")
        assert f"{expected['image_score']:.3f}" in page.inner_text("#score-line")


@pytest.fixture(scope="module")
def points_url(point_build: tuple[Path, Path]) -> Iterator[str]:
    """A service with the session's 3D-only bank."""
    settings = ServiceSettings(banks=point_build[1], device="cpu", log_json=False)
    with live_server(create_app(settings)) as base:
        yield base


def test_inspect_scores_a_cloud_alone_for_a_3d_only_bank(
    tab: Tab, points_url: str, point_build: tuple[Path, Path]
) -> None:
    ref = next(r for r in list_point_samples(point_build[0], POINT_PART, "test") if r.kind != "good")
    page = tab.page
    page.goto(points_url + "/#inspect")
    page.locator(f'#inspect-category option[value="{POINT_PART}"]').wait_for(state="attached")
    page.select_option("#inspect-category", POINT_PART)
    assert not page.is_visible("#inspect-rgb")  # a 3D-only bank takes the cloud alone
    page.set_input_files("#inspect-xyz", ref.path)
    page.click("#inspect-submit")
    page.locator("#inspect-result").wait_for()
    page.locator("#view3d canvas, #view3d-note:has-text('3D view')").first.wait_for()

    r = httpx.post(  # the same cloud through the API
        f"{points_url}/score",
        data={"category": POINT_PART},
        files={"xyz": (ref.path.name, ref.path.read_bytes())},
    )
    expected = r.json()
    assert page.inner_text("#decision") == ("NG" if expected["is_anomalous"] else "OK")
    line = page.inner_text("#score-line")
    assert (
        f"{expected['image_score']:.3f}" in line and f"peak point #{expected['points']['peak_index']}" in line
    )
    assert f"{expected['points']['above_threshold']:,} of {POINT_COUNT:,} points above" in line
    assert not page.is_visible("#overlay-figure") and not page.is_visible("#regions-section")
    assert "coloured by their own scores" in page.inner_text("#view3d-note")
    shoot(page, "inspect-points", docs=False)
