"""Recall statistics through the live service: the parts it decides OK recall the bank vectors they matched,
exactly as predict() finds them; the counts survive a restart (each replica's file) and merge across two
replicas through a real Redis."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from patchbank import bank as bankfmt
from patchbank.data import list_samples
from patchbank.predict import Sample, predict
from patchbank.recall import RecallStats, merged_files
from patchbank.scorer import load_scorer
from patchbank_builder.build import BuildResult
from patchbank_service.app import create_app
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY
from tests.integration.conftest import RedisServer
from tests.integration.test_replicas import wait_for


@pytest.fixture
def banks(fpfh_build: tuple[Path, BuildResult], demo_root: Path, tmp_path: Path) -> Path:
    """The demo bank with its threshold between the test parts' scores (v0002), so both decisions occur."""
    dst = tmp_path / "banks"
    shutil.copytree(fpfh_build[0] / CATEGORY, dst / CATEGORY)
    scorer = load_scorer(dst, CATEGORY)
    scores = sorted(p.image_score for p in predict(scorer, [sample(u) for u in uploads(demo_root)]))
    m = scorer.bank.manifest
    middle = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    thresholds = m.thresholds.model_copy(update={"image": middle, "rule": "test: between the test parts"})
    vdir = dst / CATEGORY / m.version
    bankfmt.write_version(dst, m.model_copy(update={"thresholds": thresholds}), bankfmt.copy_files_from(vdir))
    return dst


def sample(part: dict[str, tuple[str, bytes]]) -> Sample:
    return Sample(part["rgb"][1], part["xyz"][1], part["xyz"][0])


def uploads(demo_root: Path) -> list[dict[str, tuple[str, bytes]]]:
    """Every test part (good and each defect kind) as a line uploads it."""
    return [
        {"rgb": ("rgb.png", r.rgb.read_bytes()), "xyz": ("xyz.tiff", r.xyz.read_bytes())}
        for r in list_samples(demo_root, CATEGORY, "test")
    ]


def expected(banks: Path, parts: list[dict[str, tuple[str, bytes]]]) -> tuple[RecallStats, list[bool]]:
    """What the parts recall, from predict() in process: the OK ones' nearest bank vectors."""
    scorer = load_scorer(banks, CATEGORY)
    stats = RecallStats.empty([len(ix) for ix in scorer.bank.indices])
    ok = []
    for part in parts:
        (p,) = predict(scorer, [sample(part)], full_maps=False)
        ok.append(not p.is_anomalous)
        if ok[-1]:
            stats.record(p.nearest, at=1.0)
    return stats, ok


def score(url: str, part: dict[str, tuple[str, bytes]]) -> None:
    r = httpx.post(f"{url}/score", data={"category": CATEGORY, "map": "none"}, files=part, timeout=60)
    assert r.status_code == 200, r.text


def test_ok_parts_recall_what_predict_finds_and_the_counts_survive_a_restart(
    banks: Path, demo_root: Path, tmp_path: Path
) -> None:
    parts = uploads(demo_root)
    want, ok = expected(banks, parts)
    assert any(ok) and not all(ok)  # both decisions occur: NG parts must not count
    recall_dir = tmp_path / "recall"
    settings = ServiceSettings(banks=banks, device="cpu", recall_dir=recall_dir)
    with live_server(create_app(settings)) as url:
        for part in parts:
            score(url, part)
        info = httpx.get(f"{url}/categories/{CATEGORY}/recall").json()
    assert info["source"] == "files" and info["bank_version"] == "v0002"
    assert info["recalls"] == sum(int(c.sum()) for c in want.counts)
    assert info["recalled"] == sum(int((c > 0).sum()) for c in want.counts) > 0
    assert info["vectors"] == sum(want.sizes) and info["age_s"]["max"] is not None
    sizes = want.sizes
    first = merged_files(recall_dir, CATEGORY, "v0002", sizes)
    for got, exp, last in zip(first.counts, want.counts, first.last, strict=True):
        np.testing.assert_array_equal(got, exp)  # each OK part once per vector it matched, NG parts none
        assert ((last > 0) == (exp > 0)).all()

    good = parts[ok.index(True)]
    with live_server(create_app(settings)) as url:  # a restart: a new replica file, the old one still counts
        score(url, good)
        again = httpx.get(f"{url}/categories/{CATEGORY}/recall").json()
    once, _ = expected(banks, [good])
    assert again["recalls"] == info["recalls"] + sum(int(c.sum()) for c in once.counts)
    assert len(list((recall_dir / CATEGORY / "v0002").glob("*.npz"))) == 2
    total = merged_files(recall_dir, CATEGORY, "v0002", sizes)
    for got, a, b in zip(total.counts, want.counts, once.counts, strict=True):
        np.testing.assert_array_equal(got, a + b)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")
def test_two_replicas_merge_their_recalls_through_redis(
    redis_server: RedisServer, banks: Path, demo_root: Path, tmp_path: Path
) -> None:
    parts = uploads(demo_root)
    want, ok = expected(banks, parts)
    goods = [p for p, o in zip(parts, ok, strict=True) if o]

    def settings(name: str) -> ServiceSettings:
        return ServiceSettings(
            banks=banks,
            device="cpu",
            REDIS_URL=redis_server.url,
            recall_dir=tmp_path / name,  # each replica its own folder: only Redis joins them
            recall_flush_s=0.2,
        )

    with live_server(create_app(settings("a"))) as a, live_server(create_app(settings("b"))) as b:
        for i, part in enumerate(parts):
            score((a, b)[i % 2], part)
        total = sum(int(c.sum()) for c in want.counts)
        wait_for(lambda: httpx.get(f"{b}/categories/{CATEGORY}/recall").json()["recalls"] == total)
        seen = {u: httpx.get(f"{u}/categories/{CATEGORY}/recall").json() for u in (a, b)}
    assert len(goods) >= 1
    for info in seen.values():
        assert info["source"] == "redis" and info["recalls"] == total
        assert info["recalled"] == sum(int((c > 0).sum()) for c in want.counts)
