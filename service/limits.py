"""What is checked before a request's body is read, as ASGI middleware: its size (413, with or without
Content-Length) and its API key (401)."""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                await self._too_large(send)
                return
            await self.app(scope, receive, send)
            return
        # no Content-Length (chunked): read the body up to the limit, then replay it
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                await self._too_large(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await send_json(send, 413, f"upload too large: the limit is {self.limit / (1024 * 1024):g} MiB")


# The routes name the header with this (a no-op dependency) so that the API docs show it and offer to send
# it; the check itself runs in KeyGate, from the headers, before the body is read.
api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed when API keys are set")


class KeyGate:
    """API keys checked from the headers, before the body is read: an unauthenticated 60 MB upload costs
    the server nothing. ``public`` paths (health, metrics, the API docs) need no key, nor any path under
    one of ``public_prefixes`` (the console's static files) that has no ``..`` segment; with no key
    configured every path is open."""

    def __init__(
        self, app: ASGIApp, keys: list[str], public: frozenset[str], public_prefixes: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.keys = keys
        self.public = public
        self.public_prefixes = public_prefixes

    def is_public(self, path: str) -> bool:
        if path in self.public:
            return True
        return path.startswith(self.public_prefixes) and ".." not in path.split("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self.is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-api-key", b"").decode("latin-1")
        if key_ok(given, self.keys):
            await self.app(scope, receive, send)
            return
        await send_json(send, 401, "missing or invalid API key (X-API-Key header)")


def key_ok(given: str | None, keys: list[str]) -> bool:
    """Whether ``given`` is one of ``keys``, compared with every key in constant time (no early exit)."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest((given or "").encode(), key.encode())
    return ok


async def send_json(send: Send, status: int, detail: str) -> None:
    """A complete JSON error answer, ``{"detail": ...}``, straight from the middleware."""
    body = json.dumps({"detail": detail}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
