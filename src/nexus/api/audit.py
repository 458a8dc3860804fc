"""ASGI middleware writing the API's part of the audit log: every REST mutation (POST, PUT, PATCH, DELETE on a
route) and every request refused by authorization (401/403, any method, the MCP endpoints included).

It sits outside ``api.middleware.Access``, so it sees that middleware's refusals too, and reads who called from
``scope["state"]["caller"]``, which Access sets. An entry names the route's path template
(``POST /v1/vms/{ref}/start``), never the raw path, and the VM its ``{ref}`` resolves to (before the call: a
removed VM is still named). Of the request body it keeps only the digest and size (``domain.audit.digest`` for
JSON, sha256 of the bytes otherwise; below /v1/secrets only the size, :data:`UNDIGESTED`); of the response only
its size, counted as it is sent, so a stream is never buffered. Allowed calls on the MCP endpoints are recorded
per tool call by ``nexus.mcp.audit`` instead.

A WebSocket (a terminal, ``/v1/vms/{ref}/shell``) is recorded once, when its handshake is decided, as
``WS <template>``: allowed when accepted, denied when Access refuses it, an error for any other refusal (the
denial response's status); the query (the command) is kept as a digest.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexus.api.middleware import MAX_BODY_BYTES, is_mcp_path, over_tcp
from nexus.domain import utcnow
from nexus.domain.audit import ANONYMOUS_CALLER, AuditEntry, Decision, Via, digest
from nexus.services.audit import AuditService

MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REFUSED = frozenset({401, 403})
# Bodies sent here are recorded by their size alone: a secret's value may be short enough that its sha256 is found
# by guessing. The raw path, not the route: a value sent to a wrong method or path is not digested either.
UNDIGESTED = "/v1/secrets"
_REFUSAL_BODY_MAX = 16 * 1024
_PARAM_RE = re.compile(r"\{(\w+)\}")  # a refusal's error body is read for its message, and no more of it


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


class _Answer:
    """The response as it is sent: status, size, and the start of a refusal's body (for its message)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 500  # until the app says otherwise: an exception it let through
        self.size = 0
        self._refusal = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.refused and len(self._refusal) < _REFUSAL_BODY_MAX:
                self._refusal.extend(chunk[: _REFUSAL_BODY_MAX - len(self._refusal)])
        await self._send(message)

    @property
    def refused(self) -> bool:
        return self.status in REFUSED

    def reason(self) -> str:
        return _error_message(bytes(self._refusal), self.status)


def _error_message(body: bytes, status: int) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"


class RouteTemplates:
    """Which path template serves a method and path, from the API's own route list (``FastAPI.openapi()``'s paths
    plus the MCP endpoints, which the document leaves out). A parameter is one path segment, as the router reads
    ``{name}``; templates with fewer parameters are tried first, so a literal segment wins over a parameter."""

    def __init__(self, methods_by_path: Mapping[str, Iterable[str]]) -> None:
        ordered = sorted(methods_by_path.items(), key=lambda item: item[0].count("{"))
        self._routes = [(template, _pattern(template), {m.upper() for m in methods}) for template, methods in ordered]

    def match(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        """``(template, parameters)``: of a route taking ``method`` at ``path``, else of any route at ``path`` (a
        refused request may use a method the path does not take)."""
        found = None
        for template, pattern, methods in self._routes:
            matched = pattern.fullmatch(path)
            if matched is not None:
                if method in methods:
                    return template, matched.groupdict()
                found = found or (template, matched.groupdict())
        return found


def _pattern(template: str) -> re.Pattern[str]:
    parts, end = [], 0
    for param in _PARAM_RE.finditer(template):
        parts += [re.escape(template[end : param.start()]), f"(?P<{param[1]}>[^/]+)"]
        end = param.end()
    return re.compile("".join([*parts, re.escape(template[end:])]))


def templates_of(app: FastAPI) -> RouteTemplates:
    paths = {path: list(operations) for path, operations in app.openapi()["paths"].items()}
    websockets = {"/v1/vms/{ref}/shell": ["GET"]}  # the handshake is a GET; OpenAPI has no WebSockets
    return RouteTemplates({**paths, **websockets, "/mcp": ["POST"], "/v1/vms/{ref}/mcp": ["POST"]})


class AuditTrail:
    def __init__(self, app: ASGIApp, audit: AuditService, api: FastAPI) -> None:
        self.app = app
        self.audit = audit
        self.api = api
        self._templates: RouteTemplates | None = None  # the routes are all there by the first request

    def _route(self, scope: Scope) -> tuple[str, dict[str, str]] | None:
        if self._templates is None:
            self._templates = templates_of(self.api)
        return self._templates.match(scope["method"], scope["path"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        mutation = scope["type"] == "http" and scope["method"] in MUTATIONS
        if not mutation and (scope["type"] != "http" or not over_tcp(scope)):  # reads over the Unix socket
            await self.app(scope, receive, send)  # are never refused, so never recorded
            return
        at, started = utcnow(), time.monotonic()
        route = self._route(scope)
        mcp = is_mcp_path(scope["path"])
        ref = route[1].get("ref") if route is not None and route[0].startswith("/v1/vms/{ref}") else None
        recorded = mutation and route is not None and not mcp  # else only if refused
        target = self.audit.target(ref) if recorded and isinstance(ref, str) else None  # now: a DELETE removes it
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        body = _Body(receive, int(declared) if declared.isdigit() else 0)
        answer = _Answer(send)
        try:
            await self.app(scope, body.receive, answer.send)
        finally:
            if recorded or answer.refused:
                if target is None:
                    target = self.audit.target(ref) if isinstance(ref, str) else (None, None)
                content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
                args_digest, args_bytes = body.digest(content_type == b"application/json")
                if scope["path"] == UNDIGESTED or scope["path"].startswith(UNDIGESTED + "/"):
                    args_digest = None
                self.audit.record(
                    AuditEntry(
                        at=at,
                        caller=str(scope.get("state", {}).get("caller", ANONYMOUS_CALLER)),
                        via=Via.MCP if mcp else Via.REST,
                        action=f"{scope['method']} {route[0] if route is not None else scope['path'][:200]}",
                        decision=Decision.DENY if answer.refused else Decision.ALLOW,
                        target_id=target[0],
                        target=target[1],
                        reason=answer.reason() if answer.refused else "",
                        args_digest=args_digest,
                        args_bytes=args_bytes,
                        duration_ms=(time.monotonic() - started) * 1000,
                        result_bytes=answer.size,
                        is_error=answer.status >= 400,
                    )
                )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record the handshake's outcome as soon as it is decided (a terminal may stay open for hours)."""
        at, started = utcnow(), time.monotonic()
        if self._templates is None:
            self._templates = templates_of(self.api)
        route = self._templates.match("GET", scope["path"])
        ref = route[1].get("ref") if route is not None else None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        status: int | None = None
        denial = bytearray()

        def record(status: int) -> None:
            target = self.audit.target(ref) if isinstance(ref, str) else (None, None)
            args_digest, args_bytes = digest(query) if query else (None, 0)
            refused = status in REFUSED
            self.audit.record(
                AuditEntry(
                    at=at,
                    caller=str(scope.get("state", {}).get("caller", ANONYMOUS_CALLER)),
                    via=Via.REST,
                    action=f"WS {route[0] if route is not None else scope['path'][:200]}",
                    decision=Decision.DENY if refused else Decision.ALLOW,
                    target_id=target[0],
                    target=target[1],
                    reason=_error_message(bytes(denial), status) if status >= 400 else "",
                    args_digest=args_digest,
                    args_bytes=args_bytes,
                    duration_ms=(time.monotonic() - started) * 1000,
                    result_bytes=len(denial),
                    is_error=status >= 400,
                )
            )

        async def tracking_send(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if status is None and kind in ("websocket.accept", "websocket.close"):
                status = 101 if kind == "websocket.accept" else 403  # a close before accepting is ASGI's 403
                record(status)
            elif status is None and kind == "websocket.http.response.start":
                status = message["status"]
            elif kind == "websocket.http.response.body" and status is not None:
                if len(denial) < _REFUSAL_BODY_MAX:
                    denial.extend(message.get("body", b"")[: _REFUSAL_BODY_MAX - len(denial)])
                if not message.get("more_body", False):
                    record(status)
            await send(message)

        await self.app(scope, receive, tracking_send)
