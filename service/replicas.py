"""A replica's link to Redis: follows the active versions shared in Redis, appends score events to a capped stream,
and remembers answers to idempotent requests. Redis going away never stops scoring: the replica keeps its
banks, counts dropped events, reports ``degraded`` and reconnects by itself."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis

from patchbank import active
from patchbank import bank as bankfmt
from patchbank.errors import PatchbankError
from patchbank.loaded import LoadedBanks
from patchbank_service.observability import Metrics

log = logging.getLogger("patchbank.replicas")


class IdempotencyConflict(PatchbankError):
    """The same Idempotency-Key came with different content."""


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
        """Seed what Redis lacks, then load every version Redis names that differs from the loaded one."""
        active.seed_missing(self._client, self.banks)
        local = set(bankfmt.list_categories(self.banks))
        for category, version in active.active_versions(self._client).items():
            if category not in local or self.loaded.version_of(category) == version:
                continue
            try:
                self.loaded.reload(category, version)
            except PatchbankError as exc:
                log.error("cannot switch %s to %s: %s", category, version, exc)

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
        try:
            await self._aclient.xadd(
                active.STREAM_PREFIX + fields["category"], fields, maxlen=self.stream_maxlen, approximate=True
            )
        except (redis.RedisError, OSError):
            self.metrics.stream_dropped.inc()

    async def recall(self, key: str, digest: str) -> dict[str, Any] | None:
        """The stored answer of an earlier request with this key; 409 when its content differed."""
        try:
            raw = await self._aclient.get(active.IDEMPOTENCY_PREFIX + key)
        except (redis.RedisError, OSError):
            return None
        if raw is None:
            return None
        stored = json.loads(raw)
        if stored["digest"] != digest:
            raise IdempotencyConflict(f"Idempotency-Key {key!r} was already used with different content")
        return stored["response"]

    async def remember(self, key: str, digest: str, response: dict[str, Any]) -> None:
        try:
            await self._aclient.set(
                active.IDEMPOTENCY_PREFIX + key,
                json.dumps({"digest": digest, "response": response}),
                nx=True,
                ex=self.idempotency_ttl_s,
            )
        except (redis.RedisError, OSError):
            log.warning("could not store the answer of Idempotency-Key %s", key)

    async def aclose(self) -> None:
        await self._aclient.aclose()


def event_fields(r: Any, latency_ms: float) -> dict[str, str]:
    return {
        "category": r.category,
        "sample_id": r.sample_id or "",
        "score": f"{r.image_score:.6g}",
        "decision": "NG" if r.is_anomalous else "OK",
        "bank_version": r.bank_version,
        "latency_ms": f"{latency_ms:.1f}",
        "time": f"{time.time():.3f}",
    }
