"""``serve``: run the scoring service under uvicorn (SIGTERM: stop accepting, finish in-flight, exit)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve", description="Serve every category's active bank over HTTP.")
    p.add_argument("--banks", type=Path, help="banks directory (default PATCHBANK_BANKS)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", help="cpu or cuda (default PATCHBANK_DEVICE, else cuda when available)")
    p.add_argument(
        "--grace", type=float, default=30.0, help="seconds to finish in-flight requests on SIGTERM"
    )
    args = p.parse_args(argv)

    import uvicorn

    from patchbank.errors import PatchbankError
    from service.app import create_app
    from service.observability import configure_logging
    from service.settings import ServiceSettings

    overrides = {k: v for k, v in (("banks", args.banks), ("device", args.device)) if v is not None}
    settings = ServiceSettings(**overrides)
    if not settings.banks.is_dir():
        print(f"error: banks directory {settings.banks} does not exist", file=sys.stderr)
        return 2
    configure_logging(settings.log_json)
    try:
        app = create_app(settings)
    except PatchbankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=args.grace,
        log_config=None,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
