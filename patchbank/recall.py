"""Recall statistics of a bank: how often each bank vector was recalled by a part decided OK, and when last.

A living bank (``refresh-bank``) keeps what keeps matching good parts and lets fade what nothing has matched
for a long time. What it needs from scoring is cheap: the search already finds each patch's nearest bank
vector, so a part decided OK *recalls* the vectors its patches matched (each once per part, however many of
its patches matched it). Per bank member, two arrays as long as the bank: the number of recalls and the time
of the last (epoch seconds, 0 for never).

Retention follows MemoryBank's forgetting curve: strength S = 1 + recalls, age t = time since the last recall
(since the bank was built when never recalled), R = exp(-t / (S * tau)) with tau = half_life / ln 2, so an
unrecalled vector keeps half its retention after one half-life, a vector recalled n times after n + 1.

Per replica the statistics are kept in a file (``<dir>/<category>/<version>/<replica>.npz``, written whole
then renamed); :func:`merge` sums the recalls and takes the latest time, which is how the replicas' files, and
the service's Redis counters, combine.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FILE_SUFFIX = ".npz"


@dataclass
class RecallStats:
    """Per bank member: ``counts`` (N_m,) int64 recalls and ``last`` (N_m,) float64 time of the last, epoch s."""

    counts: list[np.ndarray]
    last: list[np.ndarray]

    @classmethod
    def empty(cls, sizes: Sequence[int]) -> RecallStats:
        return cls([np.zeros(n, np.int64) for n in sizes], [np.zeros(n, np.float64) for n in sizes])

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.counts]

    def record(self, nearest: Sequence[np.ndarray], at: float) -> None:
        """One part decided OK at time ``at``: each member's vectors its patches matched (``nearest``: per
        member, bank rows; -1 for a patch not searched) are recalled once."""
        if len(nearest) != len(self.counts):
            raise ValueError(f"{len(nearest)} members' rows for a bank of {len(self.counts)} members")
        for rows, counts, last in zip(nearest, self.counts, self.last, strict=True):
            hit = np.unique(rows[rows >= 0])
            if hit.size and hit[-1] >= len(counts):
                raise ValueError(
                    f"bank row {int(hit[-1])} out of range for a member of {len(counts)} vectors"
                )
            counts[hit] += 1
            last[hit] = np.maximum(last[hit], at)

    def add(self, other: RecallStats) -> None:
        """Merge ``other`` into these: recalls summed, the latest time kept."""
        if other.sizes != self.sizes:
            raise ValueError(
                f"recall statistics of banks of sizes {other.sizes} and {self.sizes} do not merge"
            )
        for c, t, oc, ot in zip(self.counts, self.last, other.counts, other.last, strict=True):
            c += oc
            np.maximum(t, ot, out=t)

    def copy(self) -> RecallStats:
        return RecallStats([c.copy() for c in self.counts], [t.copy() for t in self.last])

    def retention(self, now: float, half_life_s: float, built_at: float) -> list[np.ndarray]:
        """Per member, (N_m,) float64 retention R = exp(-age / ((1 + recalls) * half_life / ln 2)) in (0, 1];
        a vector never recalled ages from ``built_at``."""
        if half_life_s <= 0:
            raise ValueError(f"half-life must be positive, got {half_life_s}")
        tau = half_life_s / math.log(2)
        out = []
        for counts, last in zip(self.counts, self.last, strict=True):
            age = np.maximum(now - np.where(last > 0, last, built_at), 0.0)
            out.append(np.exp(-age / ((1.0 + counts) * tau)))
        return out

    def summary(self, now: float) -> RecallSummary:
        """How much of the bank is recalled at all, and how long ago the recalled vectors were last."""
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64)
        last = np.concatenate(self.last) if self.last else np.zeros(0)
        recalled = counts > 0
        ages = now - last[recalled]
        quantiles = (
            {q: float(np.quantile(ages, q)) for q in AGE_QUANTILES}
            if ages.size
            else dict.fromkeys(AGE_QUANTILES)
        )
        return RecallSummary(
            vectors=int(counts.size),
            recalled=int(recalled.sum()),
            recalls=int(counts.sum()),
            age_s=quantiles,
        )

    def save(self, path: Path) -> None:
        """Write whole, then rename: a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        arrays = {f"counts_{i}": c for i, c in enumerate(self.counts)}
        arrays |= {f"last_{i}": t for i, t in enumerate(self.last)}
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, sizes: Sequence[int]) -> RecallStats:
        """A saved file, checked against the bank's member sizes (ValueError when it is another bank's)."""
        with np.load(path) as z:
            n = len([k for k in z.files if k.startswith("counts_")])
            stats = cls(
                [z[f"counts_{i}"].astype(np.int64) for i in range(n)], [z[f"last_{i}"] for i in range(n)]
            )
        if stats.sizes != list(sizes):
            raise ValueError(
                f"{path} holds recall statistics of a bank of sizes {stats.sizes}, not {list(sizes)}"
            )
        return stats


AGE_QUANTILES = (0.5, 0.9, 1.0)


@dataclass(frozen=True)
class RecallSummary:
    vectors: int
    recalled: int
    recalls: int
    age_s: dict[float, float | None]  # quantile -> age of the recalled vectors' last recall, seconds

    @property
    def recalled_fraction(self) -> float:
        return self.recalled / self.vectors if self.vectors else 0.0


def stats_dir(root: Path, category: str, version: str) -> Path:
    return root / category / version


def merge(paths: Iterable[Path], sizes: Sequence[int]) -> RecallStats:
    """Every replica's file of one bank version, merged (empty statistics when there is none)."""
    total = RecallStats.empty(sizes)
    for path in paths:
        total.add(RecallStats.load(path, sizes))
    return total


def merged_files(root: Path, category: str, version: str, sizes: Sequence[int]) -> RecallStats:
    """The merged statistics of every replica that wrote under ``root`` for this bank version."""
    folder = stats_dir(root, category, version)
    files = sorted(folder.glob(f"*{FILE_SUFFIX}")) if folder.is_dir() else []
    return merge(files, sizes)


PREFIX = "patchbank:recall:"  # + <category>:<version>:<member>:n (hash) / :t (sorted set)


def redis_keys(category: str, version: str, member: int) -> tuple[str, str]:
    base = f"{PREFIX}{category}:{version}:{member}"
    return base + ":n", base + ":t"


def read_redis(client: Any, category: str, version: str, sizes: Sequence[int]) -> RecallStats:
    """Every replica's recalls of one bank version, as Redis holds them."""
    stats = RecallStats.empty(sizes)
    for m, (counts, last) in enumerate(zip(stats.counts, stats.last, strict=True)):
        n_key, t_key = redis_keys(category, version, m)
        for row, count in client.hgetall(n_key).items():
            if 0 <= int(row) < len(counts):
                counts[int(row)] = int(count)
        for row, at in client.zrange(t_key, 0, -1, withscores=True):
            if 0 <= int(row) < len(last):
                last[int(row)] = float(at)
    return stats


def push_redis(client: Any, category: str, version: str, delta: RecallStats) -> None:
    """Add a replica's increments (recalls since its last push, their latest times) to the shared counters."""
    pipe = client.pipeline(transaction=False)
    for m, (counts, last) in enumerate(zip(delta.counts, delta.last, strict=True)):
        rows = np.flatnonzero(counts)
        if not rows.size:
            continue
        n_key, t_key = redis_keys(category, version, m)
        for row in rows:
            pipe.hincrby(n_key, str(row), int(counts[row]))
        pipe.zadd(t_key, {str(row): float(last[row]) for row in rows}, gt=True)
    pipe.execute()
