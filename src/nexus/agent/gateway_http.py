"""The gateway's MCP Streamable HTTP endpoint on the VM's loopback (``127.0.0.1:7780/mcp`` by default).

For agents that speak MCP over HTTP rather than stdio. Each HTTP session (``Mcp-Session-Id``, issued on
``initialize``) is one session of the hub. The slice of the transport served, and kept small:

* POST ``/mcp``, one JSON-RPC message (a batch is 400). A request is answered as ``text/event-stream`` when the
  client accepts it - its progress notifications (matched by the ``progressToken`` in ``params._meta``), then
  its response - else as ``application/json``. Notifications and responses are 202.
* DELETE ends the session (``gateway/close``): 204. An unknown session is 404, a missing one 400.
* GET is 405: there is no standalone stream, so a server message that belongs to no request is dropped.
* Host and Origin must name a loopback host (403 otherwise): a page in the VM's browser that a DNS name was
  rebound for must not reach nexusd.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import urlsplit

from nexus.agent.gateway import LINK_DOWN, GatewayHub, parse_client_message
from nexus.protocol import (
    INITIALIZE_METHOD,
    INVALID_REQUEST,
    PROGRESS_NOTIFICATION,
    JsonRpcError,
    Request,
    RequestId,
    encode_message,
    error_response,
)

__all__ = ["HttpFront"]

log = logging.getLogger("nexus.agent")

MCP_PATH: Final = "/mcp"
SESSION_HEADER: Final = "Mcp-Session-Id"
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})

Message = dict[str, Any]


def _progress_token(msg: Request) -> str | int | None:
    meta = msg.params.get("_meta") if isinstance(msg.params, dict) else None
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token if isinstance(token, str) or (isinstance(token, int) and not isinstance(token, bool)) else None


def _loopback(value: str, *, url: bool) -> bool:
    """Whether a Host header (``url`` False) or an Origin (``url`` True) names a loopback host."""
    try:
        host = urlsplit(value if url else f"//{value}").hostname
    except ValueError:
        return False
    return host is not None and host.lower() in LOOPBACK_NAMES


class _Session:
    """One HTTP session: routes nexusd's messages to the POST waiting for them."""

    def __init__(self, http_id: str, front: HttpFront) -> None:
        self.http_id = http_id
        self._front = front
        self._lock = threading.Lock()
        self._waiters: dict[RequestId, queue.SimpleQueue[Message | None]] = {}
        self._tokens: dict[str | int, RequestId] = {}
        self.gateway_id = front.hub.open_session(self)

    def wait_for(self, request_id: RequestId, token: str | int | None) -> queue.SimpleQueue[Message | None]:
        waiter: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        with self._lock:
            self._waiters[request_id] = waiter
            if token is not None:
                self._tokens[token] = request_id
        return waiter

    def done(self, request_id: RequestId, token: str | int | None) -> None:
        with self._lock:
            self._waiters.pop(request_id, None)
            if token is not None:
                self._tokens.pop(token, None)

    def deliver(self, message: Message) -> None:
        with self._lock:
            if "method" not in message:
                target = message.get("id")
            elif message.get("method") == PROGRESS_NOTIFICATION and isinstance(message.get("params"), dict):
                target = self._tokens.get(message["params"].get("progressToken"))
            else:
                target = None
            waiter = self._waiters.get(target) if isinstance(target, str | int) else None
        if waiter is None:
            log.debug("gateway: http session %s: no request waits for %s", self.gateway_id, message.get("method"))
        else:
            waiter.put(message)

    def end(self) -> None:
        """nexusd ended the session (or the endpoint is closing): every waiting POST gets its answer now."""
        self._front.forget(self.http_id)
        with self._lock:
            waiters = list(self._waiters.values())
        for waiter in waiters:
            waiter.put(None)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "nexus-gateway"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("gateway http: " + format, *args)

    def _send(self, status: int, body: Message | None = None, headers: dict[str, str] | None = None) -> None:
        data = encode_message(body) if body is not None else b""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refused(self) -> bool:
        """Answer (and True) when the request must not reach the session: wrong path, or not loopback."""
        if urlsplit(self.path).path != MCP_PATH:
            self._send(404, error_response(None, INVALID_REQUEST, f"not found; the MCP endpoint is {MCP_PATH}"))
            return True
        origin = self.headers.get("Origin")
        if not _loopback(self.headers.get("Host", ""), url=False) or (
            origin is not None and not _loopback(origin, url=True)
        ):
            self._send(403, error_response(None, INVALID_REQUEST, "forbidden: only loopback Host and Origin"))
            return True
        return False

    def _session(self) -> _Session | None:
        http_id = self.headers.get(SESSION_HEADER)
        if http_id is None:
            self._send(400, error_response(None, INVALID_REQUEST, f"missing {SESSION_HEADER} header"))
            return None
        session = self.server.front.session(http_id)
        if session is None:
            self._send(404, error_response(None, INVALID_REQUEST, "session not found"))
        return session

    def do_GET(self) -> None:
        if not self._refused():
            self._send(405, headers={"Allow": "POST, DELETE"})

    def do_DELETE(self) -> None:
        if self._refused() or (session := self._session()) is None:
            return
        self.server.front.close_session(session)
        self._send(204)

    def do_POST(self) -> None:
        if self._refused():
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(413, error_response(None, INVALID_REQUEST, f"body over {MAX_BODY_BYTES} bytes"))
            return
        body = self.rfile.read(length)
        if body.lstrip().startswith(b"["):
            self._send(400, error_response(None, INVALID_REQUEST, "batches are not supported"))
            return
        try:
            raw, msg = parse_client_message(body)
        except JsonRpcError as exc:
            self._send(400, error_response(None, exc.code, exc.message))
            return
        request = msg if isinstance(msg, Request) and msg.id is not None else None
        front = self.server.front
        session = (
            front.new_session() if request is not None and request.method == INITIALIZE_METHOD else self._session()
        )
        if session is None:
            return
        if request is None or request.id is None:
            front.hub.forward(session.gateway_id, raw, msg)
            self._send(202, headers={SESSION_HEADER: session.http_id})
            return
        request_id, token = request.id, _progress_token(request)
        waiter = session.wait_for(request_id, token)
        answer: Message | None = None
        try:
            front.hub.forward(session.gateway_id, raw, msg)
            if "text/event-stream" in self.headers.get("Accept", ""):
                answer = self._stream(session, request_id, waiter)
            else:
                answer = self._answer(session, request_id, waiter)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("gateway: http client left before request %r was answered", request_id)
        finally:
            session.done(request_id, token)
            if request.method == INITIALIZE_METHOD and (answer is None or "result" not in answer):
                front.close_session(session)  # the client never got a session it can use

    def _answer(
        self, session: _Session, request_id: RequestId, waiter: queue.SimpleQueue[Message | None]
    ) -> Message | None:
        while (message := waiter.get()) is not None and "method" in message:
            pass  # progress has nowhere to go in a JSON answer
        if message is None:
            self._send(404, error_response(request_id, LINK_DOWN, "session ended by nexusd"))
        else:
            self._send(200, message, {SESSION_HEADER: session.http_id})
        return message

    def _stream(
        self, session: _Session, request_id: RequestId, waiter: queue.SimpleQueue[Message | None]
    ) -> Message | None:
        self.close_connection = True  # the stream's end is the connection's end (no chunked encoding here)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header(SESSION_HEADER, session.http_id)
        self.end_headers()
        while True:
            message = waiter.get()
            event = message or error_response(request_id, LINK_DOWN, "session ended by nexusd")
            self.wfile.write(b"event: message\ndata: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()
            if message is None or "method" not in message:
                return message


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], front: HttpFront) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.front = front
        super().__init__(address, _Handler)


class HttpFront:
    """The endpoint; ``start`` binds it (OSError when it cannot), ``close`` ends it and its sessions."""

    def __init__(self, address: tuple[str, int], hub: GatewayHub) -> None:
        self.address = address
        self.hub = hub
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._server: _Server | None = None

    @property
    def port(self) -> int:
        """The bound port (``address`` may ask for 0)."""
        return self._server.server_address[1] if self._server is not None else self.address[1]

    def start(self) -> None:
        self._server = _Server(self.address, self)
        threading.Thread(target=self._server.serve_forever, name="gateway-http", daemon=True).start()
        log.info("gateway: MCP Streamable HTTP on http://%s:%d%s", self.address[0], self.port, MCP_PATH)

    def new_session(self) -> _Session:
        http_id = secrets.token_urlsafe(18)
        session = _Session(http_id, self)
        with self._lock:
            self._sessions[http_id] = session
        return session

    def session(self, http_id: str) -> _Session | None:
        with self._lock:
            return self._sessions.get(http_id)

    def forget(self, http_id: str) -> None:
        with self._lock:
            self._sessions.pop(http_id, None)

    def close_session(self, session: _Session) -> None:
        self.hub.client_closed(session.gateway_id)
        session.end()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            self.close_session(session)
