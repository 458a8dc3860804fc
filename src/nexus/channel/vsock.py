"""Host side of Firecracker's hybrid vsock: byte streams to and from guest vsock ports over Unix sockets.

Firecracker exposes the guest's vsock device as one Unix socket on the host (``uds_path``):

* host-initiated - ``connect_hybrid`` connects to ``uds_path``, sends ``CONNECT <port>\\n`` and reads the reply
  ``OK <host_port>\\n`` one byte at a time, so nothing after the newline is consumed: those bytes are the start
  of the application stream and stay in the returned reader. If nothing in the guest listens on the port yet,
  Firecracker closes the connection; that (and a socket that is not there yet) is retried until the deadline.
* guest-initiated - when the guest connects to the host (CID 2) port P, Firecracker connects to the Unix socket
  ``<uds_path>_<P>``; ``GuestListener`` listens there (it must exist before the guest dials) and hands each
  connection to a callback or to ``accept()``.

This module opens streams; it does not speak on them (that is ``nexus.channel.rpc``) and it does not start
Firecracker. Every socket it opens is closed on every error path; the listener owns its socket file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from nexus.channel.rpc import ChannelError
from nexus.domain.retry import retry

__all__ = [
    "ConnectHandler",
    "GuestListener",
    "VsockError",
    "VsockHandshakeError",
    "VsockNotListening",
    "connect_hybrid",
    "guest_listener_path",
]

log = logging.getLogger(__name__)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
ConnectHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
"""What ``GuestListener`` calls with each accepted connection (a coroutine function is run as a task)."""

STREAM_LIMIT_BYTES: Final = 1024 * 1024
MAX_REPLY_BYTES: Final = 32
"""``OK 4294967295\\n`` is 14 bytes; a longer reply is not Firecracker's."""
_OK_REPLY: Final = re.compile(rb"OK ([0-9]{1,10})\n")


class VsockError(ChannelError):
    """A hybrid vsock stream could not be opened."""


class VsockNotListening(VsockError):
    """Nothing accepted the connection before the deadline (no Firecracker socket, or no guest listener)."""


class VsockHandshakeError(VsockError):
    """Firecracker's reply to ``CONNECT`` was not ``OK <port>``."""


class _NotYet(Exception):
    """One attempt found nobody listening; worth another try."""


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    """The handshake reply up to and including its newline - never a byte more (b"" on EOF before one)."""
    reply = bytearray()
    while not reply.endswith(b"\n"):
        if len(reply) >= MAX_REPLY_BYTES:
            break
        try:
            reply += await reader.readexactly(1)
        except asyncio.IncompleteReadError:
            return b""
    return bytes(reply)


async def _handshake(uds_path: Path, port: int) -> Streams:
    try:
        reader, writer = await asyncio.open_unix_connection(str(uds_path), limit=STREAM_LIMIT_BYTES)
    except OSError as exc:  # no socket yet (ENOENT) or nobody accepting (ECONNREFUSED)
        raise _NotYet(f"cannot connect to {uds_path}: {exc.strerror or exc}") from exc
    try:
        writer.write(b"CONNECT %d\n" % port)
        await writer.drain()
        reply = await _read_reply(reader)
    except OSError as exc:  # ConnectionResetError and friends
        await _close(writer)
        raise _NotYet(f"connection dropped during the handshake: {exc}") from exc
    except BaseException:
        writer.close()  # cancelled (the deadline): close at once, do not await anything more
        raise
    if not reply:
        await _close(writer)
        raise _NotYet("closed before replying (guest not listening)")
    match = _OK_REPLY.fullmatch(reply)
    if match is None:
        await _close(writer)
        raise VsockHandshakeError(f"{uds_path}: bad handshake reply {reply!r} to CONNECT {port}")
    log.debug("%s: vsock port %d connected (host port %s)", uds_path, port, match.group(1).decode())
    return reader, writer


async def connect_hybrid(
    uds_path: Path, port: int, timeout_s: float, retry_interval_s: float = 0.05
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams to guest vsock ``port`` through Firecracker's ``uds_path``, positioned just after the ``OK`` line.

    Retries every ``retry_interval_s`` while the socket is missing or the guest is not listening yet; raises
    ``VsockNotListening`` after ``timeout_s`` (also when a handshake hangs) and ``VsockHandshakeError`` at once
    on a reply that is not ``OK <digits>``."""
    last: list[str] = []

    async def attempt() -> Streams:
        try:
            return await _handshake(uds_path, port)
        except _NotYet as exc:
            last[:] = [str(exc)]
            raise

    try:
        async with asyncio.timeout(timeout_s):
            return await retry(attempt, retry_on=_NotYet, timeout_s=timeout_s, interval_s=retry_interval_s)
    except (_NotYet, TimeoutError) as exc:
        cause = last[0] if last else "no reply"
        raise VsockNotListening(f"vsock port {port} not listening after {timeout_s:g}s ({uds_path}: {cause})") from exc


def guest_listener_path(uds_path: Path, port: int) -> Path:
    """Where Firecracker connects when the guest dials host port ``port``: ``<uds_path>_<port>``."""
    return Path(f"{uds_path}_{port}")


class GuestListener:
    """Listens at ``<uds_path>_<port>`` for connections the guest makes to host port ``port``.

    Start it before the VM boots. Each connection goes to ``on_connect`` if given (which then owns it), else to
    a queue read by ``accept()``. ``close()`` stops listening, closes connections nobody took and removes the
    socket file (only if it is still the one this listener made). Use as ``async with``, or start/close."""

    def __init__(self, uds_path: Path, port: int, on_connect: ConnectHandler | None = None) -> None:
        self.port = port
        self.path = guest_listener_path(uds_path, port)
        self._on_connect = on_connect
        self._queue: asyncio.Queue[Streams] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._inode: int | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            raise VsockError(f"{self.path}: already listening")
        try:  # asyncio replaces a stale socket file itself, but refuses to replace anything else
            self._server = await asyncio.start_unix_server(
                self._accepted, path=str(self.path), limit=STREAM_LIMIT_BYTES
            )
        except OSError as exc:
            raise VsockError(f"cannot listen at {self.path}: {exc.strerror or exc}") from exc
        self._inode = os.stat(self.path).st_ino
        log.debug("listening for guest vsock port %d at %s", self.port, self.path)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._on_connect is None:
            self._queue.put_nowait((reader, writer))
            return
        result = self._on_connect(reader, writer)
        if result is not None:
            await result

    async def accept(self, timeout_s: float | None = None) -> Streams:
        """The next connection (only without ``on_connect``); ``VsockNotListening`` after ``timeout_s``."""
        if self._on_connect is not None:
            raise VsockError(f"{self.path}: connections go to the on_connect callback")
        if self._server is None and self._queue.empty():
            raise VsockError(f"{self.path}: not listening")
        try:
            return await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError as exc:
            raise VsockNotListening(
                f"the guest did not connect to vsock port {self.port} within {timeout_s:g}s"
            ) from exc

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()  # closes the listening socket now; not wait_closed(): from 3.12 on it also waits for
        # the connections already handed out, which their owners close
        while not self._queue.empty():
            await _close(self._queue.get_nowait()[1])
        self._remove_socket_file()

    def _remove_socket_file(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def __aenter__(self) -> GuestListener:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
