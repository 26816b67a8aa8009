"""The bank registry shared through Redis: category -> active version, announced on a pub/sub channel.

``publish`` records a version and announces it; every replica follows (``patchbank_service.replicas``). A replica that
starts later or missed a message converges by reading the hash. A Redis that comes back empty is re-seeded
from the banks directory's ACTIVE files. Rollback = publish the older version.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from patchbank import bank as bankfmt
from patchbank.errors import BankError

log = logging.getLogger(__name__)

ACTIVE_KEY = "patchbank:active"
CHANNEL = "patchbank:banks"
STREAM_PREFIX = "patchbank:scores:"
IDEMPOTENCY_PREFIX = "patchbank:idem:"
TIMEOUTS = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}


def connect(url: str):  # -> redis.Redis
    """A client for ``redis://`` or ``rediss://`` URLs (password and TLS come with the URL)."""
    import redis

    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=10, **TIMEOUTS)


def publish(client, banks: Path, category: str, version: str) -> None:
    """Make ``version`` the category's active bank: locally (ACTIVE) and in Redis, then announce it. Only one
    of the category's own versions, intact, is published (BankError otherwise, and nothing is recorded)."""
    bankfmt.verify_version(banks, category, version, "to publish")
    bankfmt.set_active(banks, category, version)
    pipe = client.pipeline()
    pipe.hset(ACTIVE_KEY, category, version)
    pipe.publish(CHANNEL, json.dumps({"category": category, "version": version}))
    pipe.execute()
    log.info("published %s/%s", category, version)


def active_versions(client) -> dict[str, str]:
    return dict(client.hgetall(ACTIVE_KEY))


def seed_missing(client, banks: Path) -> dict[str, str]:
    """Record the local ACTIVE version of every category Redis does not know (after a flush or a restart). An
    ACTIVE naming anything but one of the category's versions is not recorded (it is reported when the
    category's bank loads)."""
    known = active_versions(client)
    seeded = {}
    for category in bankfmt.list_categories(banks):
        if category in known:
            continue
        try:
            version = bankfmt.active_version(banks, category)
        except BankError as exc:
            log.debug("not seeding %s into the Redis registry: %s", category, exc)
            continue
        if version and client.hsetnx(ACTIVE_KEY, category, version):
            seeded[category] = version
    if seeded:
        log.info("seeded the Redis registry from %s: %s", banks, seeded)
    return seeded


def evaluation_of(banks: Path, category: str, version: str | None) -> bankfmt.EvaluationRecord | None:
    if version is None:
        return None
    try:
        return bankfmt.read_manifest(bankfmt.version_dir(banks, category, version)).evaluation
    except BankError:
        return None


def prune(banks: Path, category: str, keep: int, protect: set[str]) -> list[str]:
    """Delete versions beyond the ``keep`` newest, never those in ``protect`` (the active ones)."""
    import shutil

    names = bankfmt.versions(banks, category)
    doomed = [v for v in names[: max(0, len(names) - keep)] if v not in protect]
    for v in doomed:
        shutil.rmtree(Path(banks) / category / v, ignore_errors=True)
    return doomed
