"""The MCP port: MCP JSON-RPC 2.0 (handshake era, 2024-11-05 … 2025-11-25) over newline-delimited JSON.

Methods: ``initialize`` (answers the client's protocolVersion when supported, else the latest),
``ping``, ``tools/list``, ``tools/call``, ``nexus/echo`` (params back, the benchmarks' raw-channel
baseline), the archive sessions' ``nexus/archive/*`` (``nexus.agent.archive_sessions``, on the pool) and the
terminals' ``nexus/pty_*`` (``nexus.agent.pty_rpc``). Notifications get no reply: ``notifications/initialized`` is
noted, ``notifications/cancelled`` cancels the named in-flight call (its response is then never sent), the rest are
ignored. Unknown methods - including the SDK's ``server/discover`` probe - are -32601. Requests are accepted before
``initialize`` too: the host may use the port without a handshake.

Concurrency: ``tools/call`` runs on a bounded thread pool, so a long ``run_command`` never holds up a
``file_read``; so do the archive methods, which may wait for a chunk. Every other method is answered inline
on the reader thread. Responses and progress notifications go through the connection's write lock. When a
connection ends, its in-flight calls are cancelled (their results could not be delivered anyway), and its
archive sessions end.

Errors: params of ``tools/call`` that are not an object, lack a string ``name``, have non-object
``arguments`` or name no tool of this agent → -32602 (the MCP spec's protocol errors); everything that goes
wrong inside a tool (including bad arguments) → a result with ``isError: true`` (see ``nexus.agent.tools``).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor
from typing import Any

from nexus import __version__
from nexus.agent.archive_sessions import ArchiveSessions
from nexus.agent.pty_rpc import PTY_METHODS, PtyMethods
from nexus.agent.session import Connection, RpcService
from nexus.agent.tools import Toolbox, ToolContext
from nexus.agent.tools.base import ProgressFn
from nexus.protocol import (
    AGENT_INSTRUCTIONS,
    CANCELLED_NOTIFICATION,
    ECHO_METHOD,
    INITIALIZE_METHOD,
    INITIALIZED_NOTIFICATION,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MCP_PING_METHOD,
    METHOD_NOT_FOUND,
    PROGRESS_NOTIFICATION,
    SERVER_NAME,
    STREAM_META_KEY,
    TOOLS_CALL_METHOD,
    TOOLS_LIST_METHOD,
    JsonRpcError,
    Request,
    RequestId,
    negotiate_protocol_version,
    notification,
    result_response,
)
from nexus.protocol.archive import ARCHIVE_METHODS

__all__ = ["McpService"]

log = logging.getLogger("nexus.agent")


def _progress_token(params: dict[str, Any]) -> str | int | None:
    meta = params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    if isinstance(token, str) or (isinstance(token, int) and not isinstance(token, bool)):
        return token
    return None


class McpService(RpcService):
    def __init__(self, toolbox: Toolbox, executor: Executor, archives: ArchiveSessions | None = None) -> None:
        self._toolbox = toolbox
        self._executor = executor
        self._archives = archives or ArchiveSessions()
        self._pty = PtyMethods(toolbox.terminals)
        self._inflight: dict[tuple[int, RequestId], threading.Event] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    # --- lifecycle ---------------------------------------------------------------------------------

    def closed(self, conn: Connection) -> None:
        self._archives.drop(conn.id)
        self._pty.connection_closed(conn)
        with self._lock:
            events = [event for (conn_id, _), event in self._inflight.items() if conn_id == conn.id]
        for event in events:
            event.set()
        if events:
            log.info("mcp: connection %d ended; cancelled %d call(s) in flight", conn.id, len(events))

    def drain(self, conn: Connection, stop: threading.Event) -> None:
        with self._changed:
            while not stop.is_set() and any(conn_id == conn.id for conn_id, _ in self._inflight):
                self._changed.wait(0.25)

    def cancel_all(self) -> None:
        with self._lock:
            events = list(self._inflight.values())
        for event in events:
            event.set()

    # --- dispatch ----------------------------------------------------------------------------------

    def on_notification(self, conn: Connection, note: Request) -> None:
        if note.method == INITIALIZED_NOTIFICATION:
            log.info("mcp: client initialized")
        elif note.method == CANCELLED_NOTIFICATION and isinstance(note.params, dict):
            request_id = note.params.get("requestId")
            with self._lock:
                event = self._inflight.get((conn.id, request_id)) if isinstance(request_id, str | int) else None
            if event is not None:
                log.info("mcp: cancelling request %r (%s)", request_id, note.params.get("reason", "no reason"))
                event.set()
        else:
            log.debug("mcp: ignoring notification %s", note.method)

    def on_request(self, conn: Connection, req: Request) -> None:
        method = req.method
        if method == TOOLS_CALL_METHOD:
            self._start_call(conn, req)
        elif method == INITIALIZE_METHOD:
            self.reply(conn, req, self._initialize(req.params))
        elif method == MCP_PING_METHOD:
            self.reply(conn, req, {})
        elif method == TOOLS_LIST_METHOD:
            self.reply(conn, req, {"tools": self._toolbox.list()})
        elif method == ECHO_METHOD:
            self.reply(conn, req, req.params)
        elif method in ARCHIVE_METHODS:
            try:
                self._executor.submit(self._archives.serve, conn, req)
            except RuntimeError as exc:  # the pool is shut down: the agent is stopping
                raise JsonRpcError(INTERNAL_ERROR, f"agent is shutting down: {exc}") from exc
        elif method in PTY_METHODS:
            self._pty.on_request(conn, req)
        else:
            raise JsonRpcError(METHOD_NOT_FOUND, f"method not found: {method}")

    def _initialize(self, params: Any) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise JsonRpcError(INVALID_PARAMS, "initialize params must be an object")
        version = negotiate_protocol_version(params.get("protocolVersion"))
        client = params.get("clientInfo")
        client_name = client.get("name") if isinstance(client, dict) else None
        log.info("mcp: initialize from %s (asked %s, answered %s)", client_name, params.get("protocolVersion"), version)
        return {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": SERVER_NAME, "version": __version__},
            "instructions": AGENT_INSTRUCTIONS,
        }

    # --- tools/call --------------------------------------------------------------------------------

    def _start_call(self, conn: Connection, req: Request) -> None:
        params = req.params
        if not isinstance(params, dict):
            raise JsonRpcError(INVALID_PARAMS, "tools/call params must be an object")
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise JsonRpcError(INVALID_PARAMS, 'tools/call params need a string "name"')
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise JsonRpcError(INVALID_PARAMS, 'tools/call "arguments" must be an object')
        if name not in self._toolbox.tools:  # a protocol error, as the MCP spec lists it: the tool never ran
            raise JsonRpcError(INVALID_PARAMS, f"unknown tool {name!r}; tools/list names the tools")
        if req.id is None:  # unreachable: notifications never get here
            return
        key = (conn.id, req.id)
        cancelled = threading.Event()
        with self._lock:
            if key in self._inflight:
                raise JsonRpcError(INVALID_REQUEST, f"request id {req.id!r} is already in flight")
            self._inflight[key] = cancelled
        token = _progress_token(params)
        try:
            self._executor.submit(self._run_call, conn, req.id, name, arguments, token, cancelled)
        except RuntimeError as exc:  # the pool is shut down: the agent is stopping
            with self._lock:
                self._inflight.pop(key, None)
            raise JsonRpcError(INTERNAL_ERROR, f"agent is shutting down: {exc}") from exc

    @staticmethod
    def _progress_fn(conn: Connection, token: str | int) -> ProgressFn:
        def progress(value: int, message: str, stream: str) -> None:
            params = {"progressToken": token, "progress": value, "message": message, "_meta": {STREAM_META_KEY: stream}}
            conn.send(notification(PROGRESS_NOTIFICATION, params))

        return progress

    def _run_call(
        self,
        conn: Connection,
        request_id: RequestId,
        name: str,
        arguments: dict[str, Any],
        token: str | int | None,
        cancelled: threading.Event,
    ) -> None:
        started = time.monotonic()
        try:
            if cancelled.is_set():  # cancelled while queued for a worker
                log.info("mcp: tools/call %s (id %r) cancelled before it started", name, request_id)
                return
            progress = None if token is None else self._progress_fn(conn, token)
            result = self._toolbox.call(name, arguments, ToolContext(cancelled=cancelled, progress=progress))
            elapsed = time.monotonic() - started
            if cancelled.is_set():
                log.info("mcp: tools/call %s (id %r) cancelled after %.3fs; no response", name, request_id, elapsed)
                return
            conn.send(result_response(request_id, result.to_mcp()))
            # After the answer, and successes only at debug: the log is the VM's serial console, which costs
            # milliseconds a line under emulation (python -m bench mcp).
            if result.is_error:
                log.info("mcp: tools/call %s (id %r) error in %.3fs: %s", name, request_id, elapsed, result.text[:200])
            else:
                log.debug("mcp: tools/call %s (id %r) ok in %.3fs", name, request_id, elapsed)
        except Exception:
            log.exception("mcp: tools/call %s (id %r) crashed", name, request_id)
        finally:
            with self._changed:
                self._inflight.pop((conn.id, request_id), None)
                self._changed.notify_all()
