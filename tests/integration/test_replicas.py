"""Replicas sharing a real Redis server: hot bank swaps under load, Redis failures, idempotency, the score
stream, and safe publishing. Tests start Debian's redis-server on a free loopback port."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from patchbank import active
from patchbank import bank as bankfmt
from patchbank.cli import run_command
from patchbank.data import list_samples
from patchbank.errors import InputError
from patchbank_builder.build import BuildResult
from patchbank_builder.cli import PUBLISH
from patchbank_builder.publish import publish_version
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.replicas import request_digest
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY
from tests.integration.conftest import RedisServer

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")


@pytest.fixture
def banks(fpfh_build: tuple[Path, BuildResult], tmp_path: Path) -> Path:
    dst = tmp_path / "banks"
    shutil.copytree(fpfh_build[0] / CATEGORY, dst / CATEGORY)
    return dst


def sample(demo_root: Path) -> dict[str, tuple[str, bytes]]:
    ref = list_samples(demo_root, CATEGORY, "test")[0]
    return {"rgb": ("rgb.png", ref.rgb.read_bytes()), "xyz": ("xyz.tiff", ref.xyz.read_bytes())}


def settings(banks: Path, url: str) -> ServiceSettings:
    return ServiceSettings(banks=banks, device="cpu", REDIS_URL=url, sync_interval_s=0.3, queue_size=32)


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def new_version(banks: Path, evaluation: dict[str, object] | None = None) -> str:
    """A second version of the bank: the same index files, a new manifest (as recalibration makes)."""
    vdir = banks / CATEGORY / "v0001"
    manifest = bankfmt.read_manifest(vdir)
    if evaluation is not None:
        record = bankfmt.EvaluationRecord.model_validate(
            {
                "method": manifest.method,
                "n_test": 0,
                "per_defect": {},
                "threshold": manifest.thresholds.image,
                "false_reject_rate": 0.0,
                "miss_rate": 0.0,
                **evaluation,
            }
        )
        manifest = manifest.model_copy(update={"evaluation": record})
    return bankfmt.write_version(banks, manifest, bankfmt.copy_files_from(vdir), activate=False).version


def test_two_replicas_swap_banks_under_load(
    redis_server: RedisServer, banks: Path, demo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = sample(demo_root)
    with (
        live_server(create_app(settings(banks, redis_server.url))) as a,
        live_server(create_app(settings(banks, redis_server.url))) as b,
    ):
        wait_for(lambda: all(httpx.get(f"{u}/readyz").json()["redis"] == "ok" for u in (a, b)))
        answers: list[tuple[str, int, str]] = []
        stop = threading.Event()

        def keep_scoring() -> None:
            i = 0
            while not stop.is_set():
                url = (a, b)[i % 2]
                r = httpx.post(
                    f"{url}/score", data={"category": CATEGORY, "map": "none"}, files=upload, timeout=60
                )
                answers.append(
                    (url, r.status_code, r.json().get("bank_version", "") if r.status_code == 200 else r.text)
                )
                i += 1

        worker = threading.Thread(target=keep_scoring)
        worker.start()
        try:
            wait_for(lambda: len(answers) >= 2)
            v2 = new_version(banks)
            monkeypatch.setenv("REDIS_URL", redis_server.url)
            assert (
                run_command(
                    PUBLISH, ["--category", CATEGORY, "--version", v2, "--banks", str(banks), "--quiet"]
                )
                == 0
            )
            wait_for(
                lambda: all(
                    httpx.get(f"{u}/categories/{CATEGORY}").json()["bank_version"] == v2 for u in (a, b)
                )
            )
            count = len(answers)
            wait_for(lambda: len(answers) >= count + 2)
        finally:
            stop.set()
            worker.join(timeout=120)
    assert [code for _, code, _ in answers] == [200] * len(answers), answers
    for url in (a, b):
        versions = [v for u, _, v in answers if u == url]
        assert versions[0] == "v0001"
    assert any(v == v2 for _, _, v in answers)
    assert active.active_versions(redis.Redis.from_url(redis_server.url, decode_responses=True)) == {
        CATEGORY: v2
    }
    assert bankfmt.active_version(banks, CATEGORY) == v2


def test_scoring_survives_redis_going_away(redis_server: RedisServer, banks: Path, demo_root: Path) -> None:
    upload = sample(demo_root)
    with live_server(create_app(settings(banks, redis_server.url))) as url:
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["redis"] == "ok")
        redis_server.stop()
        r = httpx.post(f"{url}/score", data={"category": CATEGORY}, files=upload, timeout=60)
        assert r.status_code == 200
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["degraded"])
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200 and ready.json()["redis"] == "unreachable"
        assert (
            httpx.post(f"{url}/score", data={"category": CATEGORY}, files=upload, timeout=60).status_code
            == 200
        )
        wait_for(lambda: "patchbank_stream_dropped_total 2.0" in httpx.get(f"{url}/metrics").text)
        redis_server.start()  # comes back empty: the replica re-seeds the registry from its banks directory
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["redis"] == "ok")
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        assert active.active_versions(client) == {CATEGORY: "v0001"}
        assert (
            httpx.post(f"{url}/score", data={"category": CATEGORY}, files=upload, timeout=60).status_code
            == 200
        )
        wait_for(lambda: client.xlen(active.STREAM_PREFIX + CATEGORY) == 1)


def test_idempotency_and_score_stream(redis_server: RedisServer, banks: Path, demo_root: Path) -> None:
    upload = sample(demo_root)
    with live_server(create_app(settings(banks, redis_server.url))) as url:
        first = httpx.post(
            f"{url}/score",
            data={"category": CATEGORY, "map": "none", "sample_id": "p-1"},
            files=upload,
            headers={"Idempotency-Key": "plc-42"},
            timeout=60,
        )
        again = httpx.post(
            f"{url}/score",
            data={"category": CATEGORY, "map": "none", "sample_id": "p-1"},
            files=upload,
            headers={"Idempotency-Key": "plc-42"},
            timeout=60,
        )
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json()  # the stored answer, timings included: computed once
        other = httpx.post(
            f"{url}/score",
            data={"category": CATEGORY, "map": "none", "sample_id": "p-2"},
            files=upload,
            headers={"Idempotency-Key": "plc-42"},
            timeout=60,
        )
        assert other.status_code == 409 and "already used with different content" in other.json()["detail"]
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        wait_for(lambda: client.xlen(active.STREAM_PREFIX + CATEGORY) == 1)
        ((_, event),) = client.xrange(active.STREAM_PREFIX + CATEGORY)
        assert event["sample_id"] == "p-1" and event["bank_version"] == "v0001"
        assert float(event["score"]) == pytest.approx(first.json()["image_score"], rel=1e-5)
        assert {"decision", "latency_ms", "time"} <= set(event)


def test_publishing_refuses_a_worse_bank_and_prunes(redis_server: RedisServer, banks: Path) -> None:
    good = {"image_auroc": 0.90, "pixel_auroc": 0.95, "au_pro": 0.85}
    worse = {"image_auroc": 0.80, "pixel_auroc": 0.95, "au_pro": 0.85}
    v2 = new_version(banks, good)
    with pytest.raises(InputError, match="worse than the active v0001"):  # the built v0001 evaluated better
        publish_version(banks, CATEGORY, v2, redis_server.url)
    publish_version(banks, CATEGORY, v2, redis_server.url, force=True)
    v3 = new_version(banks, worse)
    with pytest.raises(
        InputError, match=r"refusing to publish puck/v0003: worse than the active v0002.*image_auroc"
    ):
        publish_version(banks, CATEGORY, v3, redis_server.url)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert active.active_versions(client) == {CATEGORY: v2}
    slightly = new_version(banks, {**good, "au_pro": 0.845})  # within the 0.01 tolerance
    publish_version(banks, CATEGORY, slightly, redis_server.url, keep=2)
    assert active.active_versions(client) == {CATEGORY: slightly}
    # keep=2 prunes all but the two newest, never the version that was active (v0002): v0001 goes
    assert bankfmt.versions(banks, CATEGORY) == [v2, v3, slightly]
    publish_version(banks, CATEGORY, v2, redis_server.url, force=True)  # rollback = publish the older one
    assert active.active_versions(client) == {CATEGORY: v2}


def test_a_replica_started_later_converges_to_the_registry(redis_server: RedisServer, banks: Path) -> None:
    """Redis names v0002 while the banks directory's ACTIVE still says v0001 (no message will come)."""
    v2 = new_version(banks)
    redis.Redis.from_url(redis_server.url).hset(active.ACTIVE_KEY, CATEGORY, v2)
    assert bankfmt.active_version(banks, CATEGORY) == "v0001"
    with live_server(create_app(settings(banks, redis_server.url))) as url:
        wait_for(lambda: httpx.get(f"{url}/categories/{CATEGORY}").json()["bank_version"] == v2)


def test_stored_answers_are_validated_and_bound_to_the_request(
    redis_server: RedisServer, banks: Path, demo_root: Path
) -> None:
    """A malformed, foreign or contradictory record in Redis is a miss (scored afresh, logged), never a 500
    nor an answer given verbatim."""
    upload = sample(demo_root)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    digest = request_digest(CATEGORY, "none", "p-1", None, None, upload["rgb"][1], upload["xyz"][1])
    with live_server(create_app(settings(banks, redis_server.url))) as url:

        def score(key: str) -> httpx.Response:
            return httpx.post(
                f"{url}/score",
                data={"category": CATEGORY, "map": "none", "sample_id": "p-1"},
                files=upload,
                headers={"Idempotency-Key": key},
                timeout=60,
            )

        truth = score("genuine").json()
        forged = dict(truth, is_anomalous=not truth["is_anomalous"])
        records = {
            "malformed": "{not json",
            "no-digest": json.dumps({"response": truth}),
            "not-an-answer": json.dumps({"digest": digest, "response": {"hello": 1}}),
            "contradicts-itself": json.dumps({"digest": digest, "response": forged}),
            "other-sample": json.dumps({"digest": digest, "response": dict(truth, sample_id="p-9")}),
        }
        for key, record in records.items():
            client.set(active.IDEMPOTENCY_PREFIX + key, record)
            r = score(key)
            assert r.status_code == 200, (key, r.text)
            assert r.json()["is_anomalous"] == truth["is_anomalous"], key
            assert r.json()["image_score"] == pytest.approx(truth["image_score"], rel=1e-6), key
            stored = json.loads(client.get(active.IDEMPOTENCY_PREFIX + key))  # replaced by the real answer
            assert stored["digest"] == digest and stored["response"]["sample_id"] == "p-1", key
