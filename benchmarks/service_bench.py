"""Service latency and throughput against calling the scorer directly, in one run.

    python benchmarks/service_bench.py [--size 400] [--requests 24] [--weights PATH]

Makes a demo category, builds an ``fpfh`` and an ``rgb+fpfh`` bank (random backbone weights unless
``--weights``: latency does not depend on the weights' values), then for each bank measures
1. the scorer called directly in-process (decode + prepare + features + search + map, one sample at a time);
2. the service under real uvicorn on loopback, through HTTP with ``map=png``, at client concurrency 1, 2, 4;
and prints p50/p95 latency (ms), throughput (samples/s), and the service overhead as a ratio to (1).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bank_builder.build import BuildRequest, build_bank
from bank_builder.demo_data import generate
from patchbank.data import list_samples
from patchbank.scorer import load_scorer
from patchbank.weights import WeightsRequest
from service.app import create_app
from service.scoring import Upload, score_uploads
from service.settings import ServiceSettings
from tests.live import live_server


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def direct(banks: Path, category: str, samples: list[Upload], n: int) -> list[float]:
    scorer = load_scorer(banks, category)
    score_uploads(scorer, samples[:1], "png")  # warm-up
    out = []
    for i in range(n):
        t = time.perf_counter()
        score_uploads(scorer, [samples[i % len(samples)]], "png")
        out.append((time.perf_counter() - t) * 1000)
    return out


def over_http(
    url: str, category: str, samples: list[Upload], n: int, concurrency: int
) -> tuple[list[float], float]:
    def one(i: int) -> float:
        s = samples[i % len(samples)]
        t = time.perf_counter()
        r = httpx.post(
            f"{url}/score",
            data={"category": category, "map": "png"},
            files={"rgb": ("rgb.png", s.rgb), "xyz": ("xyz.tiff", s.xyz)},
            timeout=300,
        )
        r.raise_for_status()
        return (time.perf_counter() - t) * 1000

    one(0)  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        lat = list(pool.map(one, range(n)))
    return lat, n / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=400, help="demo image side, pixels")
    p.add_argument("--requests", type=int, default=24, help="requests per measurement")
    p.add_argument("--weights", type=Path, help="local RGB weights (default: random init, same cost)")
    p.add_argument("--server-concurrency", type=int, default=2, help="PATCHBANK_CONCURRENCY of the service")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="pb-bench-"))
    data, banks = work / "data", work / "banks"
    generate(
        data,
        ["puck", "bracket"],
        n_train=20,
        n_validation=4,
        n_test=2,
        size=(args.size, args.size),
        progress=False,
    )
    weights = WeightsRequest(path=args.weights) if args.weights else WeightsRequest(random_seed=0)
    methods = {"puck": "fpfh", "bracket": "rgb+fpfh"}
    for category, method in methods.items():
        build_bank(
            BuildRequest(
                category=category,
                data_root=data,
                banks=banks,
                method=method,
                weights=weights,
                evaluate=False,
                progress=False,
            )
        )

    settings = ServiceSettings(
        banks=banks, device="cpu", concurrency=args.server_concurrency, queue_size=64, log_json=False
    )
    rows = []
    with live_server(create_app(settings)) as url:
        for category, method in methods.items():
            samples = [
                Upload(r.rgb.read_bytes(), r.xyz.read_bytes(), r.xyz.name)
                for r in list_samples(data, category, "test")
            ]
            base = direct(banks, category, samples, args.requests)
            rows.append(
                (method, "direct", 1, pct(base, 50), pct(base, 95), 1000 / statistics.mean(base), 1.0)
            )
            for c in (1, 2, 4):
                lat, tput = over_http(url, category, samples, args.requests, c)
                rows.append(
                    (method, "service", c, pct(lat, 50), pct(lat, 95), tput, pct(lat, 50) / pct(base, 50))
                )

    print(
        f"{args.size}x{args.size} inputs, {args.requests} requests per row, map=png, "
        f"service concurrency {args.server_concurrency}"
    )
    print("| method | path | clients | p50 ms | p95 ms | samples/s | p50 / direct p50 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for method, path, c, p50, p95, tput, ratio in rows:
        print(f"| {method} | {path} | {c} | {p50:.0f} | {p95:.0f} | {tput:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
