"""The gateway's Unix socket (``/run/nexus/gateway.sock``): one MCP session per connection, stdio framing.

What ``nexus-mcp`` connects to. The socket is mode 0666 so an agent running as any user of the VM can use it
(the VM is the trust boundary: nexusd knows the caller by the port, not by the user). Each connection has a
reader thread (lines → the hub) and a writer thread draining a queue, so a client that stops reading only
stalls itself, never the gateway stream.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import stat
import threading
from typing import Any, Final

from nexus.agent.gateway import GatewayHub
from nexus.protocol import INVALID_REQUEST, MAX_LINE_BYTES, FrameTooLarge, LineBuffer, encode_message, error_response

__all__ = ["UnixFront"]

log = logging.getLogger("nexus.agent")

_ACCEPT_TICK_S: Final = 0.25
_READ_BYTES: Final = 1024 * 1024


class _Client:
    """One accepted connection: a session of the hub."""

    def __init__(self, sock: socket.socket, hub: GatewayHub) -> None:
        self._sock = sock
        self._hub = hub
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.session = hub.open_session(self)

    def deliver(self, message: dict[str, Any]) -> None:
        try:
            self._out.put(encode_message(message))
        except (TypeError, ValueError) as exc:
            log.warning("gateway: cannot encode a message for session %s: %s", self.session, exc)

    def end(self) -> None:
        self._out.put(None)

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def serve(self) -> None:
        writer = threading.Thread(target=self._write, name=f"gateway-{self.session}-out", daemon=True)
        writer.start()
        try:
            self._read()
        finally:
            self._hub.client_closed(self.session)
            self.end()
            writer.join()
            self._sock.close()

    def _read(self) -> None:
        buffer = LineBuffer(MAX_LINE_BYTES)
        while True:
            try:
                data = self._sock.recv(_READ_BYTES)
            except OSError:
                data = b""
            if not data:
                return
            buffer.feed(data)
            while True:
                try:
                    line = buffer.next_line()
                except FrameTooLarge as exc:
                    self.deliver(error_response(None, INVALID_REQUEST, str(exc)))
                    continue
                if line is None:
                    break
                self._hub.from_client_line(self.session, line)

    def _write(self) -> None:
        while (data := self._out.get()) is not None:
            try:
                self._sock.sendall(data)
            except OSError:
                break  # the client is gone; the reader sees it too
        self.shutdown()  # what was queued is written: the client sees the end (and so does our reader)


class UnixFront:
    """Listens at ``path``; serves until ``close``."""

    def __init__(self, path: str, hub: GatewayHub) -> None:
        self.path = path
        self.address = path
        self._hub = hub
        self._listener: socket.socket | None = None
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def start(self) -> None:
        """Bind and start accepting; raises OSError when the socket cannot be made."""
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):  # left by a previous agent
                os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(self.path)
            os.chmod(self.path, 0o666)
            listener.listen(16)
            listener.settimeout(_ACCEPT_TICK_S)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="gateway-unix", daemon=True).start()
        log.info("gateway: MCP sessions on %s", self.path)

    def _accept(self, listener: socket.socket) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._closing.is_set():
                    log.warning("gateway: accept on %s failed: %s", self.path, exc)
                    self._closing.wait(_ACCEPT_TICK_S)
                continue
            sock.settimeout(None)
            client = _Client(sock, self._hub)
            with self._lock:
                self._clients.add(client)
            threading.Thread(target=self._serve, args=(client,), name=f"gateway-{client.session}", daemon=True).start()

    def _serve(self, client: _Client) -> None:
        try:
            client.serve()
        finally:
            with self._lock:
                self._clients.discard(client)

    def close(self) -> None:
        self._closing.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.shutdown()
