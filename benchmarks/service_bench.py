"""The service-latency harness, and a script: the service against calling the library directly.

The harness (:func:`serving`, :func:`service_latency`) measures the service end to end as a line calls
it: the real app under uvicorn on loopback, the product's HTTP client (httpx, multipart upload) asking for
``map=png``, after a warm-up request. ``patchbank bench`` and the script below both use it.

    python -m patchbank_benchmarks.service_bench [--size 400] [--requests 24] [--weights random]

The script makes two demo categories, builds an ``fpfh`` and an ``rgb+fpfh`` bank (random backbone weights
unless ``--weights``: latency does not depend on the weights' values), then for each bank measures
1. direct: the library's :func:`patchbank.predict.predict` in-process, one sample at a time;
2. service: the harness at client concurrency 1, 2, 4;
and prints p50/p95/mean latency (ms), throughput (samples/s), and the service's p50 as a ratio to (1)'s.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from patchbank.predict import Sample, predict
from patchbank.scorer import BankScorer

WARM_UP = 1  # requests (or direct calls) before measuring: the first pays lazy imports and allocations


class Latency(BaseModel):
    """Per-request wall-clock figures of one measurement."""

    path: str = Field(description="direct (the library's predict in-process) or service (HTTP)")
    concurrency: int = Field(description="callers at the same time, each sending its requests in turn")
    n: int = Field(description="requests measured (after the warm-up)")
    p50_ms: float
    p95_ms: float
    mean_ms: float
    samples_per_s: float = Field(description="requests answered per second of the whole measurement")

    @classmethod
    def of(cls, path: str, concurrency: int, lat_ms: Sequence[float], wall_s: float) -> Latency:
        """Figures of ``lat_ms`` (ms per request) measured in ``wall_s`` seconds in all."""
        return cls(
            path=path,
            concurrency=concurrency,
            n=len(lat_ms),
            p50_ms=float(np.percentile(lat_ms, 50)),
            p95_ms=float(np.percentile(lat_ms, 95)),
            mean_ms=float(np.mean(lat_ms)),
            samples_per_s=len(lat_ms) / wall_s,
        )


@contextmanager
def serving(banks: Path, device: str, concurrency: int = 1) -> Iterator[str]:
    """The service over ``banks`` under real uvicorn on a free loopback port; yields its URL once ready
    (every bank loaded). ``concurrency``: the service's worker threads (PATCHBANK_CONCURRENCY)."""
    from patchbank_service.app import create_app
    from patchbank_service.live import live_server
    from patchbank_service.settings import ServiceSettings

    settings = ServiceSettings(
        banks=banks, device=device, concurrency=concurrency, queue_size=64, log_json=False
    )
    with live_server(create_app(settings)) as url:
        yield url


def service_latency(
    url: str, category: str, samples: Sequence[Sample], n: int, concurrency: int = 1
) -> Latency:
    """``n`` POST /score requests (``map=png``, samples in turn) from ``concurrency`` callers, each with its
    own client sending one request after the other, after one warm-up request."""
    from patchbank_client import PatchbankClient

    def send(client: PatchbankClient, i: int) -> float:
        s = samples[i % len(samples)]
        start = time.perf_counter()
        client.score(category, s.rgb, s.xyz, map="png", sample_id=s.sample_id)
        return (time.perf_counter() - start) * 1000

    lanes: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []

    def lane(k: int) -> None:
        try:
            with PatchbankClient(url, timeout=600, retries=0) as client:  # a busy answer is a failure here
                lanes[k] = [send(client, i) for i in range(k, n, concurrency)]
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    with PatchbankClient(url, timeout=600, retries=0) as client:
        for i in range(WARM_UP):
            send(client, i)
    threads = [threading.Thread(target=lane, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return Latency.of("service", concurrency, [v for lat in lanes for v in lat], wall)


def direct_latency(scorer: BankScorer, samples: Sequence[Sample], n: int) -> Latency:
    """``n`` calls of the library's :func:`predict` on one sample each (full maps, as the service makes
    them), samples in turn, after a warm-up call."""
    for i in range(WARM_UP):
        predict(scorer, [samples[i % len(samples)]])
    lat: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        predict(scorer, [samples[i % len(samples)]])
        lat.append((time.perf_counter() - t) * 1000)
    return Latency.of("direct", 1, lat, time.perf_counter() - start)


# -- the script --------------------------------------------------------------------------------------------

METHODS = {"puck": "fpfh", "bracket": "rgb+fpfh"}  # one demo category per bank


def build_banks(data: Path, banks: Path, size: int, weights: str) -> None:
    """Demo data of both categories, and a bank of each (thresholds from the validation split)."""
    from patchbank.weights import WeightsRequest
    from patchbank_builder.build import BuildRequest, build_bank
    from patchbank_synthetic.demo_data import generate

    generate(data, list(METHODS), n_train=20, n_validation=4, n_test=2, size=(size, size), progress=False)
    for category, method in METHODS.items():
        build_bank(
            BuildRequest(
                category=category,
                data_root=data,
                banks=banks,
                method=method,
                weights=WeightsRequest.parse(weights),
                evaluate=False,
                progress=False,
            )
        )


def main(argv: Sequence[str] | None = None) -> int:
    from patchbank.data import list_samples
    from patchbank.scorer import load_scorer

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--size", type=int, default=400, help="demo image side, pixels (default 400)")
    p.add_argument("--requests", type=int, default=24, help="requests per measurement (default 24)")
    p.add_argument(
        "--weights", default="random", help="backbone weights: NAME[:VALUE] or a file (default random)"
    )
    p.add_argument("--server-concurrency", type=int, default=2, help="PATCHBANK_CONCURRENCY of the service")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="pb-service-bench-"))
    data, banks = work / "data", work / "banks"
    build_banks(data, banks, args.size, args.weights)
    rows: list[tuple[str, Latency, float]] = []
    with serving(banks, "cpu", args.server_concurrency) as url:
        for category, method in METHODS.items():
            samples = [Sample.from_ref(r) for r in list_samples(data, category, "test")]
            base = direct_latency(load_scorer(banks, category), samples, args.requests)
            rows.append((method, base, 1.0))
            for c in (1, 2, 4):
                lat = service_latency(url, category, samples, args.requests, c)
                rows.append((method, lat, lat.p50_ms / base.p50_ms))

    print(
        f"{args.size}x{args.size} inputs, {args.requests} requests per row, map=png, "
        f"service concurrency {args.server_concurrency}"
    )
    print("| method | path | clients | p50 ms | p95 ms | mean ms | samples/s | p50 / direct p50 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method, r, ratio in rows:
        print(
            f"| {method} | {r.path} | {r.concurrency} | {r.p50_ms:.0f} | {r.p95_ms:.0f} | {r.mean_ms:.0f} "
            f"| {r.samples_per_s:.2f} | {ratio:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
