"""What the recall statistics (a living bank's memory) cost ``/score``: every part decided OK recalls the
bank vectors its patches matched (a few array updates under a lock, in the worker thread), and a background
thread writes them every ``recall_flush_s``.

    python -m patchbank_benchmarks.recall_cost [--size 400] [--requests 60] [--method rgb/fpfh]

One live service (real uvicorn on loopback, the product's client, ``map=png``), one bank, good parts only (so
every request is recorded: the worst case); requests go in blocks of 5 that alternate between the service as
it runs (recording on) and the same process with the recording replaced by nothing, so the machine's noise
falls on both alike. Prints p50 / p95 of each, the ratio of the p50s, and the in-process cost of one
recording.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    from patchbank.data import list_samples
    from patchbank.predict import Sample, predict
    from patchbank_benchmarks.recent_cost import alternate, report
    from patchbank_builder.build import BuildRequest, build_bank
    from patchbank_client import PatchbankClient
    from patchbank_service.app import create_app
    from patchbank_service.live import live_server
    from patchbank_service.settings import ServiceSettings
    from patchbank_synthetic.demo_data import generate

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--size", type=int, default=400, help="demo image side, pixels (default 400)")
    p.add_argument("--requests", type=int, default=60, help="requests per path (default 60)")
    p.add_argument("--method", default="rgb/fpfh", help="the bank's method (default rgb/fpfh, the product's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data, banks = Path(tmp) / "data", Path(tmp) / "banks"
        generate(
            data, ["puck"], n_train=20, n_validation=6, n_test=1, size=(args.size, args.size), progress=False
        )
        build_bank(BuildRequest("puck", data, banks, method=args.method, progress=False, evaluate=False))
        app = create_app(ServiceSettings(banks=banks, device="cpu", log_json=False))
        state = app.state.patchbank
        refs = list_samples(data, "puck", "validation")
        recording = state.recall.record

        def switch(on: bool) -> None:
            state.recall.record = recording if on else _nothing  # type: ignore[method-assign]

        with live_server(app) as url, PatchbankClient(url, timeout=120) as client:
            latencies = alternate(client, refs, args.requests, switch)
            scorer = state.loaded.get("puck")
            (pred,) = predict(scorer, [Sample.from_ref(refs[0])], full_maps=False)
            n = 2000
            start = time.perf_counter()
            for _ in range(n):
                recording(scorer, pred.nearest)
            one_ms = (time.perf_counter() - start) * 1000 / n
    p50 = report(
        latencies, f"{args.method} bank, {args.size} x {args.size} px, {args.requests} good parts per path"
    )
    print(f"one recording in process: {one_ms * 1000:.1f} us ({one_ms / p50 * 100:.3f}% of the p50)")
    return 0


def _nothing(*args: object, **kwargs: object) -> None:
    return None


if __name__ == "__main__":
    sys.exit(main())
