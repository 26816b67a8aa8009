"""The live view and review against a real service: GET /recent (order, since, counts, histogram), the
bounded store of recent samples (/recent/{id}/rgb and /map), POST and GET /feedback (folders on disk,
retention), the client's methods, and two replicas sharing their decisions through a real Redis."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from patchbank.data import SampleRef, list_samples
from patchbank.regions import heatmap_png
from patchbank_builder.build import BuildResult
from patchbank_client import AsyncPatchbankClient, NotFound, PatchbankClient
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY
from tests.integration.conftest import RedisServer

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")


@pytest.fixture
def banks(fpfh_build: tuple[Path, BuildResult], tmp_path: Path) -> Path:
    dst = tmp_path / "banks"
    shutil.copytree(fpfh_build[0] / CATEGORY, dst / CATEGORY)
    return dst


def refs(demo_root: Path) -> list[SampleRef]:
    return list_samples(demo_root, CATEGORY, "test")  # a good sample and one of each defect kind


def score(
    url: str, ref: SampleRef, sample_id: str, map: str = "png", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    files = {"rgb": ("rgb.png", ref.rgb.read_bytes()), "xyz": ("xyz.tiff", ref.xyz.read_bytes())}
    data = {"category": CATEGORY, "map": map, "sample_id": sample_id}
    r = httpx.post(f"{url}/score", data=data, files=files, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def recent(url: str, headers: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    r = httpx.get(f"{url}/recent", params=params, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(data)).size


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_recent_decisions_samples_and_feedback(banks: Path, demo_root: Path) -> None:
    settings = ServiceSettings(banks=banks, device="cpu", recent_samples=4, feedback_keep=2, queue_size=32)
    app = create_app(settings)
    samples = refs(demo_root)
    with live_server(app) as url:
        empty = recent(url)
        assert empty["decisions"] == [] and empty["cursor"] is None and empty["source"] == "local"
        assert (
            empty["categories"][CATEGORY]["ok_last_hour"]
            == empty["categories"][CATEGORY]["ng_last_hour"]
            == 0
        )

        answers = [
            score(url, samples[i % len(samples)], f"p-{i}", m) for i, m in enumerate(["png", "none", "png"])
        ]
        first = recent(url)
        assert [d["sample_id"] for d in first["decisions"]] == ["p-0", "p-1", "p-2"]
        assert first["cursor"] == first["decisions"][-1]["id"]
        batch_files = [("rgb", ("rgb.png", samples[i % len(samples)].rgb.read_bytes())) for i in (3, 4)] + [
            ("xyz", ("xyz.tiff", samples[i % len(samples)].xyz.read_bytes())) for i in (3, 4)
        ]
        r = httpx.post(
            f"{url}/score/batch",
            data={"category": CATEGORY, "map": "array", "sample_id": ["p-3", "p-4"]},
            files=batch_files,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        answers += r.json()["results"]

        # the whole view: in order, each decision as answered, counts and histogram from the answers
        view = recent(url)
        decisions = view["decisions"]
        assert [d["sample_id"] for d in decisions] == [f"p-{i}" for i in range(5)]
        assert [d["seq"] for d in decisions] == sorted(d["seq"] for d in decisions)
        assert len({d["id"] for d in decisions}) == 5 and {d["replica"] for d in decisions} == {
            view["replica"]
        }
        for d, a in zip(decisions, answers, strict=True):
            assert d["image_score"] == pytest.approx(a["image_score"])
            assert (d["bank_version"], d["threshold"]) == (a["bank_version"], a["threshold"])
            assert d["decision"] == ("NG" if a["is_anomalous"] else "OK")
            assert d["regions"] == len(a["regions"])
            assert d["peak"] == (max(g["peak_score"] for g in a["regions"]) if a["regions"] else None)
        panel = view["categories"][CATEGORY]
        assert panel["ng_last_hour"] == sum(a["is_anomalous"] for a in answers)
        assert panel["ok_last_hour"] == sum(not a["is_anomalous"] for a in answers)
        hist = panel["histogram"]
        assert hist["threshold"] == answers[-1]["threshold"] and hist["threshold"] in hist["edges"]
        assert sum(hist["counts"]) == hist["count"] == 5 and len(hist["counts"]) == len(hist["edges"]) - 1
        expected = [0] * len(hist["counts"])
        for a in answers:  # bins (lower, upper], counted by hand
            expected[
                next(
                    i
                    for i in range(len(expected))
                    if hist["edges"][i] < a["image_score"] <= hist["edges"][i + 1]
                )
            ] += 1
        assert hist["counts"] == expected

        # since: only newer, paged by limit
        newer = recent(url, since=first["cursor"])
        assert [d["sample_id"] for d in newer["decisions"]] == ["p-3", "p-4"] and not newer["more"]
        page = recent(url, since=first["cursor"], limit=1)
        assert [d["sample_id"] for d in page["decisions"]] == ["p-3"] and page["more"]
        rest = recent(url, since=page["cursor"], limit=1)
        assert [d["sample_id"] for d in rest["decisions"]] == ["p-4"] and not rest["more"]
        assert recent(url, since=rest["cursor"])["decisions"] == []

        # the store keeps the last 4 samples: p-0's files are gone, the others' are the uploads themselves
        ids = {d["sample_id"]: d["id"] for d in decisions}
        assert [d["has_sample"] for d in decisions] == [False, True, True, True, True]
        gone = httpx.get(f"{url}/recent/{ids['p-0']}/rgb")
        assert gone.status_code == 404 and "evicted" in gone.json()["detail"]
        rgb = httpx.get(f"{url}/recent/{ids['p-2']}/rgb")
        assert rgb.status_code == 200 and rgb.headers["content-type"] == "image/png"
        assert rgb.content == samples[2 % len(samples)].rgb.read_bytes()
        kept, nbytes = app.state.patchbank.review.recent.stored
        assert kept == 4
        carried = [len((a.get("anomaly_map") or {}).get("data", "")) for a in answers[1:]]
        uploads = [samples[i % len(samples)] for i in range(1, 5)]
        assert nbytes == sum(len(s.rgb.read_bytes()) + len(s.xyz.read_bytes()) for s in uploads) + sum(
            carried
        )

        # maps: the PNG the answer carried, the float16 array drawn as the library draws it, overlays, thumbnails
        no_map = httpx.get(f"{url}/recent/{ids['p-1']}/map")
        assert no_map.status_code == 404 and "map=none" in no_map.json()["detail"]
        heat = httpx.get(f"{url}/recent/{ids['p-2']}/map", params={"kind": "heatmap"})
        assert heat.content == base64.b64decode(answers[2]["anomaly_map"]["data"])
        arr = answers[3]["anomaly_map"]
        values = np.frombuffer(base64.b64decode(arr["data"]), "<f2").reshape(arr["shape"]).astype(np.float32)
        heat = httpx.get(f"{url}/recent/{ids['p-3']}/map", params={"kind": "heatmap"})
        assert heat.content == heatmap_png(values, answers[3]["pixel_threshold"])
        overlay = httpx.get(f"{url}/recent/{ids['p-3']}/map")
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
        width, height = png_size(overlay.content)  # the map's size, a colour bar beside it
        assert height == arr["height"] and width > arr["width"] and overlay.content != heat.content
        thumb = httpx.get(f"{url}/recent/{ids['p-2']}/map", params={"max_side": 32})
        assert max(png_size(thumb.content)) <= 32

        # feedback: a folder per record beside the banks, with the sample's files as they were sent
        r = httpx.post(
            f"{url}/feedback",
            json={"decision_id": ids["p-2"], "verdict": "false_alarm", "who": "anna", "note": "dust"},
        )
        assert r.status_code == 201, r.text
        record = r.json()
        folder = banks / ".feedback" / record["path"]
        assert folder.parent == banks / ".feedback" / CATEGORY
        on_disk = json.loads((folder / "record.json").read_text())
        assert on_disk == record and record["files"] == {"rgb": "rgb.png", "xyz": "xyz.tiff"}
        assert (folder / "rgb.png").read_bytes() == samples[2 % len(samples)].rgb.read_bytes()
        assert (folder / "xyz.tiff").read_bytes() == samples[2 % len(samples)].xyz.read_bytes()
        d = record["decision"]
        assert (d["category"], d["bank_version"], d["sample_id"]) == (
            CATEGORY,
            answers[2]["bank_version"],
            "p-2",
        )
        assert (d["image_score"], d["threshold"]) == (
            pytest.approx(answers[2]["image_score"]),
            answers[2]["threshold"],
        )
        umask = os.umask(0)
        os.umask(umask)
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
        assert httpx.get(f"{url}/categories").json()["categories"][0]["name"] == CATEGORY  # banks untouched

        by_sample = httpx.post(
            f"{url}/feedback",
            json={"sample_id": "p-3", "category": CATEGORY, "verdict": "confirmed", "who": "mes"},
        )
        assert by_sample.status_code == 201 and by_sample.json()["decision"]["id"] == ids["p-3"]
        evicted = httpx.post(
            f"{url}/feedback", json={"decision_id": ids["p-0"], "verdict": "confirmed", "who": "x"}
        )
        assert evicted.status_code == 201 and evicted.json()["files"] == {}
        assert "evicted" in evicted.json()["files_missing"]

        # retention: 2 per category, the oldest deleted
        listed = httpx.get(f"{url}/feedback", params={"category": CATEGORY}).json()
        assert listed["source"] == "local"
        assert [x["id"] for x in listed["records"]] == [evicted.json()["id"], by_sample.json()["id"]]
        assert sorted(p.name for p in (banks / ".feedback" / CATEGORY).iterdir()) == sorted(
            x["id"] for x in listed["records"]
        )
        assert not folder.exists()

        # refused: unknown decision, a bad verdict, two ways of naming it, a path for an id
        unknown = httpx.post(
            f"{url}/feedback", json={"decision_id": "00000000-1", "verdict": "confirmed", "who": "x"}
        )
        assert unknown.status_code == 404 and "no recent decision" in unknown.json()["detail"]
        for body in (
            {"decision_id": ids["p-3"], "verdict": "maybe", "who": "x"},
            {
                "decision_id": ids["p-3"],
                "sample_id": "p-3",
                "category": CATEGORY,
                "verdict": "confirmed",
                "who": "x",
            },
            {"decision_id": "../../etc", "verdict": "confirmed", "who": "x"},
            {"decision_id": ids["p-3"], "verdict": "confirmed", "who": ""},
            {"sample_id": "p-3", "category": "../x", "verdict": "confirmed", "who": "x"},
        ):
            assert httpx.post(f"{url}/feedback", json=body).status_code == 422, body
        assert httpx.get(f"{url}/recent/../../etc/passwd/rgb").status_code == 404

        # the client, sync and async
        with PatchbankClient(url) as client:
            view2 = client.recent(category=CATEGORY)
            assert [d.sample_id for d in view2.decisions] == [f"p-{i}" for i in range(5)]
            assert client.recent(since=view2.cursor).decisions == ()
            got = client.feedback(view2.decisions[-1].id, verdict="missed_defect", who="lea", note="scratch")
            assert got.files["rgb"] == "rgb.png" and got.decision["sample_id"] == "p-4"
            assert client.feedback_records(CATEGORY)[0].id == got.id
            with pytest.raises(NotFound):
                client.feedback("00000000-9", verdict="confirmed", who="x")

        async def twins() -> None:
            async with AsyncPatchbankClient(url) as aclient:
                view3 = await aclient.recent(limit=2)
                assert [d.sample_id for d in view3.decisions] == ["p-3", "p-4"]
                rec = await aclient.feedback(
                    sample_id="p-4", category=CATEGORY, verdict="confirmed", who="mes"
                )
                assert (await aclient.feedback_records(limit=1))[0].id == rec.id

        asyncio.run(twins())


def test_recent_samples_are_bounded_by_bytes(banks: Path, demo_root: Path, tmp_path: Path) -> None:
    ref = refs(demo_root)[0]
    size = len(ref.rgb.read_bytes()) + len(ref.xyz.read_bytes())  # map=none: the uploads only
    settings = ServiceSettings(
        banks=banks,
        device="cpu",
        api_keys=["line-3"],
        recent_samples=20,
        recent_samples_mb=1.5 * size / 2**20,
        feedback_dir=tmp_path / "fb",
    )
    app = create_app(settings)
    key = {"X-API-Key": "line-3"}
    with live_server(app) as url:
        for i in range(3):
            score(url, ref, f"b-{i}", "none", key)
        decisions = recent(url, key)["decisions"]
        assert [d["has_sample"] for d in decisions] == [False, False, True]
        rgb = [f"{url}/recent/{d['id']}/rgb" for d in decisions]
        assert [httpx.get(u, headers=key).status_code for u in rgb] == [404, 404, 200]
        assert app.state.patchbank.review.recent.stored == (1, size)
        body = {"decision_id": decisions[2]["id"], "verdict": "confirmed", "who": "x"}
        for locked in (
            httpx.get(f"{url}/recent"),
            httpx.get(rgb[2]),
            httpx.post(f"{url}/feedback", json=body),
        ):
            assert locked.status_code == 401  # the live view and review need a key like scoring
        r = httpx.post(f"{url}/feedback", json=body, headers=key)
        assert r.status_code == 201 and (tmp_path / "fb" / r.json()["path"] / "xyz.tiff").is_file()
        shutil.rmtree(tmp_path / "fb" / CATEGORY)
        (tmp_path / "fb" / CATEGORY).write_text("a file where the category's folder goes")
        r = httpx.post(f"{url}/feedback", json=body, headers=key)
        assert r.status_code == 503 and "PATCHBANK_FEEDBACK_DIR" in r.json()["detail"]


@needs_redis
def test_replicas_share_decisions_and_feedback_through_redis(
    redis_server: RedisServer, banks: Path, demo_root: Path, tmp_path: Path
) -> None:
    ref = refs(demo_root)[0]

    def settings(name: str) -> ServiceSettings:
        return ServiceSettings(
            banks=banks,
            device="cpu",
            REDIS_URL=redis_server.url,
            sync_interval_s=0.3,
            feedback_dir=tmp_path / name,
        )

    with live_server(create_app(settings("a"))) as a, live_server(create_app(settings("b"))) as b:
        wait_for(lambda: httpx.get(f"{a}/readyz").json()["redis"] == "ok")
        wait_for(lambda: httpx.get(f"{b}/readyz").json()["redis"] == "ok")
        answer = score(a, ref, "a-1")
        wait_for(lambda: [d["sample_id"] for d in recent(b)["decisions"]] == ["a-1"])
        view = recent(b)
        seen = view["decisions"][0]
        assert view["source"] == "redis" and seen["replica"] != view["replica"]
        assert seen["replica"] == recent(a)["replica"] and not seen["has_sample"]
        assert seen["image_score"] == pytest.approx(answer["image_score"], rel=1e-6)
        panel = view["categories"][CATEGORY]
        assert panel["ok_last_hour"] + panel["ng_last_hour"] == 1 and panel["histogram"]["count"] == 1
        elsewhere = httpx.get(f"{b}/recent/{seen['id']}/rgb")
        assert elsewhere.status_code == 404 and "not scored by this replica" in elsewhere.json()["detail"]
        assert httpx.get(f"{a}/recent/{seen['id']}/rgb").content == ref.rgb.read_bytes()

        score(b, ref, "b-1")
        wait_for(lambda: [d["sample_id"] for d in recent(a, since=view["cursor"])["decisions"]] == ["b-1"])
        both = recent(a)
        assert [d["sample_id"] for d in both["decisions"]] == ["a-1", "b-1"]
        assert [d["has_sample"] for d in both["decisions"]] == [True, False]

        on_b = httpx.post(
            f"{b}/feedback",
            json={"sample_id": "a-1", "category": CATEGORY, "verdict": "confirmed", "who": "x"},
        )
        assert on_b.status_code == 201 and on_b.json()["decision"]["id"] == seen["id"]
        assert on_b.json()["files"] == {} and "not scored by this replica" in on_b.json()["files_missing"]
        on_a = httpx.post(
            f"{a}/feedback", json={"decision_id": seen["id"], "verdict": "confirmed", "who": "y"}
        )
        assert on_a.status_code == 201 and (tmp_path / "a" / on_a.json()["path"] / "rgb.png").is_file()
        listed = httpx.get(f"{a}/feedback").json()
        assert listed["source"] == "redis"
        assert [x["id"] for x in listed["records"]] == [on_a.json()["id"], on_b.json()["id"]]
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        pointers = [f for _, f in client.xrange(f"patchbank:feedback:{CATEGORY}")]
        assert [p["path"] for p in pointers] == [on_b.json()["path"], on_a.json()["path"]]
