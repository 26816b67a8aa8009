"""Dynamic batching: concurrent ``/score`` requests for one bank share one backbone pass and one search.

Natural batching, no timer: an idle bank scores a request at once (no added latency); while a batch runs,
requests for that bank queue, and the next batch takes all of them (at most ``max_batch``). Under load the
batch grows by itself, which is what a GPU needs to serve many lines. One bad sample in a batch does not
fail the others: the batch is re-scored one sample at a time and only that request gets its error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from patchbank.errors import PatchbankError
from patchbank.predict import Sample
from patchbank.scorer import BankScorer
from patchbank_service.models import MapFormat, ScoreResponse
from patchbank_service.scoring import score_samples

Runner = Callable[..., Awaitable[Any]]  # runs fn(*args) in a worker thread


@dataclass
class _Queue:
    scorer: BankScorer
    jobs: list[tuple[Sample, asyncio.Future[ScoreResponse]]] = field(default_factory=list)
    draining: bool = False


class Batcher:
    """Per (bank, map format) queues of single-sample requests, drained in batches through ``run``."""

    def __init__(
        self,
        run: Runner,
        max_batch: int,
        observe: Callable[[int], None] = lambda n: None,
        score: Callable[..., list[ScoreResponse]] = score_samples,
    ) -> None:
        self._run = run
        self._score_samples = score
        self.max_batch = max_batch
        self._observe = observe
        self._queues: dict[tuple[int, str], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def score(self, scorer: BankScorer, upload: Sample, fmt: MapFormat) -> ScoreResponse:
        key = (id(scorer), fmt)
        queue = self._queues.setdefault(key, _Queue(scorer))
        future: asyncio.Future[ScoreResponse] = asyncio.get_running_loop().create_future()
        queue.jobs.append((upload, future))
        if not queue.draining:
            queue.draining = True
            task = asyncio.create_task(self._drain(key, queue, fmt))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, key: tuple[int, str], queue: _Queue, fmt: MapFormat) -> None:
        try:
            while queue.jobs:
                batch, queue.jobs = queue.jobs[: self.max_batch], queue.jobs[self.max_batch :]
                self._observe(len(batch))
                await self._score(queue.scorer, batch, fmt)
        finally:
            queue.draining = False
            if not queue.jobs and self._queues.get(key) is queue:
                del self._queues[key]

    async def _score(
        self, scorer: BankScorer, batch: list[tuple[Sample, asyncio.Future[ScoreResponse]]], fmt: MapFormat
    ) -> None:
        try:
            results = await self._run(self._score_samples, scorer, [u for u, _ in batch], fmt)
        except PatchbankError as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc=exc)
                return
            for upload, future in batch:  # find the bad sample(s): the others still get their answers
                try:
                    _settle(future, (await self._run(self._score_samples, scorer, [upload], fmt))[0])
                except Exception as one:  # handed to that request's handler
                    _settle(future, exc=one)
        except BaseException as exc:  # every waiting request must hear of it
            for _, future in batch:
                _settle(
                    future, exc=exc if isinstance(exc, Exception) else RuntimeError("scoring was cancelled")
                )
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                _settle(future, result)


def _settle(
    future: asyncio.Future[ScoreResponse],
    result: ScoreResponse | None = None,
    exc: BaseException | None = None,
) -> None:
    """Resolve a request's future unless its client already went away (the future was cancelled)."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]
