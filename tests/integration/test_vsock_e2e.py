"""The real agent process on Unix-emulated vsock behind a fake Firecracker vsock muxer, driven by the host code.

Host: a ``GuestListener`` at ``<uds>_1024`` (started before the "boot") takes the agent's control connection,
``connect_hybrid(uds, 1025)`` reaches the agent's MCP listener through the muxer's ``CONNECT``/``OK`` handshake,
and ``RpcPeer`` speaks on both. The agent runs as ``python -m nexus.agent --vsock-unix <uds>``, i.e. the same
vsock endpoint code as in a guest with AF_UNIX in place of AF_VSOCK. No AF_VSOCK socket is ever made.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nexus
from nexus.channel.rpc import RpcPeer
from nexus.channel.vsock import GuestListener, connect_hybrid
from nexus.protocol import CONTROL_VSOCK_PORT, MCP_VSOCK_PORT
from tests.unit.test_vsock_host import FakeMuxer

pytestmark = pytest.mark.anyio
SRC_DIR = str(Path(nexus.__file__).resolve().parent.parent)
WAIT_S = 10.0

Notes = asyncio.Queue[tuple[str, Any]]


@dataclass
class Vm:
    uds: Path
    proc: asyncio.subprocess.Process
    control: GuestListener
    muxer: FakeMuxer


async def _next(notes: Notes, method: str) -> Any:
    while True:
        got, params = await asyncio.wait_for(notes.get(), WAIT_S)
        if got == method:
            return params


@pytest.fixture
async def vm() -> AsyncIterator[Vm]:
    root = Path(tempfile.mkdtemp(prefix="vs", dir="/tmp"))  # short: Unix socket paths are limited to 107 bytes
    uds = root / "v.sock"
    try:
        async with (
            GuestListener(uds, CONTROL_VSOCK_PORT) as control,
            FakeMuxer(uds, lambda port: f"{uds}.guest_{port}") as muxer,
        ):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nexus.agent", "--vsock-unix", str(uds),
                "--heartbeat-s", "0.2", "--image-json", str(root / "none.json"), "--cmdline", "/dev/null",
                env={**os.environ, "PYTHONPATH": SRC_DIR},
            )  # fmt: skip
            try:
                yield Vm(uds, proc, control, muxer)
            finally:
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), WAIT_S)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        assert proc.returncode == 0  # stopped cleanly by SIGTERM
        assert not (root / f"v.sock.guest_{MCP_VSOCK_PORT}").exists()  # the agent removed its listener
        assert not control.path.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_hello_and_tools_over_hybrid_vsock(vm: Vm) -> None:
    notes: Notes = asyncio.Queue()
    control = RpcPeer(*await vm.control.accept(WAIT_S), "control", lambda m, p: notes.put_nowait((m, p)))
    hello = await _next(notes, "nexus/hello")
    assert hello["agent_version"] == nexus.__version__
    assert (await _next(notes, "nexus/heartbeat"))["seq"] >= 1

    mcp = RpcPeer(*await connect_hybrid(vm.uds, MCP_VSOCK_PORT, timeout_s=WAIT_S), "mcp")
    init = await mcp.call(
        "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    )
    assert init["serverInfo"]["name"] == "nexus-agent"
    tools = {tool["name"] for tool in (await mcp.call("tools/list"))["tools"]}
    assert "run_command" in tools
    chunks: list[str] = []
    result = await mcp.call(
        "tools/call",
        {"name": "run_command", "arguments": {"command": "echo one; echo two"}},
        on_progress=lambda p: chunks.append(p["message"]),
    )
    assert result["structuredContent"]["exit_code"] == 0
    assert "".join(chunks) == "one\ntwo\n"
    assert set(vm.muxer.requests) == {f"CONNECT {MCP_VSOCK_PORT}\n".encode()}
    await mcp.close()
    await control.close()


async def test_connect_hybrid_waits_for_the_agent_and_control_redials(vm: Vm) -> None:
    mcp_task = asyncio.create_task(connect_hybrid(vm.uds, MCP_VSOCK_PORT, timeout_s=WAIT_S, retry_interval_s=0.01))
    notes: Notes = asyncio.Queue()
    control = RpcPeer(*await vm.control.accept(WAIT_S), "control", lambda m, p: notes.put_nowait((m, p)))
    await _next(notes, "nexus/hello")
    mcp = RpcPeer(*await asyncio.wait_for(mcp_task, WAIT_S), "mcp")
    assert await mcp.call("nexus/echo", {"x": 1}) == {"x": 1}

    await control.close()  # the host drops the control stream; the agent dials again and says hello again
    notes2: Notes = asyncio.Queue()
    control2 = RpcPeer(*await vm.control.accept(WAIT_S), "control2", lambda m, p: notes2.put_nowait((m, p)))
    assert (await _next(notes2, "nexus/hello"))["agent_version"] == nexus.__version__
    assert await control2.call("nexus/ping") is not None
    await mcp.close()
    await control2.close()
