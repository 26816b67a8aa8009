"""``map=overlay`` and ``peak`` end to end: the real service under uvicorn draws the map over the part, names the
map's peak in input pixels (inside the hole's region), and the client and the ``score`` command save overlays.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from patchbank.data import SampleRef, list_samples
from patchbank_builder.build import BuildResult
from patchbank_client import PatchbankClient
from patchbank_client.cli import main
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY

SMALL_SIDE = 80  # max_map_side of the second service: the 160 x 120 demo images' maps are 80 x 60 there


@pytest.fixture(scope="module")
def url(fpfh_build: tuple[Path, BuildResult]) -> Iterator[str]:
    with live_server(create_app(ServiceSettings(banks=fpfh_build[0], device="cpu", log_json=False))) as base:
        yield base


@pytest.fixture(scope="module")
def small_url(fpfh_build: tuple[Path, BuildResult]) -> Iterator[str]:
    settings = ServiceSettings(banks=fpfh_build[0], device="cpu", log_json=False, max_map_side=SMALL_SIDE)
    with live_server(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="module")
def hole(demo_root: Path) -> SampleRef:
    (ref,) = list_samples(demo_root, CATEGORY, "test", kinds=["hole"])
    return ref


def score(url: str, ref: SampleRef, fmt: str) -> dict:
    r = httpx.post(
        f"{url}/score",
        data={"category": CATEGORY, "map": fmt},
        files={"rgb": ("rgb.png", ref.rgb.read_bytes()), "xyz": ("xyz.tiff", ref.xyz.read_bytes())},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    image.load()
    return image


def inside(peak: dict, bbox: list[int]) -> bool:
    x0, y0, x1, y1 = bbox
    return x0 <= peak["x"] < x1 and y0 <= peak["y"] < y1


def test_overlay_answer_and_peak(url: str, hole: SampleRef) -> None:
    with Image.open(hole.rgb) as im:
        width, height = im.size
    body = score(url, hole, "overlay")
    amap = body["anomaly_map"]
    assert amap["format"] == "overlay" and (amap["width"], amap["height"]) == (width, height)
    image = png(amap["data"])
    assert image.height == height and image.width > width  # the map's size, plus the colour bar

    peak = body["peak"]
    assert 0 <= peak["x"] < width and 0 <= peak["y"] < height
    assert body["regions"]  # the FPFH bank finds the hole (its image score may stay under the threshold)
    assert inside(peak, body["regions"][0]["bbox"])
    with Image.open(hole.gt) as gt:
        defect = np.asarray(gt) > 0
    near = defect[max(0, peak["y"] - 2) : peak["y"] + 3, max(0, peak["x"] - 2) : peak["x"] + 3]
    assert near.any()  # the peak is on the hole (within 2 pixels of its ground truth)
    assert peak["score"] == pytest.approx(body["regions"][0]["peak_score"])

    # the peak is the float map's maximum (an independent reading of the array answer)
    array = score(url, hole, "array")
    values = np.frombuffer(base64.b64decode(array["anomaly_map"]["data"]), "<f2").reshape(height, width)
    y, x = np.unravel_index(int(np.argmax(values)), values.shape)
    assert values[y, x] == values[peak["y"], peak["x"]]
    assert peak["score"] == pytest.approx(float(values[y, x]), rel=1e-3)
    assert array["peak"] == peak


def test_every_answer_has_a_peak(url: str, demo_root: Path) -> None:
    (good,) = list_samples(demo_root, CATEGORY, "test", kinds=["good"])
    for fmt in ("none", "png"):
        body = score(url, good, fmt)
        assert set(body["peak"]) == {"x", "y", "score"} and body["peak"]["score"] >= 0


def test_overlay_of_a_reduced_map(small_url: str, hole: SampleRef) -> None:
    """The map is bounded by max_map_side; the overlay has the map's size, the peak stays in input pixels."""
    body = score(small_url, hole, "overlay")
    amap = body["anomaly_map"]
    assert (amap["width"], amap["height"]) == (SMALL_SIDE, 60)
    assert png(amap["data"]).height == 60
    peak = body["peak"]
    assert 0 <= peak["x"] < 160 and 0 <= peak["y"] < 120
    assert body["regions"] and inside(peak, body["regions"][0]["bbox"])


def test_schema_documents_the_scale(url: str) -> None:
    schema = httpx.get(f"{url}/openapi.json").json()
    text = json.dumps(schema)
    assert "twice it and above saturated" in text
    assert "overlay" in schema["components"]["schemas"]["AnomalyMap"]["properties"]["format"]["enum"]
    assert "peak" in schema["components"]["schemas"]["ScoreResponse"]["required"]


def test_client_saves_the_overlay(url: str, hole: SampleRef, tmp_path: Path) -> None:
    with PatchbankClient(url) as client:
        result = client.score(CATEGORY, hole.rgb, hole.xyz, map="overlay")
        assert result.peak is not None and result.regions
        x0, y0, x1, y1 = result.regions[0].bbox
        assert x0 <= result.peak.x < x1 and y0 <= result.peak.y < y1
        saved = result.save_overlay(tmp_path / "o" / "hole.png")
        with Image.open(saved) as im:
            assert im.format == "PNG" and im.height == 120 and im.width > 160
        plain = client.score(CATEGORY, hole.rgb, hole.xyz, map="png")
        with pytest.raises(ValueError, match='map="overlay"'):
            plain.save_overlay(tmp_path / "x.png")


def test_score_dir_writes_one_overlay_per_sample(
    url: str, demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_dir = demo_root / CATEGORY / "test"
    out, overlays = tmp_path / "results.jsonl", tmp_path / "overlays"
    argv = ["--url", url, "--category", CATEGORY, "--dir", str(test_dir), "--out", str(out)]
    assert main([*argv, "--overlays", str(overlays)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    refs = list_samples(demo_root, CATEGORY, "test")
    assert len(records) == len(refs) > 1
    written = sorted(p.relative_to(overlays).as_posix() for p in overlays.rglob("*.png"))
    assert written == sorted(f"{r.kind}/{r.rgb.name}" for r in refs)
    for record in records:
        assert "anomaly_map" not in record and "peak" in record  # the picture is in its file, not the JSON
        with Image.open(record["overlay"]) as im:
            assert im.format == "PNG" and im.height == 120
    capsys.readouterr()
    assert main([*argv, "--overlays", str(overlays), "--map", "array"]) == 2
    assert "--overlays" in capsys.readouterr().err

    # one sample: --save-map writes the overlay when it is asked for
    single = ["--url", url, "--category", CATEGORY, "--rgb", str(refs[0].rgb), "--xyz", str(refs[0].xyz)]
    assert main([*single, "--map", "overlay", "--save-map", str(tmp_path / "one.png")]) == 0
    with Image.open(tmp_path / "one.png") as im:
        assert im.height == 120 and im.width > 160
    assert main([*single, "--save-map", str(tmp_path / "heat.png")]) == 0  # the heatmap, as before
    with Image.open(tmp_path / "heat.png") as im:
        assert im.size == (160, 120) and im.mode == "P"
