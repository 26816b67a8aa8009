"""A replica loads only its own banks: a version named in Redis or ACTIVE that is a path, or a directory linked
from elsewhere, is refused and reported while the previous version keeps serving. Real Redis, real HTTP."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from patchbank import active
from patchbank import bank as bankfmt
from patchbank.data import list_samples
from patchbank.errors import BankError
from patchbank_builder.build import BuildResult
from patchbank_builder.publish import publish_version
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY
from tests.integration.conftest import RedisServer

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")

OTHER_CATEGORY = "other_part"
SYNC_S = 0.2


@pytest.fixture
def banks(fpfh_build: tuple[Path, BuildResult], tmp_path: Path) -> Path:
    dst = tmp_path / "banks"
    shutil.copytree(fpfh_build[0] / CATEGORY, dst / CATEGORY)
    return dst


def settings(banks: Path, url: str) -> ServiceSettings:
    return ServiceSettings(banks=banks, REDIS_URL=url, sync_interval_s=SYNC_S, log_json=False, device="cpu")


def planted(dst: Path, source: Path, version: str, threshold: float = 1e9) -> Path:
    """A copy of ``source`` at ``dst``, consistently re-signed, that claims ``version`` and has another image
    threshold (1e9: every part OK): what a replica would serve if it followed a path."""
    shutil.copytree(source, dst)
    data = json.loads((dst / bankfmt.MANIFEST).read_text())
    data["version"] = version
    data["thresholds"]["image"] = threshold
    text = json.dumps(data, indent=2)
    (dst / bankfmt.MANIFEST).write_text(text)
    (dst / bankfmt.MANIFEST_SUM).write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")
    return dst


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(SYNC_S / 2)


def hole_upload(demo_root: Path) -> dict[str, tuple[str, bytes]]:
    (ref, *_) = list_samples(demo_root, CATEGORY, "test", kinds=["hole"])
    return {"rgb": ("rgb.png", ref.rgb.read_bytes()), "xyz": ("xyz.tiff", ref.xyz.read_bytes())}


def test_a_replica_refuses_versions_from_elsewhere_and_keeps_serving(
    redis_server: RedisServer, banks: Path, demo_root: Path, tmp_path: Path
) -> None:
    v1 = banks / CATEGORY / "v0001"
    upload = hole_upload(demo_root)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with live_server(create_app(settings(banks, redis_server.url))) as url:
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["redis"] == "ok")

        def score() -> dict[str, object]:
            r = httpx.post(
                f"{url}/score", data={"category": CATEGORY, "map": "none"}, files=upload, timeout=60
            )
            assert r.status_code == 200, r.text
            return r.json()

        before = score()
        assert before["bank_version"] == "v0001"
        threshold = httpx.get(f"{url}/categories").json()["categories"][0]["threshold"]
        flipped = 1e9 if before["is_anomalous"] else -1.0  # the planted banks would turn the decision round
        planted(banks / "elsewhere", v1, "../elsewhere", flipped)
        outside = planted(tmp_path / "outside" / "v0001", v1, str(tmp_path / "outside" / "v0001"), flipped)
        linked = planted(tmp_path / "linked", v1, "v0002", flipped)
        (banks / CATEGORY / "v0002").symlink_to(linked, target_is_directory=True)

        for named, reason in [
            ("../elsewhere", f"'{CATEGORY}/../elsewhere' (named in Redis) refused: it is not a version name"),
            (str(outside), "(named in Redis) refused: it is not a version name"),
            ("v0002", f"'{CATEGORY}/v0002' (named in Redis) refused: its directory resolves outside"),
        ]:
            client.hset(active.ACTIVE_KEY, CATEGORY, named)
            wait_for(
                lambda reason=reason: (
                    reason in httpx.get(f"{url}/categories").json()["errors"].get(CATEGORY, "")
                )
            )
            body = httpx.get(f"{url}/categories").json()
            assert [(c["name"], c["bank_version"], c["threshold"]) for c in body["categories"]] == [
                (CATEGORY, "v0001", threshold)
            ]
            assert str(banks) not in body["errors"][CATEGORY]
            after = score()
            assert (after["bank_version"], after["is_anomalous"]) == ("v0001", before["is_anomalous"])

        manifest = bankfmt.read_manifest(v1)
        v_new = bankfmt.write_version(banks, manifest, bankfmt.copy_files_from(v1), activate=False).version
        client.hset(active.ACTIVE_KEY, CATEGORY, v_new)
        wait_for(lambda: score()["bank_version"] == v_new)
        assert httpx.get(f"{url}/categories").json()["errors"] == {}

        client.hset(active.ACTIVE_KEY, CATEGORY, "../elsewhere")
        wait_for(lambda: CATEGORY in httpx.get(f"{url}/categories").json()["errors"])
        client.hset(active.ACTIVE_KEY, CATEGORY, v_new)  # back to what it serves: nothing left to report
        wait_for(lambda: httpx.get(f"{url}/categories").json()["errors"] == {})
        assert score()["bank_version"] == v_new


def test_a_bad_active_at_start_is_refused_reported_and_not_seeded(
    redis_server: RedisServer, banks: Path
) -> None:
    v1 = banks / CATEGORY / "v0001"
    manifest = bankfmt.read_manifest(v1).model_copy(update={"category": OTHER_CATEGORY})
    bankfmt.write_version(banks, manifest, bankfmt.copy_files_from(v1))
    (banks / OTHER_CATEGORY / bankfmt.ACTIVE).write_text(f"../{CATEGORY}/v0001\n")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with live_server(create_app(settings(banks, redis_server.url))) as url:
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["redis"] == "ok")
        body = httpx.get(f"{url}/categories").json()
        assert [c["name"] for c in body["categories"]] == [CATEGORY]
        assert f"named in {OTHER_CATEGORY}/ACTIVE) refused" in body["errors"][OTHER_CATEGORY]
        time.sleep(3 * SYNC_S)
        assert client.hgetall(active.ACTIVE_KEY) == {CATEGORY: "v0001"}


def test_publish_refuses_a_version_from_elsewhere(
    redis_server: RedisServer, banks: Path, tmp_path: Path
) -> None:
    v1 = banks / CATEGORY / "v0001"
    planted(banks / "elsewhere", v1, "../elsewhere")
    (banks / CATEGORY / "v0002").symlink_to(
        planted(tmp_path / "linked", v1, "v0002"), target_is_directory=True
    )
    client = active.connect(redis_server.url)
    active.publish(client, banks, CATEGORY, "v0001")
    for named in ("../elsewhere", "v0002", str(v1)):
        with pytest.raises(BankError, match="refused"):
            active.publish(client, banks, CATEGORY, named)
        assert client.hgetall(active.ACTIVE_KEY) == {CATEGORY: "v0001"}
        assert bankfmt.active_version(banks, CATEGORY) == "v0001"


def test_publishing_replaces_a_refused_active(banks: Path) -> None:
    """An ACTIVE naming a path blocks nothing: publishing one of the category's versions replaces it."""
    (banks / CATEGORY / bankfmt.ACTIVE).write_text("../elsewhere\n")
    with pytest.raises(BankError, match="not a version name"):
        bankfmt.active_version(banks, CATEGORY)
    publish_version(banks, CATEGORY, "v0001")
    assert bankfmt.active_version(banks, CATEGORY) == "v0001"
