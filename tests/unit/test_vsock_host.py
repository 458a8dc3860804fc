"""Host side of Firecracker's hybrid vsock (``nexus.channel.vsock``) against a fake vsock muxer.

Everything here is AF_UNIX: the fake muxer stands in for Firecracker's ``uds_path`` and forwards ``CONNECT P``
to a Unix socket standing in for the guest's listener on port P. No AF_VSOCK socket is ever made (guarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from nexus.channel.rpc import ChannelError
from nexus.channel.vsock import (
    GuestListener,
    VsockError,
    VsockHandshakeError,
    VsockNotListening,
    connect_hybrid,
    guest_listener_path,
)

pytestmark = pytest.mark.anyio

HOST_PORT_REPLY = b"OK 1073741824\n"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vs", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class FakeMuxer:
    """Firecracker's host-initiated half of hybrid vsock, for tests: reads ``CONNECT <port>\\n``; if the guest
    listens on that port (a Unix socket at ``backend(port)``) replies ``OK 1073741824\\n`` and proxies both ways,
    else closes the connection. ``refuse_first`` connections are closed as if nobody listened yet."""

    def __init__(self, uds_path: Path, backend: Callable[[int], str], refuse_first: int = 0) -> None:
        self.uds_path = uds_path
        self.backend = backend
        self.refuse_first = refuse_first
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeMuxer:
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.uds_path))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.uds_path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        self.requests.append(line)
        port = int(line.removeprefix(b"CONNECT ").strip())
        if len(self.requests) <= self.refuse_first:
            writer.close()
            return
        try:
            guest_reader, guest_writer = await asyncio.open_unix_connection(self.backend(port))
        except OSError:
            writer.close()  # Firecracker: the guest reset the connection, so the host stream is closed
            return
        writer.write(HOST_PORT_REPLY)
        for src, dst in ((reader, guest_writer), (guest_reader, writer)):
            task = asyncio.create_task(_pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _echo_guest(path: Path, greeting: bytes = b"") -> asyncio.Server:
    """A guest application listening on one port: sends ``greeting``, then echoes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await _pipe(reader, writer)

    return await asyncio.start_unix_server(serve, path=str(path))


@contextlib.asynccontextmanager
async def _scripted(path: Path, reply: bytes | None) -> AsyncIterator[asyncio.Queue[bytes]]:
    """A muxer that answers every CONNECT with ``reply`` in one write (None: never answers), then reports
    everything else the client sent until EOF - so a test can see the client closed its socket."""
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        if reply is not None:
            writer.write(reply)
        rest = await reader.read()
        seen.put_nowait(rest)
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    try:
        yield seen
    finally:
        server.close()


async def test_handshake_then_proxied_stream(short_dir: Path) -> None:
    uds = short_dir / "v.sock"
    guest = await _echo_guest(short_dir / "g_1025", b"ready\n")
    async with FakeMuxer(uds, lambda port: str(short_dir / f"g_{port}")) as muxer:
        reader, writer = await connect_hybrid(uds, 1025, timeout_s=5)
        try:
            assert await asyncio.wait_for(reader.readline(), 5) == b"ready\n"
            writer.write(b"ping\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
        finally:
            writer.close()
    guest.close()
    assert muxer.requests == [b"CONNECT 1025\n"]


async def test_bytes_in_the_same_write_as_ok_are_kept(short_dir: Path) -> None:
    uds = short_dir / "v.sock"
    async with _scripted(uds, HOST_PORT_REPLY + b'{"jsonrpc":"2.0"}\nmore') as seen:
        reader, writer = await connect_hybrid(uds, 1024, timeout_s=5)
        assert await asyncio.wait_for(reader.readline(), 5) == b'{"jsonrpc":"2.0"}\n'
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"more"
        writer.close()
        assert await asyncio.wait_for(seen.get(), 5) == b""


async def test_retries_until_the_guest_listens(short_dir: Path) -> None:
    uds = short_dir / "v.sock"
    guest = await _echo_guest(short_dir / "g_1025")
    async with FakeMuxer(uds, lambda port: str(short_dir / f"g_{port}"), refuse_first=3) as muxer:
        reader, writer = await connect_hybrid(uds, 1025, timeout_s=5, retry_interval_s=0.01)
        writer.write(b"x\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"x\n"
        writer.close()
    guest.close()
    assert len(muxer.requests) == 4


async def test_retries_until_firecracker_socket_appears(short_dir: Path) -> None:
    uds = short_dir / "v.sock"
    guest = await _echo_guest(short_dir / "g_1025")

    async def later() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await connect_hybrid(uds, 1025, timeout_s=5, retry_interval_s=0.01)

    attempt = asyncio.create_task(later())
    await asyncio.sleep(0.1)
    assert not attempt.done()  # still retrying: there is no socket yet
    async with FakeMuxer(uds, lambda port: str(short_dir / f"g_{port}")) as muxer:
        reader, writer = await asyncio.wait_for(attempt, 5)
        writer.write(b"late\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"late\n"
        writer.close()
    guest.close()
    assert muxer.requests == [b"CONNECT 1025\n"]  # one handshake, once the socket was there


async def test_never_listening_fails_after_the_deadline(short_dir: Path) -> None:
    uds = short_dir / "v.sock"
    async with FakeMuxer(uds, lambda port: str(short_dir / f"absent_{port}")) as muxer:
        started = time.monotonic()
        with pytest.raises(VsockNotListening) as info:
            await connect_hybrid(uds, 1025, timeout_s=0.3, retry_interval_s=0.02)
        assert 0.3 <= time.monotonic() - started < 2
    assert isinstance(info.value, ChannelError)
    assert "vsock port 1025 not listening after 0.3s" in str(info.value)
    assert "guest not listening" in str(info.value)
    assert len(muxer.requests) > 2


async def test_missing_socket_fails_after_the_deadline(short_dir: Path) -> None:
    with pytest.raises(VsockNotListening, match="cannot connect to"):
        await connect_hybrid(short_dir / "none.sock", 1025, timeout_s=0.1, retry_interval_s=0.02)


@pytest.mark.parametrize(
    "reply", [b"NOPE\n", b"OK\n", b"OK abc\n", b"OK 12 \n", b"ok 12\n", b"OK 1" + b"0" * 40 + b"\n"]
)
async def test_bad_reply_is_an_error_and_the_socket_is_closed(short_dir: Path, reply: bytes) -> None:
    uds = short_dir / "v.sock"
    async with _scripted(uds, reply) as seen:
        with pytest.raises(VsockHandshakeError, match="bad handshake reply") as info:
            await connect_hybrid(uds, 1025, timeout_s=5)
        assert await asyncio.wait_for(seen.get(), 5) == b""  # EOF: our end was closed
    assert isinstance(info.value, ChannelError)


async def test_a_silent_muxer_times_out_and_the_socket_is_closed(short_dir: Path) -> None:
    uds = short_dir / "v.sock"
    async with _scripted(uds, None) as seen:
        with pytest.raises(VsockNotListening, match=r"not listening after 0\.2s"):
            await connect_hybrid(uds, 1025, timeout_s=0.2)
        assert await asyncio.wait_for(seen.get(), 5) == b""


async def test_guest_listener_queue(short_dir: Path) -> None:
    uds = short_dir / "v.sock"
    listener = GuestListener(uds, 1024)
    assert listener.path == guest_listener_path(uds, 1024) == short_dir / "v.sock_1024"
    with pytest.raises(VsockError, match="not listening"):
        await listener.accept(0.1)
    async with listener:
        assert listener.listening and listener.path.is_socket()
        reader_a, writer_a = await asyncio.open_unix_connection(str(listener.path))
        host_reader, host_writer = await listener.accept(5)
        writer_a.write(b"hello\n")
        assert await asyncio.wait_for(host_reader.readline(), 5) == b"hello\n"
        host_writer.close()
        assert await asyncio.wait_for(reader_a.read(), 5) == b""
        writer_a.close()
        with pytest.raises(VsockNotListening, match=r"did not connect to vsock port 1024 within 0\.05s"):
            await listener.accept(0.05)
        _reader_b, writer_b = await asyncio.open_unix_connection(str(listener.path))  # never accepted
        await asyncio.sleep(0.05)
    assert not listener.listening
    assert not listener.path.exists()
    writer_b.close()
    await listener.close()  # idempotent


async def test_guest_listener_callback_and_stale_socket(short_dir: Path) -> None:
    uds = short_dir / "v.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(guest_listener_path(uds, 1024)))  # left behind by a crashed nexusd
    stale.close()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.put_nowait(await reader.readline())
        writer.close()

    async with GuestListener(uds, 1024, on_connect) as listener:
        _reader, writer = await asyncio.open_unix_connection(str(listener.path))
        writer.write(b"from the guest\n")
        assert await asyncio.wait_for(got.get(), 5) == b"from the guest\n"
        writer.close()
        with pytest.raises(VsockError, match="callback"):
            await listener.accept(0.1)
        with pytest.raises(VsockError, match="already listening"):
            await listener.start()
    assert not listener.path.exists()


async def test_guest_listener_leaves_a_replaced_file_alone(short_dir: Path) -> None:
    listener = GuestListener(short_dir / "v.sock", 1024)
    await listener.start()
    os.unlink(listener.path)
    listener.path.write_text("someone else's")
    await listener.close()
    assert listener.path.read_text() == "someone else's"


async def test_guest_listener_refuses_a_non_socket(short_dir: Path) -> None:
    path = guest_listener_path(short_dir / "v.sock", 1024)
    path.write_text("not a socket")
    with pytest.raises(VsockError, match="cannot listen at"):
        await GuestListener(short_dir / "v.sock", 1024).start()
    assert path.read_text() == "not a socket"
