"""Prometheus metrics (one registry per app) and structured JSON-lines logs."""

from __future__ import annotations

import json
import logging
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGES = ("decode", "features", "search", "post", "total")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 100, 200)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "patchbank_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "patchbank_stage_seconds",
            "scoring latency by stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.image_score = Histogram(
            "patchbank_image_score",
            "image scores by category",
            ["category"],
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "patchbank_decisions_total",
            "OK/NG decisions by category",
            ["category", "decision"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "patchbank_queue_depth",
            "samples admitted and not finished (running + waiting)",
            registry=self.registry,
        )
        self.stream_dropped = Counter(
            "patchbank_stream_dropped_total",
            "score events not appended to Redis (unreachable)",
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "patchbank_redis_up", "1 when Redis answers, 0 when not", registry=self.registry
        )
        self.rejected = Counter(
            "patchbank_rejected_total", "requests refused because the queue was full", registry=self.registry
        )
        self.drift_ks = Gauge(
            "patchbank_drift_ks",
            "recent OK scores against the bank's calibration goods: two-sample KS statistic (0 same, 1 apart)",
            ["category"],
            registry=self.registry,
        )
        self.drift_shift = Gauge(
            "patchbank_drift_shift",
            "median of the recent OK scores minus the calibration goods', in their interquartile ranges",
            ["category"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "patchbank_feedback_total",
            "review verdicts by category, decision (OK/NG) and verdict: the reviewed false-alarm rate is "
            "false_alarm / all on NG decisions",
            ["category", "decision", "verdict"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "patchbank_batch_size",
            "samples per scoring pass (dynamic batching of /score, and /score/batch)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self.RESERVED})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(json_lines: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("faiss").setLevel(logging.WARNING)
