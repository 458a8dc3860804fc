"""Serving one port: the connect → read lines → dispatch loop, and the JSON-RPC plumbing services share.

``PortRunner`` owns the loop for one endpoint: it waits for a host, wraps the stream in a
``Connection`` (serialised writes, a ``closed`` flag), feeds complete lines to its service and, when
the host goes away or a write fails, closes the connection and waits for the next host. A connection
that dies within a second is retried with a growing back-off, so a flapping link never spins.

``RpcService`` turns a line into a request, a notification or an error reply (-32700 for bad JSON,
-32600 for a bad message); responses from the host are ignored. Services never see bytes.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from nexus.agent.transport import Endpoint, PeerGone, Stream
from nexus.protocol import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MAX_LINE_BYTES,
    FrameTooLarge,
    InvalidMessage,
    JsonRpcError,
    LineBuffer,
    Request,
    Response,
    decode_message,
    encode_message,
    error_response,
    parse_message,
    result_response,
)

__all__ = ["Connection", "PortRunner", "RpcService"]

log = logging.getLogger("nexus.agent")

READ_TICK_S: Final = 0.25
_ids = itertools.count(1)


class Connection:
    """One host connection on one port. ``send`` is thread-safe and never raises."""

    def __init__(self, stream: Stream, port: str) -> None:
        self.id = next(_ids)
        self.port = port
        self.closed = threading.Event()
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: Mapping[str, Any], *, resync: bool = False) -> bool:
        """Write one message (``resync`` prefixes a newline to end any half line); False if not sent."""
        try:
            data = encode_message(message)
        except (TypeError, ValueError) as exc:
            log.error("%s: cannot encode %s: %s", self.port, message.get("method", "response"), exc)
            return False
        if resync:
            data = b"\n" + data
        with self._lock:
            if self.closed.is_set():
                return False
            try:
                self._stream.write(data)
            except PeerGone as exc:
                log.info("%s: write failed, dropping the connection: %s", self.port, exc)
                self.closed.set()
                return False
        return True

    def close(self) -> None:
        self.closed.set()


class RpcService:
    """Base of the control and MCP services: parsing, error replies, request/notification routing."""

    def opened(self, conn: Connection) -> None:
        """A host connected."""

    def closed(self, conn: Connection) -> None:
        """The connection ended (no more sends will go through)."""

    def drain(self, conn: Connection, stop: threading.Event) -> None:
        """The host stopped sending but may still read (stdin closed): finish what is in flight."""

    def on_request(self, conn: Connection, req: Request) -> None:
        raise NotImplementedError

    def on_notification(self, conn: Connection, note: Request) -> None:
        log.debug("%s: ignoring notification %s", conn.port, note.method)

    def handle_line(self, conn: Connection, line: bytes) -> None:
        try:
            msg = parse_message(decode_message(line))
        except InvalidMessage as exc:
            log.info("%s: invalid request: %s", conn.port, exc.message)
            conn.send(error_response(exc.request_id, exc.code, exc.message))
            return
        except JsonRpcError as exc:
            log.info("%s: %s", conn.port, exc.message)
            conn.send(error_response(None, exc.code, exc.message))
            return
        if isinstance(msg, Response):
            log.debug("%s: ignoring a response for id %r", conn.port, msg.id)
            return
        try:
            if msg.is_notification:
                self.on_notification(conn, msg)
            else:
                self.on_request(conn, msg)
        except JsonRpcError as exc:
            if not msg.is_notification:
                conn.send(error_response(msg.id, exc.code, exc.message, exc.data))
        except Exception as exc:
            log.exception("%s: %s failed", conn.port, msg.method)
            if not msg.is_notification:
                conn.send(error_response(msg.id, INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}"))

    @staticmethod
    def reply(conn: Connection, req: Request, result: Any) -> None:
        conn.send(result_response(req.id, result))


class PortRunner(threading.Thread):
    """Serves one endpoint with one service until ``stop`` is set (or a one-shot endpoint ends)."""

    def __init__(
        self,
        port: str,
        endpoint: Endpoint,
        service: RpcService,
        stop: threading.Event,
        max_line_bytes: int = MAX_LINE_BYTES,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name=f"port-{port}", daemon=True)
        self.port = port
        self.endpoint = endpoint
        self.service = service
        self.stop = stop
        self.max_line_bytes = max_line_bytes
        self.on_exit = on_exit
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self._serve()
        finally:
            self.finished.set()
            if self.on_exit is not None:
                self.on_exit()

    def _serve(self) -> None:
        backoff_s = 0.0
        while not self.stop.is_set():
            try:
                stream = self.endpoint.connect(self.stop)
            except Exception:
                log.exception("%s: connecting to %s failed", self.port, self.endpoint.description)
                self.stop.wait(1.0)
                continue
            if stream is None:
                break
            started = time.monotonic()
            self._session(stream)
            if not self.endpoint.reconnects:
                break
            if time.monotonic() - started < 1.0:
                backoff_s = min(max(backoff_s * 2, 0.05), 1.0)
                self.stop.wait(backoff_s)
            else:
                backoff_s = 0.0
        self.endpoint.close()
        log.info("%s: stopped", self.port)

    def _session(self, stream: Stream) -> None:
        conn = Connection(stream, self.port)
        log.info("%s: host connected on %s (connection %d)", self.port, self.endpoint.description, conn.id)
        try:
            self.service.opened(conn)
            self._read_loop(conn, stream)
            if not self.endpoint.reconnects and not conn.closed.is_set():
                self.service.drain(conn, self.stop)
        except Exception:
            log.exception("%s: connection %d failed", self.port, conn.id)
        finally:
            conn.close()
            try:
                self.service.closed(conn)
            finally:
                stream.close()
        log.info("%s: connection %d ended", self.port, conn.id)

    def _read_loop(self, conn: Connection, stream: Stream) -> None:
        buffer = LineBuffer(self.max_line_bytes)
        while not self.stop.is_set() and not conn.closed.is_set():
            data = stream.read(READ_TICK_S)
            if data is None:
                continue
            if not data:
                log.info("%s: host disconnected", self.port)
                return
            buffer.feed(data)
            while True:
                try:
                    line = buffer.next_line()
                except FrameTooLarge as exc:
                    log.warning("%s: %s", self.port, exc)
                    conn.send(error_response(None, INVALID_REQUEST, str(exc)))
                    continue
                if line is None:
                    break
                self.service.handle_line(conn, line)
