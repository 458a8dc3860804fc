"""ASGI middleware at the HTTP edge: request body size cap (413), and who may do what over TCP (401/403).

This module decides who is calling and over which transport; what an agent token opens is asked of
``services.tokens``, and what needs the Unix socket is ``domain.require_host_access``.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexus.api.errors import error_body
from nexus.domain import Transport
from nexus.domain.audit import ADMIN_CALLER, ANONYMOUS_CALLER, HOST_CALLER, token_caller
from nexus.services.tokens import TokenService

MAX_BODY_BYTES = 1024 * 1024


async def _send_error(send: Send, status: int, code: str, message: str, websocket: bool = False) -> None:
    """The error answer; to a WebSocket handshake, as its denial response (ASGI's extension)."""
    prefix = "websocket.http.response" if websocket else "http.response"
    body = json.dumps(error_body(code, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": f"{prefix}.start", "status": status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": body})


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes, by Content-Length or by counting while reading. Paths for which
    ``exempt`` is true pass untouched (the MCP endpoints: their session managers enforce a cap of their own; the
    archive endpoint: its body is streamed, never held).

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


class Access:
    """Who may do what, decided once per request before anything is read, and the transport recorded for the
    handlers (``scope["state"]["transport"]``, read by ``api.deps.transport``), the caller for the audit log
    (``scope["state"]["caller"]``: ``domain.audit``'s names).

    - Unix socket: everything; the socket file's mode is the guard.
    - TCP with the admin token (nexusd's token file): the whole API, except what reads or runs a file on the
      host (``domain.require_host_access``, checked where such a path is given).
    - TCP with an agent token: its own VM's MCP endpoint (``/v1/vms/{ref}/mcp``, ``ref`` resolved to the same VM)
      and nothing else: 403 anywhere else.
    - TCP with anything else, or nothing: 401.
    """

    def __init__(self, app: ASGIApp, admin_token: str | None, tokens: TokenService) -> None:
        if admin_token is not None and not admin_token:
            raise ValueError("a TCP listener needs a non-empty token")
        self.app = app
        self.admin = admin_token.encode() if admin_token is not None else None
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        transport = Transport.TCP if over_tcp(scope) else Transport.UNIX
        state = scope.setdefault("state", {})
        state["transport"], state["caller"] = transport, HOST_CALLER
        if transport is Transport.TCP:
            refusal = self._refusal(scope, state)
            if refusal is not None:
                status, code, message = refusal
                if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
                    await send({"type": "websocket.close", "code": 1008})  # a server that cannot answer in HTTP
                    return
                await _send_error(send, status, code, message, websocket=scope["type"] == "websocket")
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, state: dict[str, object]) -> tuple[int, str, str] | None:
        """Why this TCP request is refused, or None; who is calling goes to ``state["caller"]`` either way (the
        audit log names it, ``api.audit``)."""
        state["caller"] = ANONYMOUS_CALLER
        given = bearer(dict(scope["headers"]).get(b"authorization", b""))
        if given is None:
            return 401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)"
        if self.admin is not None and hmac.compare_digest(given.encode("latin-1"), self.admin):
            state["caller"] = ADMIN_CALLER
            return None
        token = self.tokens.authenticate(given)
        if token is None:
            return 401, "unauthorized", "wrong, expired or removed bearer token"
        state["caller"] = token_caller(token.id)
        match = VM_MCP_PATH.fullmatch(scope["path"])
        if scope["type"] == "http" and match is not None and self.tokens.opens(token, match[1]):
            return None
        return 403, "forbidden", f"this agent token opens only VM {token.vm_name}'s MCP endpoint"


# The VM's own MCP endpoint: exactly /v1/vms/{ref}/mcp, as the router matches it ({ref} is one path segment).
VM_MCP_PATH = re.compile(r"/v1/vms/([^/]+)/mcp")


def is_mcp_path(path: str) -> bool:
    """The MCP endpoints, ``/mcp`` and ``/v1/vms/{ref}/mcp``, and nothing else: not any path ending in /mcp."""
    return path == "/mcp" or VM_MCP_PATH.fullmatch(path) is not None


# A VM's tar stream endpoint, whose PUT body is a whole tree, streamed to the agent as it arrives.
ARCHIVE_PATH = re.compile(r"/v1/vms/[^/]+/archive")


def is_archive_path(path: str) -> bool:
    return ARCHIVE_PATH.fullmatch(path) is not None


def bearer(header: bytes) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header; the scheme is case-insensitive (RFC 7235)."""
    scheme, _, credentials = header.decode("latin-1").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


def over_tcp(scope: Scope) -> bool:
    # uvicorn reports a Unix socket as (path, None) and a TCP socket as (host, port).
    server = scope.get("server") or (None, None)
    return server[1] is not None
