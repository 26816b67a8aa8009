"""Dynamic batching: the Batcher's grouping and error isolation, and batched answers through the live service
equal to one-at-a-time answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from patchbank.data import list_samples
from patchbank.errors import InputError
from patchbank.predict import Sample
from patchbank_builder.build import BuildResult
from patchbank_service.app import create_app
from patchbank_service.batching import Batcher
from patchbank_service.live import live_server
from patchbank_service.settings import ServiceSettings
from tests.conftest import CATEGORY


class FakeRun:
    """A runner that records each batch and answers with the uploads' sample ids, after a gate opens."""

    def __init__(self, bad: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.bad = bad

    async def __call__(
        self, fn: Callable[..., Any], scorer: object, uploads: list[Sample], fmt: str
    ) -> list[Any]:
        ids = [u.sample_id or "" for u in uploads]
        self.batches.append(ids)
        await self.gate.wait()
        if self.bad in ids:
            raise InputError(f"cannot decode {self.bad}")
        return [f"scored {i}" for i in ids]


def up(sample_id: str) -> Sample:
    return Sample(b"", b"", None, sample_id)


async def _submit_all(batcher: Batcher, run: FakeRun, ids: list[str]) -> list[Any]:
    scorer = object()
    tasks = []
    for i in ids:
        tasks.append(asyncio.create_task(batcher.score(scorer, up(i), "none")))  # type: ignore[arg-type]
        await asyncio.sleep(0.005)  # one at a time; the first batch waits at the gate meanwhile
    run.gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_requests_arriving_during_a_batch_form_the_next_batch() -> None:
    run = FakeRun()
    sizes: list[int] = []
    batcher = Batcher(run, max_batch=3, observe=sizes.append)
    results = asyncio.run(_submit_all(batcher, run, ["a", "b", "c", "d", "e", "f"]))
    assert results == [f"scored {i}" for i in "abcdef"]
    assert run.batches == [["a"], ["b", "c", "d"], ["e", "f"]]  # idle: at once; then at most max_batch
    assert sizes == [1, 3, 2]


def test_one_bad_sample_fails_only_its_own_request() -> None:
    run = FakeRun(bad="c")
    batcher = Batcher(run, max_batch=8)
    results = asyncio.run(_submit_all(batcher, run, ["a", "b", "c", "d"]))
    assert results[:2] == ["scored a", "scored b"] and results[3] == "scored d"
    assert isinstance(results[2], InputError) and "cannot decode c" in str(results[2])
    assert run.batches[1] == ["b", "c", "d"]  # the failed batch, then each sample alone
    assert run.batches[2:] == [["b"], ["c"], ["d"]]


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_score_as_alone(
    fpfh_build: tuple[Path, BuildResult], demo_root: Path
) -> None:
    banks, _ = fpfh_build
    refs = list_samples(demo_root, CATEGORY, "test")
    payloads = [(r.rgb.read_bytes(), r.xyz.read_bytes()) for r in refs]

    def post(url: str, i: int) -> float:
        rgb, xyz = payloads[i % len(payloads)]
        r = httpx.post(
            f"{url}/score",
            data={"category": CATEGORY, "map": "none"},
            files={"rgb": ("rgb.png", rgb), "xyz": ("xyz.tiff", xyz)},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        return r.json()["image_score"]

    alone = ServiceSettings(banks=banks, device="cpu", max_batch=1, log_json=False)
    with live_server(create_app(alone)) as url:
        expected = [post(url, i) for i in range(len(payloads))]
    batched = ServiceSettings(banks=banks, device="cpu", max_batch=8, queue_size=64, log_json=False)
    with live_server(create_app(batched)) as url:
        with ThreadPoolExecutor(max_workers=12) as pool:
            got = list(pool.map(lambda i: post(url, i), range(24)))
        metrics = httpx.get(f"{url}/metrics").text
    assert got == pytest.approx([expected[i % len(expected)] for i in range(24)], rel=1e-5)
    count = next(line for line in metrics.splitlines() if line.startswith("patchbank_batch_size_count"))
    total = next(line for line in metrics.splitlines() if line.startswith("patchbank_batch_size_sum"))
    assert float(total.split()[-1]) == 24 and float(count.split()[-1]) < 24  # some passes held several
