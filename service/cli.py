"""``patchbank serve``: run the scoring service under uvicorn (SIGTERM: stop accepting, finish in-flight,
exit). Settings come from ``PATCHBANK_*`` and ``patchbank.toml``; the flags here override a few."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from patchbank.cli import Command
from patchbank.config import require
from patchbank.errors import ConfigError


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--banks", type=Path, help="banks directory (default PATCHBANK_BANKS)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", help="cpu or cuda (default PATCHBANK_DEVICE, else cuda when available)")
    p.add_argument(
        "--grace", type=float, default=30.0, help="seconds to finish in-flight requests on SIGTERM"
    )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from patchbank_service.app import create_app
    from patchbank_service.connections import server_config
    from patchbank_service.observability import configure_logging
    from patchbank_service.settings import ServiceSettings

    overrides = {k: v for k, v in (("banks", args.banks), ("device", args.device)) if v is not None}
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:  # one line per wrong setting, no traceback
        raise ConfigError("invalid settings: " + "; ".join(map(_setting_error, exc.errors()))) from exc
    banks = require(settings.banks, "banks directory", "--banks", "PATCHBANK_BANKS")
    if not banks.is_dir():
        raise ConfigError(f"banks directory {banks} does not exist")
    configure_logging(settings.log_json)  # only once the settings hold: errors stay one plain line
    app = create_app(settings)
    config = server_config(
        app, args.host, args.port, timeout_graceful_shutdown=args.grace, log_config=None, access_log=False
    )
    uvicorn.Server(config).run()
    return 0


def _setting_error(error: Any) -> str:
    """One pydantic error as the setting's environment variable and what is wrong with it."""
    message = str(error["msg"]).removeprefix("Value error, ")
    name = "_".join(map(str, error["loc"])).upper()
    return f"PATCHBANK_{name}: {message}" if name else message


SERVE = Command("serve", "serve every category's active bank over HTTP", _configure, _serve)
