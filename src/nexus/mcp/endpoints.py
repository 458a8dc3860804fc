"""nexusd's MCP endpoints as ASGI apps, and the one task group their sessions run in.

``McpEndpoints.vm`` serves ``/v1/vms/{ref}/mcp`` and ``McpEndpoints.manage`` serves ``/mcp``, Streamable HTTP as
the SDK implements it (sessions, notifications answered 202, JSON or SSE responses). The SDK's session managers
need a running task group for their sessions; nexusd serves with ``lifespan="off"``, so the daemon enters
``McpEndpoints.running()`` around serving instead. Mounting the apps is ``nexus.api.app``'s job; this module
knows nothing of routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.types import Message, Receive, Scope, Send

from nexus.mcp import workspace
from nexus.mcp.guest import guest_server
from nexus.mcp.manage import manage_server
from nexus.mcp.origin import OriginPolicy
from nexus.mcp.policy import policy_tools
from nexus.mcp.workspace import Workspaces
from nexus.protocol import INTERNAL_ERROR, INVALID_REQUEST
from nexus.services import DriveService, NetworkService, VmService
from nexus.services.audit import AuditService
from nexus.services.guest import GuestService
from nexus.services.policy import PolicyService

SESSION_IDLE_TIMEOUT_S = 30 * 60.0
# A tools/call carries a whole file_write in one message (MCP has no chunked upload); the agent reads up to 8 MiB per
# file_read, so a write gets that much room base64-encoded, plus the envelope. Past it: 413 from the SDK.
MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024


async def _refuse(send: Send, status: int, code: int, message: str) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in scope.get("headers", ()) if key.lower() == name), None)


# The 2024-11-05 and 2025-03-26 revisions need transports nexusd does not serve (HTTP+SSE; JSON-RPC batches): a client
# asking for one is offered 2025-06-18 instead, as the handshake allows; one that cannot speak it disconnects.
UNSERVED_VERSIONS = ("2024-11-05", "2025-03-26")
COUNTER_OFFER = "2025-06-18"
BATCH_REFUSAL = "JSON-RPC batches are not supported: send one message per POST (MCP 2025-06-18 and later)"


def screen_body(body: bytes) -> tuple[bytes, str | None]:
    """(the body to serve, or why it is refused): batches are refused, an ``initialize`` asking for a revision
    nexusd does not serve is made to ask for ``COUNTER_OFFER``. Anything else passes as it is (the SDK reports
    malformed JSON)."""
    if body.lstrip()[:1] == b"[":
        return body, BATCH_REFUSAL
    if b'"initialize"' not in body:
        return body, None
    try:
        message = json.loads(body)
    except ValueError:
        return body, None
    params = message.get("params") if isinstance(message, dict) and message.get("method") == "initialize" else None
    if not isinstance(params, dict) or params.get("protocolVersion") not in UNSERVED_VERSIONS:
        return body, None
    params["protocolVersion"] = COUNTER_OFFER
    return json.dumps(message).encode(), None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client went away; the SDK sees an empty or partial body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then http.disconnect, when it comes

    return replayed


class _Endpoint:
    """An ASGI app for one session manager: 403 for a Host or Origin the policy refuses, 503 while the manager is
    not running, else the SDK's Streamable HTTP."""

    def __init__(self, manager: StreamableHTTPSessionManager, policy: OriginPolicy) -> None:
        self.manager = manager
        self.policy = policy
        self.running = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.policy.refusal(_header(scope, b"host"), _header(scope, b"origin"))
        if refusal is not None:
            await _refuse(send, 403, INVALID_REQUEST, refusal)
            return
        if not self.running:
            await _refuse(send, 503, INTERNAL_ERROR, "the MCP endpoint is not running (nexusd is stopping)")
            return
        if scope.get("method") == "POST":
            body = await _read_body(receive, MAX_REQUEST_BODY_BYTES)
            if body is None:
                message = f"the request body is over {MAX_REQUEST_BODY_BYTES} bytes"
                await _refuse(send, 413, INVALID_REQUEST, message)
                return
            screened, refusal = screen_body(body)
            if refusal is not None:
                await _refuse(send, 400, INVALID_REQUEST, refusal)
                return
            if screened is not body:
                length = str(len(screened)).encode()
                headers = [(k, length if k.lower() == b"content-length" else v) for k, v in scope["headers"]]
                scope = {**scope, "headers": headers}
            receive = _replay(screened, receive)
        await self.manager.handle_request(scope, receive, send)


def _manager(server: Server[Any], idle_timeout_s: float) -> StreamableHTTPSessionManager:
    return StreamableHTTPSessionManager(
        server, session_idle_timeout=idle_timeout_s, max_request_body_size=MAX_REQUEST_BODY_BYTES
    )


class McpEndpoints:
    def __init__(
        self,
        vms: VmService,
        guest: GuestService,
        network: NetworkService,
        drives: DriveService,
        workspaces: Workspaces,
        *,
        portal_policy: PolicyService,
        policy: OriginPolicy | None = None,
        session_idle_timeout_s: float = SESSION_IDLE_TIMEOUT_S,
        audit: AuditService | None = None,
    ) -> None:
        policy = policy or OriginPolicy.build()
        vm_server = guest_server(guest, workspaces, vms.get, audit)
        self.vm = _Endpoint(_manager(vm_server, session_idle_timeout_s), policy)
        tools = {**workspace.manage_tools(drives, workspaces, network.info), **policy_tools(portal_policy)}
        manage = manage_server(vms, guest, network, tools, audit)
        self.manage = _Endpoint(_manager(manage, session_idle_timeout_s), policy)
        self._stopping = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the session managers (once per instance) until the block ends or ``stop()`` is called.

        The managers live in one owner task, so ``stop()`` can close every session (and end open SSE streams) as
        soon as shutdown begins, instead of leaving them to the server's graceful-shutdown timeout."""
        started = asyncio.Event()
        owner = asyncio.create_task(self._own(started), name="mcp-sessions")
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait({owner, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if owner.done():
            owner.result()  # raises what stopped it
        try:
            yield
        finally:
            self.stop()
            await owner

    def stop(self) -> None:
        """Stop serving MCP: new requests get 503, sessions are closed. Safe to call more than once."""
        for endpoint in (self.vm, self.manage):
            endpoint.running = False
        self._stopping.set()

    async def _own(self, started: asyncio.Event) -> None:
        async with self.vm.manager.run(), self.manage.manager.run():
            for endpoint in (self.vm, self.manage):
                endpoint.running = not self._stopping.is_set()
            started.set()
            await self._stopping.wait()
