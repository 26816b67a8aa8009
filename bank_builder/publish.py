"""Publishing a bank version: refuse one that evaluates worse than the active version (unless forced),
record it (local ACTIVE, and Redis when configured, which every replica follows), prune old versions."""

from __future__ import annotations

import logging
from pathlib import Path

from patchbank import active
from patchbank import bank as bankfmt
from patchbank.errors import BankError, ConfigError, InputError
from patchbank_builder.options import DEFAULT_KEEP, DEFAULT_TOLERANCE

log = logging.getLogger(__name__)


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
        client = active.connect(redis_url) if redis_url else None
        current = client.hget(active.ACTIVE_KEY, category) if client else None
        if not current:
            try:
                current = bankfmt.active_version(banks, category)
            except BankError as exc:  # publishing replaces an ACTIVE that names no version of the category
                log.warning("%s; publishing %s/%s replaces it", exc, category, version)
        if current == version:
            current = None
        new_eval = active.evaluation_of(banks, category, version)
        old_eval = active.evaluation_of(banks, category, current)
        if new_eval and old_eval and not force:
            worse = new_eval.worse_than(old_eval, tolerance)
            if worse:
                raise InputError(
                    f"refusing to publish {category}/{version}: worse than the active {current} beyond "
                    f"{tolerance} ({'; '.join(worse)}); it stays on disk unpublished, --force publishes it anyway"
                )
        if client is not None:
            active.publish(client, banks, category, version)
        else:
            bankfmt.set_active(banks, category, version)
    except redis.RedisError as exc:
        raise ConfigError(f"cannot publish through Redis at {redis_url}: {exc}") from exc
    protect = {version} | ({current} if current else set())
    pruned = active.prune(banks, category, keep, protect)
    if pruned:
        log.info("pruned old versions of %s: %s", category, ", ".join(pruned))
    return pruned
