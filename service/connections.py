"""Connections a client cannot hold forever: uvicorn's HTTP/1.1 protocol with read deadlines, and the server
configuration every way of serving uses (``patchbank serve``, tests, benchmarks).

uvicorn closes an idle keep-alive connection, but a connection that sends half its headers, or stops in the
middle of its body, stays open indefinitely: a few hundred such clients take every connection a replica
has. Here the headers of a request must arrive within ``header_timeout_s`` of its first byte (of the
connection's start for the first request), and a body must keep arriving, with no gap longer than
``body_timeout_s``. A connection past either deadline is closed; the others are served as before. The
number of open connections is bounded too (uvicorn answers 503 beyond ``max_connections``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a read deadline while a request is being received."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s)  # a silent connection counts as one with unfinished headers

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:  # a request's headers are on their way: one deadline from their first byte
            if self._deadline is None:
                self._arm(self.header_timeout_s)
        elif state is h11.SEND_BODY:  # the body must keep coming: a deadline from its latest bytes
            self._disarm()
            self._arm(self.body_timeout_s)
        else:  # the request is complete (the app answers) or the connection is ending
            self._disarm()

    def _arm(self, seconds: float) -> None:
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.logger.info("closing a connection whose request stalled: %s", self.client)
            self.transport.close()


def guarded_protocol(header_timeout_s: float, body_timeout_s: float) -> type[GuardedH11Protocol]:
    """The protocol class with these deadlines (uvicorn instantiates it once per connection)."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )


def server_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app``, with the connection limits of its settings when it has them
    (a Patchbank app: ``app.state.patchbank.settings``)."""
    state = getattr(getattr(app, "state", None), "patchbank", None)
    if state is not None:
        s = state.settings
        options = {
            "http": guarded_protocol(s.header_timeout_s, s.body_timeout_s),
            "limit_concurrency": s.max_connections,
            **options,
        }
    return uvicorn.Config(app, host=host, port=port, **options)
