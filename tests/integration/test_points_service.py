"""A 3D-only bank served beside an RGB + 3D one, through a live uvicorn: POST /score with a point cloud alone
answers one score per point of the file (the library's own scores), the object score and the decision; the
errors that belong to each kind of bank; the Python client, the ``score`` command and the console's points."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from patchbank.bank import load_bank
from patchbank.points.data import PointSampleRef, list_point_samples, read_point_sample
from patchbank.points.scorer import load_point_scorer
from patchbank_builder.build import BuildResult
from patchbank_client import PatchbankClient
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY
from tests.integration.conftest import POINT_COUNT as POINTS
from tests.integration.conftest import POINT_PART as PART


@dataclass(frozen=True)
class Served:
    url: str
    banks: Path
    defect: PointSampleRef  # a defective test cloud
    good: PointSampleRef


@pytest.fixture(scope="module")
def served(
    fpfh_build: tuple[Path, BuildResult],
    point_build: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """The session's FPFH bank and its 3D-only bank, in one banks folder."""
    data, point_banks = point_build
    banks = tmp_path_factory.mktemp("points-service") / "banks"
    shutil.copytree(fpfh_build[0], banks)
    shutil.copytree(point_banks / PART, banks / PART)
    tests = list_point_samples(data, PART, "test")
    defect = next(r for r in tests if r.kind != "good")
    good = next(r for r in tests if r.kind == "good")
    settings = ServiceSettings(banks=banks, device="cpu", log_json=False)
    with live_server(create_app(settings)) as base:
        yield Served(base, banks, defect, good)


def _library_scores(banks: Path, ref: PointSampleRef) -> tuple[np.ndarray, float]:
    scorer = load_point_scorer(load_bank(banks, PART))
    points, _ = read_point_sample(ref)
    pred = scorer.predict([points])[0]
    return pred.point_scores, pred.object_score


def _post(url: str, files: dict[str, tuple[str, bytes]], **data: str) -> httpx.Response:
    return httpx.post(f"{url}/score", data={"category": PART, **data}, files=files, timeout=60)


def test_a_cloud_alone_gets_a_score_per_point(served: Served) -> None:
    ref = served.defect
    r = _post(served.url, {"xyz": (ref.path.name, ref.path.read_bytes())}, sample_id="part-9")
    assert r.status_code == 200, r.text
    body = r.json()
    scores, object_score = _library_scores(served.banks, ref)  # the library's scores of the same file
    pts = body["points"]
    assert pts["count"] == len(scores) == POINTS and pts["dtype"] == "float16"
    got = np.frombuffer(base64.b64decode(pts["data"]), "<f2").astype(np.float32)
    np.testing.assert_allclose(got, scores, rtol=1e-3, atol=1e-6)  # float16 on the wire
    assert body["image_score"] == pytest.approx(object_score) == pytest.approx(float(scores.max()))
    assert pts["peak_index"] == int(np.argmax(got))
    assert pts["above_threshold"] == int((scores > body["pixel_threshold"]).sum())
    points, _ = read_point_sample(ref)
    np.testing.assert_allclose(pts["peak_xyz"], points[pts["peak_index"]], rtol=1e-6)
    assert body["is_anomalous"] == (object_score > body["threshold"])
    assert body["anomaly_map"] is None and body["peak"] is None and body["regions"] == []
    assert body["sample_id"] == "part-9" and body["timings_ms"]["total"] > 0
    info = httpx.get(f"{served.url}/categories/{PART}").json()
    assert info["input"] == "points" and info["threshold"] == body["threshold"]
    assert httpx.get(f"{served.url}/categories/{CATEGORY}").json()["input"] == "image"
    recent = httpx.get(f"{served.url}/recent", params={"category": PART}).json()
    assert any(d["sample_id"] == "part-9" for d in recent["decisions"])


def test_map_none_leaves_the_points_out(served: Served) -> None:
    ref = served.good
    r = _post(served.url, {"xyz": (ref.path.name, ref.path.read_bytes())}, map="none")
    assert r.status_code == 200, r.text
    assert r.json()["points"] is None


def test_each_kind_of_bank_refuses_the_other_kinds_input(served: Served, demo_root: Path) -> None:
    cloud = served.good.path.read_bytes()
    png = next((demo_root / CATEGORY / "test" / "good" / "rgb").iterdir()).read_bytes()
    with_rgb = _post(served.url, {"xyz": ("a.pcd", cloud), "rgb": ("a.png", png)})
    assert with_rgb.status_code == 400 and "3D-only" in with_rgb.json()["detail"]
    batch = httpx.post(
        f"{served.url}/score/batch",
        data={"category": PART},
        files=[("rgb", ("a.png", png)), ("xyz", ("a.pcd", cloud))],
        timeout=60,
    )
    assert batch.status_code == 400 and "a score request of its own" in batch.json()["detail"]
    no_rgb = httpx.post(
        f"{served.url}/score", data={"category": CATEGORY}, files={"xyz": ("a.pcd", cloud)}, timeout=60
    )
    assert no_rgb.status_code == 400 and "rgb is required" in no_rgb.json()["detail"]


def test_bad_clouds_get_a_4xx_with_a_reason(served: Served) -> None:
    points, _ = read_point_sample(served.good)
    nan = points.copy()
    nan[7] = np.nan
    ply = _ply(nan)
    r = _post(served.url, {"xyz": ("nan.ply", ply)})
    assert r.status_code == 400 and "finite" in r.json()["detail"]
    bomb = b"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
    bomb += b"WIDTH 900000000\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 900000000\nDATA binary\n" + bytes(
        120
    )
    r = _post(served.url, {"xyz": ("bomb.pcd", bomb)})
    assert r.status_code == 413 and "points" in r.json()["detail"]
    r = _post(served.url, {"xyz": ("junk.pcd", b"not a cloud at all")})
    assert r.status_code == 400


def _ply(points: np.ndarray) -> bytes:
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\nend_header\n"
    )
    return header.encode() + np.ascontiguousarray(points, "<f4").tobytes()


def test_the_client_and_the_score_command(served: Served, tmp_path: Path) -> None:
    ref = served.defect
    scores, _ = _library_scores(served.banks, ref)
    points, _ = read_point_sample(ref)
    with PatchbankClient(served.url) as client:
        by_file = client.score_points(PART, ref.path)
        by_array = client.score_points(PART, points, per_point=False)
        assert [c.input for c in client.categories() if c.name == PART] == ["points"]
    np.testing.assert_allclose(by_file.point_scores(), scores, rtol=1e-3, atol=1e-6)
    assert by_array.point_scores() is None and by_array.image_score == pytest.approx(by_file.image_score)
    out = tmp_path / "scores.npy"
    args = ["--url", served.url, "--category", PART, "--xyz", str(ref.path), "--save-points", str(out)]
    cli = subprocess.run(
        [sys.executable, "-m", "patchbank_client.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"of {POINTS:,} points above" in cli.stdout and f"{PART}/" in cli.stdout
    np.testing.assert_allclose(np.load(out), scores, rtol=1e-3, atol=1e-6)


def test_the_console_gets_the_cloud_in_file_order(served: Served) -> None:
    ref = served.defect
    r = httpx.post(
        f"{served.url}/console/points",
        data={"category": PART},
        files={"xyz": (ref.path.name, ref.path.read_bytes())},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["height"] == 1 and body["width"] == body["valid"] == body["count"] == POINTS
    pixels = np.frombuffer(base64.b64decode(body["pixels"]), "<u4")
    coords = np.frombuffer(base64.b64decode(body["points"]), "<f4").reshape(-1, 3)
    points, _ = read_point_sample(ref)
    np.testing.assert_array_equal(coords, points[pixels].astype(np.float32))
