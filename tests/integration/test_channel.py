"""The host side of the guest link (RpcPeer) against the real agent process over Unix sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nexus
from nexus.channel import ChannelClosed, RemoteError, RpcPeer

pytestmark = pytest.mark.anyio
SRC_DIR = str(Path(nexus.__file__).resolve().parent.parent)


@dataclass
class Link:
    proc: asyncio.subprocess.Process
    control: RpcPeer
    mcp: RpcPeer
    notes: asyncio.Queue[tuple[str, Any]]


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _accept(path: Path) -> tuple[asyncio.Server, asyncio.Future[Streams]]:
    """Listen as QEMU's chardev does; the future gets the first connection."""
    got: asyncio.Future[Streams] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not got.done():
            got.set_result((reader, writer))

    server = await asyncio.start_unix_server(on_connect, path=str(path), limit=1 << 20)
    return server, got


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[Link]:
    control_srv, control_conn = await _accept(tmp_path / "control.sock")
    mcp_srv, mcp_conn = await _accept(tmp_path / "mcp.sock")
    agent = ["-m", "nexus.agent", "--control", str(tmp_path / "control.sock"), "--mcp", str(tmp_path / "mcp.sock")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *agent,
        "--heartbeat-s",
        "0.2",
        "--image-json",
        str(tmp_path / "none.json"),
        env={**os.environ, "PYTHONPATH": SRC_DIR},
    )
    notes: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    try:
        control = RpcPeer(*await asyncio.wait_for(control_conn, 10), "control", lambda m, p: notes.put_nowait((m, p)))
        mcp = RpcPeer(*await asyncio.wait_for(mcp_conn, 10), "mcp")
        yield Link(proc, control, mcp, notes)
        await control.close()
        await mcp.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        control_srv.close()
        mcp_srv.close()


async def test_hello_then_heartbeats(link: Link) -> None:
    method, params = await asyncio.wait_for(link.notes.get(), 10)
    assert method == "nexus/hello"
    assert params["agent_version"] == nexus.__version__
    seqs: list[int] = []
    while len(seqs) < 3:
        method, params = await asyncio.wait_for(link.notes.get(), 5)
        if method == "nexus/heartbeat":
            seqs.append(params["seq"])
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert await link.control.call("nexus/echo", {"x": 1}) == {"x": 1}


async def test_concurrent_calls_and_progress(link: Link) -> None:
    await link.mcp.call(
        "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    )
    chunks: list[str] = []
    slow = asyncio.create_task(
        link.mcp.call(
            "tools/call",
            {"name": "run_command", "arguments": {"command": "echo one; sleep 1; echo two"}},
            on_progress=lambda p: chunks.append(p["message"]),
        )
    )
    fast = await link.mcp.call("tools/call", {"name": "file_read", "arguments": {"path": "/proc/version"}})
    assert not slow.done()  # the long command did not hold up the read
    assert "Linux" in fast["content"][0]["text"]
    result = await slow
    assert result["structuredContent"]["exit_code"] == 0
    assert "".join(chunks) == "one\ntwo\n"


async def test_protocol_error_is_remote_error(link: Link) -> None:
    with pytest.raises(RemoteError) as info:
        await link.mcp.call("no/such/method")
    assert info.value.code == -32601


async def test_calls_in_flight_fail_at_once_when_the_agent_dies(link: Link) -> None:
    call = asyncio.create_task(
        link.mcp.call("tools/call", {"name": "run_command", "arguments": {"command": "sleep 30"}}, timeout_s=60)
    )
    await asyncio.sleep(0.3)
    link.proc.send_signal(signal.SIGKILL)
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(call, 5)  # not the 30 s of the command, nor the 60 s timeout
    with pytest.raises(ChannelClosed):
        await link.mcp.call("ping")


async def test_the_socket_is_closed_as_soon_as_the_guest_ends_the_stream() -> None:
    """EOF from the guest closes the host's end at once (it once stayed open until garbage collection)."""
    host, guest = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=host)
    peer = RpcPeer(reader, writer, "eof")
    guest.close()
    await asyncio.wait_for(peer.wait_closed(), 2)
    await asyncio.sleep(0)
    assert writer.is_closing()
