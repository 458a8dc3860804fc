"""ASGI middleware writing the API's part of the audit log: every REST mutation (POST, PUT, PATCH, DELETE on a
route) and every request refused by authorization (401/403, any method, the MCP endpoints included).

It sits outside ``api.middleware.Access``, so it sees that middleware's refusals too, and reads who called from
``scope["state"]["caller"]``, which Access sets. An entry names the route's path template
(``POST /v1/vms/{ref}/start``), never the raw path, and the VM its ``{ref}`` resolves to (before the call: a
removed VM is still named). Of the request body it keeps only the digest and size (``domain.audit.digest`` for
JSON, sha256 of the bytes otherwise); of the response only its size, counted as it is sent, so a stream is never
buffered. Allowed calls on the MCP endpoints are recorded per tool call by ``nexus.mcp.audit`` instead.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexus.api.middleware import MAX_BODY_BYTES, is_mcp_path, over_tcp
from nexus.domain import utcnow
from nexus.domain.audit import ANONYMOUS_CALLER, AuditEntry, Decision, Via, digest
from nexus.services.audit import AuditService

MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REFUSED = frozenset({401, 403})
_REFUSAL_BODY_MAX = 16 * 1024  # a refusal's error body is read for its message, and no more of it


class _Body:
    """The request body as the app reads it: its size, and its bytes while they are few enough to digest (the
    REST cap; ``BodyLimit`` refuses more)."""

    def __init__(self, receive: Receive, declared: int) -> None:
        self._receive = receive
        self._chunks: list[bytes] = []
        self.size = 0
        self.declared = declared
        self.complete = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size <= MAX_BODY_BYTES:
                self._chunks.append(chunk)
            self.complete = not message.get("more_body", False)
        return message

    def digest(self, json_body: bool) -> tuple[str | None, int]:
        """``(digest, size)``; no digest for an empty body or one not read to its end (only its size is known)."""
        if not self.complete or self.size > MAX_BODY_BYTES:
            return None, max(self.size, self.declared)
        if self.size == 0:
            return None, 0
        raw = b"".join(self._chunks)
        if json_body:
            try:
                return digest(json.loads(raw))
            except ValueError:
                pass  # not JSON after all: the bytes' digest
        return hashlib.sha256(raw).hexdigest(), self.size


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def _refusal_message(status: int, body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"
    return str(message)


class AuditTrail:
    def __init__(self, app: ASGIApp, audit: AuditService, router: Router) -> None:
        self.app = app
        self.audit = audit
        self.router = router

    def _route(self, scope: Scope) -> tuple[str, dict[str, Any]] | None:
        """The path template and parameters of the route serving ``scope``, as the router will pick it."""
        for route in self.router.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", scope["path"])), dict(child.get("path_params", {}))
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        mutation = method in MUTATIONS
        if not mutation and not over_tcp(scope):  # a read over the Unix socket: never refused, never recorded
            await self.app(scope, receive, send)
            return
        at, started = utcnow(), time.monotonic()
        route = self._route(scope)
        mcp = is_mcp_path(scope["path"])
        ref = route[1].get("ref") if route is not None else None
        target: tuple[str | None, str | None] = (None, None)
        if mutation and not mcp and isinstance(ref, str):
            target = self.audit.target(ref)  # now: after a DELETE the VM is gone
        headers = _headers(scope)
        declared = headers.get(b"content-length", b"")
        body = _Body(receive, int(declared) if declared.isdigit() else 0)
        status, sent, refusal = 500, 0, bytearray()

        async def watching(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                sent += len(chunk)
                if status in REFUSED and len(refusal) < _REFUSAL_BODY_MAX:
                    refusal.extend(chunk[: _REFUSAL_BODY_MAX - len(refusal)])
            await send(message)

        try:
            await self.app(scope, body.receive, watching)
        finally:
            denied = status in REFUSED
            if denied or (mutation and route is not None and not mcp):
                if denied and isinstance(ref, str) and target == (None, None):
                    target = self.audit.target(ref)
                content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
                args_digest, args_bytes = body.digest(content_type == b"application/json")
                self.audit.record(
                    AuditEntry(
                        at=at,
                        caller=str(scope.get("state", {}).get("caller", ANONYMOUS_CALLER)),
                        via=Via.MCP if mcp else Via.REST,
                        action=f"{method} {route[0] if route is not None else scope['path'][:200]}",
                        decision=Decision.DENY if denied else Decision.ALLOW,
                        target_id=target[0],
                        target=target[1],
                        reason=_refusal_message(status, bytes(refusal)) if denied else "",
                        args_digest=args_digest,
                        args_bytes=args_bytes,
                        duration_ms=(time.monotonic() - started) * 1000,
                        result_bytes=sent,
                        is_error=status >= 400,
                    )
                )
