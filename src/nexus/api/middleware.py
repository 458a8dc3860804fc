"""ASGI middleware at the HTTP edge: request body size cap (413) and bearer token on TCP (401)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexus.api.errors import error_body

MAX_BODY_BYTES = 1024 * 1024


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes, by Content-Length or by counting while reading. Paths for which
    ``exempt`` is true pass untouched (the MCP endpoints: their session managers enforce a cap of their own).

    The body is read here first (it is small: JSON requests) and replayed to the app, so an oversized
    streamed body becomes a clean 413 instead of a parse error deep in a handler.
    """

    def __init__(
        self, app: ASGIApp, limit: int = MAX_BODY_BYTES, exempt: Callable[[str], bool] = lambda _path: False
    ) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        message = f"request body is larger than {limit} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_error(send, 413, "payload_too_large", message)
                return
        buffered: list[Message] = []
        received = 0
        while True:
            msg = await receive()
            buffered.append(msg)
            if msg["type"] != "http.request":
                break
            received += len(msg.get("body", b""))
            if received > limit:
                await _send_error(send, 413, "payload_too_large", message)
                return
            if not msg.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)


class TcpToken:
    """Require ``Authorization: Bearer <token>`` on connections that arrived over TCP.

    Unix-socket connections are trusted: their access is governed by the socket file's mode.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("a TCP listener needs a non-empty token")
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _over_tcp(scope):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _send_error(send, 401, "unauthorized", "missing or wrong bearer token")
                return
        await self.app(scope, receive, send)


def _over_tcp(scope: Scope) -> bool:
    # uvicorn reports a Unix socket as (path, None) and a TCP socket as (host, port).
    server = scope.get("server") or (None, None)
    return server[1] is not None
