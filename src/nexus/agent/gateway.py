"""The gateway hub: MCP sessions of agents inside the VM, tunnelled to nexusd over the gateway stream.

nexusd serves the sessions; the hub only multiplexes them (``nexus.protocol.gateway``): each local client
(``gateway_unix``, ``gateway_http``) is a session with an id chosen here, its messages go up as
``gateway/message`` and nexusd's come back the same way; ``gateway/close`` ends a session either way.

While the stream is down (nexusd restarting, not connected yet) a client's request is answered at once with
``LINK_DOWN`` - never left hanging - and its notifications and responses are dropped; requests forwarded
before the stream dropped are answered the same way, since the nexusd that had them is gone. When a stream
comes up, every session whose ``initialize`` nexusd had answered is opened again under the same id by
replaying that ``initialize`` (with an id of the hub's own, whose reply is swallowed) and
``notifications/initialized`` before anything new is forwarded, so a client survives a nexusd restart.

Locks: ``_send_lock`` orders writes to the stream (a replay before anything new), ``_lock`` guards the
tables; the reader thread delivering nexusd's messages takes only ``_lock``, so a stalled write never holds
up delivery. ``Sink.deliver`` never blocks.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Mapping
from typing import Any, Final, Protocol

from nexus.agent.session import Connection, RpcService
from nexus.protocol import (
    GATEWAY_CLOSE,
    GATEWAY_MESSAGE,
    INITIALIZE_METHOD,
    INITIALIZED_NOTIFICATION,
    METHOD_NOT_FOUND,
    InvalidMessage,
    JsonRpcError,
    Request,
    RequestId,
    Response,
    decode_message,
    error_response,
    notification,
    parse_message,
)

__all__ = ["LINK_DOWN", "LINK_DOWN_MESSAGE", "GatewayHub", "Sink", "parse_client_message"]

log = logging.getLogger("nexus.agent")

LINK_DOWN: Final = -32000
LINK_DOWN_MESSAGE: Final = "nexusd is not reachable from this VM right now (the gateway link is down); retry shortly"
REPLAY_ID_PREFIX: Final = "nexus-replay-"

Message = dict[str, Any]


class Sink(Protocol):
    """The local end of one session."""

    def deliver(self, message: Message) -> None:
        """Pass one message to the local client; must not block."""

    def end(self) -> None:
        """nexusd ended the session: close the local client."""


class _Session:
    __slots__ = ("announced", "inflight", "initialize", "initialized", "pending_init", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.announced = False
        """nexusd has heard of the session on the current stream (a close is then worth sending)."""
        self.inflight: set[RequestId] = set()
        """The client's requests forwarded on the current stream and not answered yet."""
        self.pending_init: Message | None = None
        self.initialize: Message | None = None
        """The client's ``initialize``, once nexusd answered it with a result: what a new stream replays."""
        self.initialized: Message | None = None


def parse_client_message(line: bytes) -> tuple[Message, Request | Response]:
    """One line from a local client as (the object to forward, its parsed form); raises ``JsonRpcError``."""
    raw = decode_message(line)
    return raw, parse_message(raw)


def _message_id(message: Mapping[str, Any]) -> RequestId | None:
    value = message.get("id")
    return value if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)) else None


class GatewayHub(RpcService):
    """The gateway stream's service and the local sessions' switchboard."""

    def __init__(self) -> None:
        self.linked = threading.Event()
        """Set once a stream to nexusd has opened: the gateway exists, the local endpoints may open."""
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._link: Connection | None = None
        self._fresh = False  # the next write on the stream ends any half line a previous stream left
        self._sessions: dict[str, _Session] = {}
        self._replays: set[str] = set()
        self._session_ids = itertools.count(1)
        self._replay_ids = itertools.count(1)

    # --- the local side ------------------------------------------------------------------------------

    def open_session(self, sink: Sink) -> str:
        with self._lock:
            session_id = f"s{next(self._session_ids)}"
            self._sessions[session_id] = _Session(sink)
        return session_id

    def from_client_line(self, session_id: str, line: bytes) -> None:
        """A line from a stdio-framed client: forwarded, or answered here when it is not JSON-RPC."""
        try:
            raw, msg = parse_client_message(line)
        except JsonRpcError as exc:
            reply_to = exc.request_id if isinstance(exc, InvalidMessage) else None
            self._deliver(session_id, error_response(reply_to, exc.code, exc.message))
            return
        self.forward(session_id, raw, msg)

    def forward(self, session_id: str, raw: Message, msg: Request | Response) -> None:
        request_id = msg.id if isinstance(msg, Request) else None
        with self._send_lock:
            with self._lock:
                session = self._sessions.get(session_id)
                if session is None:
                    return
                link = self._link if self._link is not None and not self._link.closed.is_set() else None
                if link is not None and request_id is not None:  # before sending: the answer may beat us back
                    session.inflight.add(request_id)
                    if isinstance(msg, Request) and msg.method == INITIALIZE_METHOD:
                        session.pending_init = raw
            sent = link is not None and self._send(link, GATEWAY_MESSAGE, {"session": session_id, "message": raw})
            with self._lock:
                if sent:
                    session.announced = True
                    if isinstance(msg, Request) and msg.method == INITIALIZED_NOTIFICATION:
                        session.initialized = raw
                elif request_id is not None:
                    session.inflight.discard(request_id)
                    if session.pending_init is raw:
                        session.pending_init = None
        if not sent and request_id is not None:
            session.sink.deliver(error_response(request_id, LINK_DOWN, LINK_DOWN_MESSAGE))

    def client_closed(self, session_id: str) -> None:
        with self._send_lock:
            with self._lock:
                session = self._sessions.pop(session_id, None)
                link = self._link if session is not None and session.announced else None
            if link is not None:
                self._send(link, GATEWAY_CLOSE, {"session": session_id})

    def _deliver(self, session_id: str, message: Message) -> None:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is not None:
            session.sink.deliver(message)

    def _send(self, link: Connection, method: str, params: Message) -> bool:
        """Write one notification on the stream; the caller holds ``_send_lock``."""
        resync, self._fresh = self._fresh, False
        return link.send(notification(method, params), resync=resync)

    # --- the stream to nexusd ------------------------------------------------------------------------

    def opened(self, conn: Connection) -> None:
        with self._send_lock:
            with self._lock:
                self._link = conn
                self._fresh = True
                replays: list[tuple[str, Message, Message | None]] = []
                for session_id, session in self._sessions.items():
                    if session.initialize is None:
                        continue
                    replay_id = f"{REPLAY_ID_PREFIX}{next(self._replay_ids)}"
                    self._replays.add(replay_id)
                    session.announced = True
                    replays.append((session_id, {**session.initialize, "id": replay_id}, session.initialized))
            for session_id, initialize, initialized in replays:
                self._send(conn, GATEWAY_MESSAGE, {"session": session_id, "message": initialize})
                if initialized is not None:
                    self._send(conn, GATEWAY_MESSAGE, {"session": session_id, "message": initialized})
        if replays:
            log.info("gateway: replayed initialize for %d session(s)", len(replays))
        self.linked.set()

    def closed(self, conn: Connection) -> None:
        failed: list[tuple[Sink, RequestId]] = []
        with self._lock:
            if self._link is not conn:
                return
            self._link = None
            self._replays.clear()
            for session in self._sessions.values():
                failed.extend((session.sink, request_id) for request_id in session.inflight)
                session.inflight.clear()
                session.pending_init = None  # never answered: not a handshake the client saw succeed
                session.announced = False
        for sink, request_id in failed:
            sink.deliver(error_response(request_id, LINK_DOWN, LINK_DOWN_MESSAGE))
        log.info("gateway: stream to nexusd ended; %d request(s) in flight answered with an error", len(failed))

    def on_request(self, conn: Connection, req: Request) -> None:
        raise JsonRpcError(METHOD_NOT_FOUND, f"method not found: {req.method} (the gateway stream has notifications)")

    def on_notification(self, conn: Connection, note: Request) -> None:
        params = note.params if isinstance(note.params, dict) else {}
        session_id = params.get("session")
        if not isinstance(session_id, str):
            log.warning("gateway: %s without a session id; ignored", note.method)
            return
        if note.method == GATEWAY_CLOSE:
            with self._lock:
                session = self._sessions.pop(session_id, None)
            if session is not None:
                log.info("gateway: nexusd ended session %s", session_id)
                session.sink.end()
            return
        message = params.get("message")
        if note.method != GATEWAY_MESSAGE or not isinstance(message, dict):
            log.warning("gateway: ignoring %s for session %s", note.method, session_id)
            return
        self._from_host(conn, session_id, message)

    def _from_host(self, conn: Connection, session_id: str, message: Message) -> None:
        refused_replay = False
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and "method" not in message:  # a response to the client's request (or ours)
                response_id = _message_id(message)
                if isinstance(response_id, str) and response_id in self._replays:
                    self._replays.discard(response_id)
                    refused_replay = "error" in message
                    if not refused_replay:
                        return
                else:
                    if response_id is not None:
                        session.inflight.discard(response_id)
                    pending = session.pending_init
                    if pending is not None and _message_id(pending) == response_id:
                        session.pending_init = None
                        session.initialize = pending if "result" in message else None
        if session is None:  # nexusd speaks of a session the agent no longer has: let it forget it too
            conn.send(notification(GATEWAY_CLOSE, {"session": session_id}))
        elif refused_replay:
            # A session nexusd will not take again would fail every call: end it, so the client sees that.
            log.warning("gateway: nexusd refused to reopen session %s: %s", session_id, message.get("error"))
            self.client_closed(session_id)
            session.sink.end()
        else:
            session.sink.deliver(message)
