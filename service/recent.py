"""Recent decisions for the operator console and a line's MES: a bounded in-process record of the last
decisions and of the last samples' uploaded files, and the same view across every replica read from the
Redis score streams.

Recording is an append under a lock: the decision's numbers, and references to the bytes the request read
and to the map the answer carries anyway. Nothing is encoded on the scoring path; nothing is kept beyond
``recent_size`` decisions and ``recent_samples`` samples of at most ``recent_samples_mb`` MiB."""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import redis
import redis.asyncio as aredis
from pydantic import BaseModel, Field, ValidationError

from patchbank import active
from patchbank.bank import CATEGORY_RE
from patchbank.clouds import Intrinsics
from patchbank.predict import Sample
from patchbank_service.models import MAX_SAMPLE_ID, AnomalyMap, RegionOut, ScoreResponse

COUNTS_PREFIX = "patchbank:counts:"  # + "<category>:<epoch minute>": a hash {"OK": n, "NG": n}, kept 2 hours
COUNTS_TTL_S = 7200
HOUR_MINUTES = 60
HISTOGRAM_BINS = 20  # about this many bins of equal width span the scores; the threshold is an edge
# pydantic patterns (Rust regex: "$" is the end of the text, as Python's "\Z")
REPLICA_PATTERN = r"^[0-9a-f]{8}$"
ID_PATTERN = r"^[0-9a-f]{8}-[0-9]{1,18}$"
CATEGORY_PATTERN = CATEGORY_RE.pattern.removesuffix(r"\Z") + "$"


class Scored(BaseModel):
    """One scored sample: what the replica decided, with what bank, how fast."""

    id: str = Field(
        pattern=ID_PATTERN, description='"<replica>-<seq>": unique across replicas, seq counts up per replica'
    )
    replica: str = Field(pattern=REPLICA_PATTERN, description="the replica that scored it (random per start)")
    seq: int = Field(description="its number on that replica, counting up from 1")
    time: float = Field(description="when it was answered, epoch seconds (the replica's clock)")
    category: str = Field(pattern=CATEGORY_PATTERN)
    sample_id: str | None = Field(None, max_length=MAX_SAMPLE_ID, description="the line's id of the part")
    bank_version: str = Field(max_length=64, description="the bank version that scored it")
    image_score: float
    threshold: float = Field(description="the bank's image threshold; above it the part is NG")
    decision: Literal["OK", "NG"]
    regions: int = Field(description="defect regions found")
    peak: float | None = Field(None, description="largest peak score of its regions; None without regions")
    latency_ms: float = Field(description="milliseconds from the request's arrival to the answer")

    @classmethod
    def from_event(cls, fields: dict[str, str]) -> Self | None:
        """A stream event as a decision; None for one that is not a live-view event (e.g. written by an
        older replica without ids, or malformed)."""
        try:
            return cls.model_validate(
                {
                    "id": fields["id"],
                    "replica": fields["replica"],
                    "seq": fields["seq"],
                    "time": fields["time"],
                    "category": fields["category"],
                    "sample_id": fields.get("sample_id") or None,
                    "bank_version": fields["bank_version"],
                    "image_score": fields["score"],
                    "threshold": fields["threshold"],
                    "decision": fields["decision"],
                    "regions": fields["regions"],
                    "peak": fields.get("peak") or None,
                    "latency_ms": fields["latency_ms"],
                }
            )
        except (KeyError, ValidationError):
            return None

    def to_event(self) -> dict[str, str]:
        """The decision as a score-stream event (the stream's original fields, then the live view's)."""
        return {
            "category": self.category,
            "sample_id": self.sample_id or "",
            "score": f"{self.image_score:.9g}",
            "decision": self.decision,
            "bank_version": self.bank_version,
            "latency_ms": f"{self.latency_ms:.1f}",
            "time": f"{self.time:.3f}",
            "id": self.id,
            "replica": self.replica,
            "seq": str(self.seq),
            "threshold": f"{self.threshold:.9g}",
            "regions": str(self.regions),
            "peak": "" if self.peak is None else f"{self.peak:.9g}",
        }


class Decision(Scored):
    """A decision in the live view, with what this replica still holds of it."""

    has_sample: bool = Field(False, description="this replica still holds its files (/recent/{id}/rgb)")
    has_map: bool = Field(False, description="this replica holds its map (/recent/{id}/map)")


class Histogram(BaseModel):
    edges: list[float] = Field(description="bin edges in score units; the threshold is one of them")
    counts: list[int] = Field(description="decisions per bin, len(edges) - 1 bins, each (lower, upper]")
    threshold: float | None = Field(description="the newest decision's threshold; None without decisions")
    count: int = Field(description="decisions counted: the category's among the last recent_size")


class CategoryActivity(BaseModel):
    ok_last_hour: int
    ng_last_hour: int
    histogram: Histogram


class RecentResponse(BaseModel):
    source: Literal["local", "redis"] = Field(
        description="local: this replica's decisions; redis: every replica's, from the score streams"
    )
    replica: str = Field(description="the replica that answered")
    cursor: str | None = Field(description="pass as since= in the next poll; None when nothing was scored")
    more: bool = Field(description="more decisions wait after these: poll again at once")
    decisions: list[Decision] = Field(description="oldest first")
    categories: dict[str, CategoryActivity] = Field(description="per category: last hour's counts, histogram")


@dataclass(frozen=True, slots=True)
class StoredSample:
    """A recent sample's uploads and its answer's map, as the request and the answer already held them."""

    rgb: bytes
    xyz: bytes
    xyz_name: str | None
    xyz_unit: str | None
    intrinsics: Intrinsics | None
    anomaly_map: AnomalyMap | None  # as the answer carried it (base64 PNG or float16), None with map=none
    pixel_threshold: float
    regions: tuple[RegionOut, ...]

    @property
    def nbytes(self) -> int:
        return len(self.rgb) + len(self.xyz) + (len(self.anomaly_map.data) if self.anomaly_map else 0)


def histogram(scores: list[float], threshold: float | None) -> Histogram:
    """Bins of equal width in score units, one edge on the threshold, about HISTOGRAM_BINS across the scores;
    a bin holds the scores in (lower, upper], so a score equal to the threshold (OK) sits below it."""
    if threshold is None or not scores:
        return Histogram(edges=[], counts=[], threshold=threshold, count=len(scores))
    values = np.asarray(scores, dtype=np.float64)
    lo, hi = min(values.min(), threshold), max(values.max(), threshold)
    width = (hi - lo) / HISTOGRAM_BINS or (abs(threshold) / HISTOGRAM_BINS or 1.0)
    below = math.floor((threshold - lo) / width) + 1
    above = max(1, math.ceil((hi - threshold) / width))
    edges = threshold + width * np.arange(-below, above + 1)
    edges[below] = threshold  # exactly, not threshold + width * 0.0 rounded
    bins = np.searchsorted(edges, values, side="left") - 1
    counts = np.bincount(np.clip(bins, 0, len(edges) - 2), minlength=len(edges) - 1)
    return Histogram(
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        threshold=threshold,
        count=len(scores),
    )


def activity(decisions: list[Decision], ok: int, ng: int) -> CategoryActivity:
    """One category's panel: its counts and the histogram of ``decisions`` (oldest first)."""
    scores = [d.image_score for d in decisions]
    return CategoryActivity(
        ok_last_hour=ok,
        ng_last_hour=ng,
        histogram=histogram(scores, decisions[-1].threshold if decisions else None),
    )


class RecentDecisions:
    """This replica's last ``size`` decisions, and the files of its last ``samples`` samples (at most
    ``max_bytes`` together): a sample's files go when they are among the oldest, or with its decision."""

    def __init__(self, size: int, samples: int, max_bytes: int, replica: str | None = None) -> None:
        self.size, self.samples, self.max_bytes = size, samples, max_bytes
        self.replica = replica or secrets.token_hex(4)
        self._lock = threading.Lock()
        self._seq = 0
        self._decisions: deque[Decision] = deque(maxlen=size)
        self._stored: OrderedDict[str, StoredSample] = OrderedDict()
        self._stored_bytes = 0
        self._minutes: dict[str, deque[list[int]]] = {}  # category -> [minute, OK, NG], the last hour's

    # ------------------------------------------------------------------ the scoring path
    def record(self, r: ScoreResponse, upload: Sample | None, latency_ms: float, at: float) -> Decision:
        """Keep one answered sample; returns its decision (the same the score stream gets). ``upload`` None
        (a 3D-only bank's cloud): the decision is kept, not the files."""
        peak = max((g.peak_score for g in r.regions), default=None)
        kept = None
        if upload is not None:
            kept = StoredSample(
                upload.rgb,
                upload.xyz,
                upload.xyz_name,
                upload.xyz_unit,
                upload.intrinsics,
                r.anomaly_map,
                r.pixel_threshold,
                tuple(r.regions),
            )
        verdict: Literal["OK", "NG"] = "NG" if r.is_anomalous else "OK"
        minute = int(at // 60)
        with self._lock:
            self._seq += 1
            decision = Decision.model_construct(
                id=f"{self.replica}-{self._seq}",
                replica=self.replica,
                seq=self._seq,
                time=at,
                category=r.category,
                sample_id=r.sample_id,
                bank_version=r.bank_version,
                image_score=r.image_score,
                threshold=r.threshold,
                decision=verdict,
                regions=len(r.regions),
                peak=peak,
                latency_ms=latency_ms,
                has_sample=False,
                has_map=False,
            )
            if len(self._decisions) == self.size:
                self._forget(self._decisions[0].id)
            self._decisions.append(decision)
            if kept is not None and self.samples and kept.nbytes <= self.max_bytes:
                self._stored[decision.id] = kept
                self._stored_bytes += kept.nbytes
                while len(self._stored) > self.samples or self._stored_bytes > self.max_bytes:
                    self._forget(next(iter(self._stored)))
            buckets = self._minutes.setdefault(r.category, deque(maxlen=HOUR_MINUTES))
            if not buckets or buckets[-1][0] != minute:
                buckets.append([minute, 0, 0])
            buckets[-1][1 if verdict == "OK" else 2] += 1
        return decision

    def _forget(self, ident: str) -> None:
        gone = self._stored.pop(ident, None)
        if gone is not None:
            self._stored_bytes -= gone.nbytes

    # ------------------------------------------------------------------ reading
    @property
    def stored(self) -> tuple[int, int]:
        """(samples, bytes) held now."""
        with self._lock:
            return len(self._stored), self._stored_bytes

    def sample(self, ident: str) -> StoredSample | None:
        with self._lock:
            return self._stored.get(ident)

    def shown(self, d: Decision) -> Decision:
        """The decision with what this replica holds of it now."""
        kept = self.sample(d.id) if d.replica == self.replica else None
        has_map = kept is not None and kept.anomaly_map is not None
        return d.model_copy(update={"has_sample": kept is not None, "has_map": has_map})

    def get(self, ident: str) -> Decision | None:
        with self._lock:
            return next((d for d in reversed(self._decisions) if d.id == ident), None)

    def find(self, category: str, sample_id: str) -> Decision | None:
        """The newest decision of that sample."""
        with self._lock:
            return next(
                (d for d in reversed(self._decisions) if d.category == category and d.sample_id == sample_id),
                None,
            )

    def since(
        self, cursor: str | None, category: str | None, limit: int
    ) -> tuple[list[Decision], str | None, bool]:
        """(decisions, next cursor, more): after ``cursor`` the next ``limit`` oldest first, else the newest
        ``limit``. A cursor of another replica or process counts as none."""
        after = None
        if cursor and cursor.startswith(self.replica + "-") and cursor[len(self.replica) + 1 :].isdigit():
            after = int(cursor[len(self.replica) + 1 :])
        with self._lock:
            pool = [d for d in self._decisions if category is None or d.category == category]
            newest = self._decisions[-1].id if self._decisions else None
        if after is None:
            picked, more = pool[-limit:], False
        else:
            newer = [d for d in pool if d.seq > after]
            picked, more = newer[:limit], len(newer) > limit
        return [self.shown(d) for d in picked], picked[-1].id if more else newest, more

    def activity(self, categories: list[str], now: float) -> dict[str, CategoryActivity]:
        first = int(now // 60) - HOUR_MINUTES + 1
        with self._lock:
            recent = list(self._decisions)
            minutes = {c: [b for b in self._minutes.get(c, ()) if b[0] >= first] for c in categories}
        return {
            c: activity(
                [d for d in recent if d.category == c],
                sum(b[1] for b in minutes[c]),
                sum(b[2] for b in minutes[c]),
            )
            for c in categories
        }

    def view(
        self, cursor: str | None, category: str | None, limit: int, categories: list[str]
    ) -> RecentResponse:
        """The live view from this replica alone."""
        decisions, nxt, more = self.since(cursor, category, limit)
        return RecentResponse(
            source="local",
            replica=self.replica,
            cursor=nxt,
            more=more,
            decisions=decisions,
            categories=self.activity(categories, time.time()),
        )


# ---------------------------------------------------------------------------------------------- with Redis


def _key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def parse_stream_cursor(cursor: str | None) -> dict[str, str] | None:
    """``"<category>@<stream id>,..."`` -> {category: stream id}; None for no or another kind of cursor."""
    if not cursor or "@" not in cursor:
        return None
    out = {}
    for part in cursor.split(","):
        category, _, stream_id = part.partition("@")
        try:
            _key(stream_id)
        except ValueError:
            return None
        out[category] = stream_id
    return out


async def stream_view(
    client: aredis.Redis,
    local: RecentDecisions,
    cursor: str | None,
    categories: list[str],
    limit: int,
    now: float,
) -> RecentResponse:
    """The live view across every replica: the categories' score streams (the last ``local.size`` events of
    each for the histograms) and the per-minute counters every replica increments. Raises RedisError/OSError
    when Redis cannot answer (the caller falls back on the local view)."""
    since = parse_stream_cursor(cursor)
    first = int(now // 60) - HOUR_MINUTES + 1
    pipe = client.pipeline(transaction=False)
    for c in categories:
        pipe.xrevrange(active.STREAM_PREFIX + c, count=local.size)
        if since is not None:
            pipe.xrange(active.STREAM_PREFIX + c, min="(" + since.get(c, "0-0"), count=limit)
        for minute in range(first, first + HOUR_MINUTES):
            pipe.hgetall(f"{COUNTS_PREFIX}{c}:{minute}")
    replies: list[Any] = await pipe.execute()
    panels: dict[str, CategoryActivity] = {}
    found: list[tuple[tuple[int, int], str, Decision]] = []
    positions: dict[str, str] = {}
    step = 1 + (since is not None) + HOUR_MINUTES
    for i, c in enumerate(categories):
        latest = replies[i * step]
        window = [d for _, f in reversed(latest) if (d := Decision.from_event(f)) is not None]
        hours = replies[i * step + step - HOUR_MINUTES : i * step + step]
        ok = sum(int(h.get("OK", 0)) for h in hours)
        ng = sum(int(h.get("NG", 0)) for h in hours)
        panels[c] = activity(window, ok, ng)
        entries = latest if since is None else replies[i * step + 1]
        positions[c] = latest[0][0] if since is None and latest else (since or {}).get(c, "0-0")
        found += [(_key(sid), c, d) for sid, f in entries if (d := Decision.from_event(f)) is not None]
    found.sort(key=lambda item: item[0])
    if since is None:
        picked, more = found[-limit:], False
    else:
        picked, more = (
            found[:limit],
            len(found) > limit or any(len(replies[i * step + 1]) == limit for i in range(len(categories))),
        )
        for key, c, _ in picked:
            positions[c] = f"{key[0]}-{key[1]}"
    return RecentResponse(
        source="redis",
        replica=local.replica,
        cursor=",".join(f"{c}@{p}" for c, p in positions.items()) or None,
        more=more,
        decisions=[local.shown(d) for _, _, d in picked],
        categories=panels,
    )


async def find_in_streams(
    client: aredis.Redis, categories: list[str], depth: int, ident: str | None, sample_id: str | None
) -> Decision | None:
    """The newest decision with that id (or of that sample) among the categories' last ``depth`` events."""
    for c in categories:
        for _, fields in await client.xrevrange(active.STREAM_PREFIX + c, count=depth):
            d = Decision.from_event(fields)
            if d is not None and (d.id == ident if ident is not None else d.sample_id == sample_id):
                return d
    return None


REDIS_ERRORS = (redis.RedisError, OSError)
