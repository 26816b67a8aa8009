"""A replica's link to Redis: follows the active versions shared in Redis, appends score events to a capped stream,
and remembers answers to idempotent requests. Redis going away never stops scoring: the replica keeps its
banks, counts dropped events, reports ``degraded`` and reconnects by itself."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchbank import active
from patchbank import bank as bankfmt
from patchbank.errors import PatchbankError, shorten
from patchbank.loaded import LoadedBanks
from patchbank_service.models import ScoreResponse
from patchbank_service.observability import Metrics
from patchbank_service.recent import COUNTS_PREFIX, COUNTS_TTL_S

log = logging.getLogger("patchbank.replicas")


class IdempotencyConflict(PatchbankError):
    """The same Idempotency-Key came with different content."""


class StoredAnswer(BaseModel):
    """An idempotent request's answer as Redis keeps it, bound to the digest of the request's content."""

    model_config = ConfigDict(extra="forbid")

    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the request's content")
    response: ScoreResponse


def request_digest(*parts: bytes | str | None) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else (part or b"")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


class ReplicaLink:
    def __init__(
        self,
        url: str,
        loaded: LoadedBanks,
        banks: Path,
        metrics: Metrics,
        interval_s: float = 2.0,
        stream_maxlen: int = 10000,
        idempotency_ttl_s: int = 86400,
    ) -> None:
        self.url = url
        self.loaded = loaded
        self.banks = Path(banks)
        self.metrics = metrics
        self.interval_s = interval_s
        self.stream_maxlen = stream_maxlen
        self.idempotency_ttl_s = idempotency_ttl_s
        self.degraded = True  # until the first successful sync
        self.reason = "not connected yet"
        self._client = active.connect(url)
        self._aclient = aredis.Redis.from_url(url, decode_responses=True, **active.TIMEOUTS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="patchbank-replicas", daemon=True)
        self._tasks: set[asyncio.Task[Any]] = set()
        # category -> (version, reason) of the last version refused, so each refusal is logged once
        self._refused: dict[str, tuple[str, str]] = {}

    # ------------------------------------------------------------------ active versions (background thread)
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _follow(self) -> None:
        pubsub = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(active.CHANNEL)
                self.sync_once()
                self._mark(ok=True)
                pubsub.get_message(timeout=self.interval_s)  # returns early on an announcement
            except (redis.RedisError, OSError) as exc:
                self._mark(ok=False, reason=str(exc))
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()
                pubsub = None
                self._stop.wait(self.interval_s)

    def sync_once(self) -> None:
        """Seed what Redis lacks, then load every version Redis names that differs from the loaded one. A version
        that is refused (not one of the category's own versions, or not intact) leaves the loaded one serving;
        the refusal is logged once and shown in the loaded banks' errors until the category settles."""
        active.seed_missing(self._client, self.banks)
        local = set(bankfmt.list_categories(self.banks))
        for category, version in active.active_versions(self._client).items():
            if category not in local:
                continue
            if self.loaded.version_of(category) == version:
                if self._refused.pop(category, None) is not None:
                    self.loaded.clear_error(category)
                continue
            try:
                self.loaded.reload(category, version, origin="named in Redis")
            except PatchbankError as exc:
                if self._refused.get(category) != (version, str(exc)):
                    self._refused[category] = (version, str(exc))
                    log.error(
                        "keeping %s at %s: %s",
                        category,
                        self.loaded.version_of(category) or "no bank",
                        exc,
                        extra={"category": category},
                    )
            else:
                self._refused.pop(category, None)

    def _mark(self, ok: bool, reason: str = "") -> None:
        if ok and self.degraded:
            log.info("redis reachable", extra={"redis": "ok"})
        elif not ok and not self.degraded:
            log.warning("redis unreachable: scoring goes on with the local banks", extra={"reason": reason})
        self.degraded, self.reason = (not ok), reason
        self.metrics.redis_up.set(0 if self.degraded else 1)

    # ------------------------------------------------------------------ request path (event loop)
    def record_score(self, fields: dict[str, str]) -> None:
        """Append a score event to the category's capped stream without delaying the answer."""
        task = asyncio.create_task(self._append(fields))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _append(self, fields: dict[str, str]) -> None:
        """The event, and one more OK or NG in its category's counter of that minute (the live view's)."""
        counter = f"{COUNTS_PREFIX}{fields['category']}:{int(float(fields['time']) // 60)}"
        try:
            pipe = self._aclient.pipeline(transaction=False)
            pipe.xadd(
                active.STREAM_PREFIX + fields["category"], fields, maxlen=self.stream_maxlen, approximate=True
            )
            pipe.hincrby(counter, fields["decision"], 1)
            pipe.expire(counter, COUNTS_TTL_S)
            await pipe.execute()
        except (redis.RedisError, OSError):
            self.metrics.stream_dropped.inc()

    @property
    def client(self) -> redis.Redis:
        """The background threads' Redis client (synchronous)."""
        return self._client

    @property
    def aclient(self) -> aredis.Redis:
        """The request path's Redis client (the live view and review read and write through it)."""
        return self._aclient

    async def recall(
        self, key: str, digest: str, category: str, sample_id: str | None
    ) -> ScoreResponse | None:
        """The stored answer of an earlier request with this key; 409 when its content differed. A stored
        record that is not a valid answer to this very request (malformed, for another category or sample, or
        whose decision contradicts its score) is logged, dropped and treated as a miss."""
        try:
            raw = await self._aclient.get(active.IDEMPOTENCY_PREFIX + key)
        except (redis.RedisError, OSError):
            return None
        if raw is None:
            return None
        try:
            stored = StoredAnswer.model_validate_json(raw)
        except ValidationError as exc:
            return await self._drop(key, f"not a stored answer ({exc.error_count()} errors)")
        if stored.digest != digest:
            raise IdempotencyConflict(
                f"Idempotency-Key {shorten(key)} was already used with different content"
            )
        answer = stored.response
        if (answer.category, answer.sample_id) != (category, sample_id):
            return await self._drop(key, "it answers another category or sample")
        if answer.is_anomalous != bool(bankfmt.is_anomalous(answer.image_score, answer.threshold)):
            return await self._drop(key, "its decision contradicts its score and threshold")
        return answer

    async def _drop(self, key: str, why: str) -> None:
        log.warning("ignoring the stored answer of Idempotency-Key %s: %s", shorten(key), why)
        with contextlib.suppress(redis.RedisError, OSError):
            await self._aclient.delete(active.IDEMPOTENCY_PREFIX + key)
        return None

    async def remember(self, key: str, digest: str, response: ScoreResponse) -> None:
        record = StoredAnswer(digest=digest, response=response)
        try:
            await self._aclient.set(
                active.IDEMPOTENCY_PREFIX + key, record.model_dump_json(), nx=True, ex=self.idempotency_ttl_s
            )
        except (redis.RedisError, OSError):
            log.warning("could not store the answer of Idempotency-Key %s", shorten(key))

    async def aclose(self) -> None:
        await self._aclient.aclose()
