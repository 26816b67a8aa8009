"""Publishing a bank version: refuse one that evaluates worse than the active version (unless forced),
record it (local ACTIVE, and Redis when configured, which every replica follows), prune old versions."""

from __future__ import annotations

import logging
from pathlib import Path

from patchbank import bank as bankfmt
from patchbank import fleet
from patchbank.errors import ConfigError, InputError

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.01
DEFAULT_KEEP = 5


def publish_version(
    banks: Path,
    category: str,
    version: str,
    redis_url: str | None = None,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    keep: int = DEFAULT_KEEP,
) -> list[str]:
    """Publish ``version``; returns the versions pruned. InputError when it is worse than the active one."""
    import redis

    try:
        client = fleet.connect(redis_url) if redis_url else None
        current = (client.hget(fleet.ACTIVE_KEY, category) if client else None) or bankfmt.active_version(
            banks, category
        )
        if current == version:
            current = None
        new_eval = fleet.evaluation_of(banks, category, version)
        old_eval = fleet.evaluation_of(banks, category, current)
        if new_eval and old_eval and not force:
            worse = fleet.worse_by(new_eval, old_eval, tolerance)
            if worse:
                raise InputError(
                    f"refusing to publish {category}/{version}: worse than the active {current} beyond "
                    f"{tolerance} ({'; '.join(worse)}); it stays on disk unpublished, --force publishes it anyway"
                )
        if client is not None:
            fleet.publish(client, banks, category, version)
        else:
            bankfmt.set_active(banks, category, version)
    except redis.RedisError as exc:
        raise ConfigError(f"cannot publish through Redis at {redis_url}: {exc}") from exc
    protect = {version} | ({current} if current else set())
    pruned = fleet.prune(banks, category, keep, protect)
    if pruned:
        log.info("pruned old versions of %s: %s", category, ", ".join(pruned))
    return pruned
