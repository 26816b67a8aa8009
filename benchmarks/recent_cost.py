"""What keeping recent decisions costs ``/score`` when nobody watches: the console's live view and review read
what every answer records (a decision in a ring buffer, references to the sample's bytes), so the scoring
path pays for it even with no page open.

    python -m patchbank_benchmarks.recent_cost [--size 400] [--requests 60] [--method fpfh]

One live service (real uvicorn on loopback, the product's client, ``map=png``), one bank; requests go in
blocks of 5 that alternate between the service as it runs (recording on) and the same process with the
recording replaced by nothing (what ``/score`` did before the console), so the machine's noise falls on
both alike. Prints p50 / p95 of each and the ratio of the p50s.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from patchbank.data import SampleRef
    from patchbank_client import PatchbankClient

BLOCK = 5  # requests per block; blocks alternate between the two paths


def main(argv: Sequence[str] | None = None) -> int:
    from patchbank.data import list_samples
    from patchbank_builder.build import BuildRequest, build_bank
    from patchbank_client import PatchbankClient
    from patchbank_service.app import create_app
    from patchbank_service.live import live_server
    from patchbank_service.settings import ServiceSettings
    from patchbank_synthetic.demo_data import generate

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--size", type=int, default=400, help="demo image side, pixels (default 400)")
    p.add_argument("--requests", type=int, default=60, help="requests per path (default 60)")
    p.add_argument("--method", default="fpfh", help="the bank's method (default fpfh: no weights needed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data, banks = Path(tmp) / "data", Path(tmp) / "banks"
        generate(
            data, ["puck"], n_train=10, n_validation=4, n_test=2, size=(args.size, args.size), progress=False
        )
        build_bank(BuildRequest("puck", data, banks, method=args.method, progress=False))
        refs = list_samples(data, "puck", "test")
        app = create_app(ServiceSettings(banks=banks, device="cpu", log_json=False))
        review = app.state.patchbank.review
        recording = review.record

        def switch(on: bool) -> None:
            review.record = recording if on else _nothing  # type: ignore[method-assign]

        with live_server(app) as url, PatchbankClient(url, timeout=120) as client:
            latencies = alternate(client, refs, args.requests, switch)
    report(latencies, f"{args.method} bank, {args.size} x {args.size} px, {args.requests} requests per path")
    return 0


def alternate(
    client: PatchbankClient, refs: Sequence[SampleRef], requests: int, switch: Callable[[bool], None]
) -> dict[str, list[float]]:
    """``requests`` /score latencies (ms) with recording on and off, in alternating blocks of :data:`BLOCK`
    (``switch(on)`` turns it on or off), after one warm-up request; recording is left on."""
    latencies: dict[str, list[float]] = {"recording on": [], "recording off": []}
    client.score("puck", refs[0].rgb, refs[0].xyz, map="png")  # warm-up
    i = 0
    while min(len(v) for v in latencies.values()) < requests:
        for name in latencies:
            switch(name == "recording on")
            for _ in range(BLOCK):
                ref = refs[i % len(refs)]
                i += 1
                start = time.perf_counter()
                client.score("puck", ref.rgb, ref.xyz, map="png")
                latencies[name].append((time.perf_counter() - start) * 1000)
    switch(True)
    return latencies


def report(latencies: dict[str, list[float]], what: str) -> float:
    """Print p50 / p95 of each path and the ratio of the p50s; returns the off path's p50 (ms)."""
    on, off = (np.asarray(latencies[k]) for k in ("recording on", "recording off"))
    print(f"/score latency, {what}")
    print(f"{'path':<16} {'p50 ms':>8} {'p95 ms':>8}")
    for name, v in latencies.items():
        print(f"{name:<16} {np.percentile(v, 50):8.1f} {np.percentile(v, 95):8.1f}")
    print(f"p50 ratio on / off: {np.percentile(on, 50) / np.percentile(off, 50):.3f}")
    return float(np.percentile(off, 50))


def _nothing(*args: object, **kwargs: object) -> None:
    return None


if __name__ == "__main__":
    sys.exit(main())
