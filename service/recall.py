"""This replica's recall statistics (:mod:`patchbank.recall`) of the banks it serves, kept and shared.

Scoring records each part decided OK (a few array updates under a lock, in the worker thread); a background
thread writes every bank version's statistics to this replica's file under ``recall_dir`` every
``recall_flush_s`` and at shutdown, and with Redis adds the increments since the last push to shared counters
(a hash of recall counts and a sorted set of last-recall times per bank member, whose ``ZADD GT`` keeps the
latest). The merged view (``GET /categories/{category}/recall``, ``refresh-bank``) is Redis's when Redis is
set, else the sum of every replica's file for that version: a restarted replica starts a new file, the old
one still counts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from patchbank.recall import FILE_SUFFIX, RecallStats, merged_files, push_redis, read_redis, stats_dir
from patchbank.scorer import BankScorer

log = logging.getLogger("patchbank.recall")


class RecallKeeper:
    """The recall statistics of every bank version this replica scored with, with its increments not yet
    pushed to Redis."""

    def __init__(
        self, root: Path, replica: str, redis_client: Any | None = None, flush_s: float = 30.0
    ) -> None:
        self.root = Path(root)
        self.replica = replica
        self.redis = redis_client
        self.flush_s = flush_s
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], RecallStats] = {}
        self._pending: dict[tuple[str, str], RecallStats] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def file(self, category: str, version: str) -> Path:
        return stats_dir(self.root, category, version) / f"{self.replica}{FILE_SUFFIX}"

    def record(self, scorer: BankScorer, nearest: Sequence[np.ndarray], at: float | None = None) -> None:
        """One part decided OK by ``scorer``'s bank: the vectors its patches matched are recalled."""
        if not nearest:
            return
        m = scorer.bank.manifest
        key = (m.category, m.version)
        at = time.time() if at is None else at
        with self._lock:
            if key not in self._stats:
                sizes = [len(ix) for ix in scorer.bank.indices]
                self._stats[key] = RecallStats.empty(sizes)
                self._pending[key] = RecallStats.empty(sizes)
            self._stats[key].record(nearest, at)
            self._pending[key].record(nearest, at)
            self._dirty.add(key)

    def flush(self) -> None:
        """Write the changed statistics to this replica's files; push the increments to Redis (kept for the
        next flush when Redis cannot be reached)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            snapshot = {key: self._stats[key].copy() for key in dirty}
            pending = {key: p for key, p in self._pending.items() if key in dirty}
            for key in pending:
                self._pending[key] = RecallStats.empty(pending[key].sizes)
        for (category, version), stats in snapshot.items():
            try:
                stats.save(self.file(category, version))
            except OSError as exc:
                log.warning("recall statistics of %s %s not written: %s", category, version, exc)
                with self._lock:
                    self._dirty.add((category, version))
        if self.redis is None:
            return
        for key, delta in pending.items():
            try:
                push_redis(self.redis, *key, delta)
            except Exception as exc:  # redis.RedisError, OSError: keep the increments for the next push
                log.warning("recall increments of %s %s not pushed to redis: %s", *key, exc)
                with self._lock:
                    self._pending[key].add(delta)
                    self._dirty.add(key)

    def merged(self, scorer: BankScorer) -> tuple[RecallStats, str]:
        """Every replica's statistics of ``scorer``'s bank version and where they come from (redis, files)."""
        self.flush()
        m = scorer.bank.manifest
        sizes = [len(ix) for ix in scorer.bank.indices]
        if self.redis is not None:
            with contextlib.suppress(Exception):
                return read_redis(self.redis, m.category, m.version, sizes), "redis"
        return merged_files(self.root, m.category, m.version, sizes), "files"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="patchbank-recall", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def stop(self) -> None:
        """Stop the background writes, then write and push what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
