"""``nexusctl mcp-bridge REF`` as a subprocess: the official SDK's stdio client through it to a real nexusd whose
VM is the fake Firecracker's (a real agent, no kernel), and raw lines for what the SDK never sends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from nexus.mcp.errors import INVALID_STATE
from nexus.protocol import INTERNAL_ERROR, INVALID_PARAMS, PARSE_ERROR
from tests.helpers import Daemon
from tests.integration.test_mcp_vm import (
    daemon,  # noqa: F401  (the module's nexusd with its VMs)
    pytestmark,  # noqa: F401
)


def _argv(socket: Path, ref: str) -> list[str]:
    return [sys.executable, "-m", "nexus.cli.main", "--socket", str(socket), "mcp-bridge", ref]


def _server(socket: Path, ref: str) -> StdioServerParameters:
    argv = _argv(socket, ref)
    return StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_sdk_stdio_client_through_the_bridge(daemon: Daemon, tmp_path: Path, mode: str) -> None:  # noqa: F811
    async def scenario() -> None:
        progress: list[str | None] = []

        async def on_progress(_value: float, _total: float | None, message: str | None) -> None:
            progress.append(message)

        async with Client(_server(daemon.socket, "mcp-one"), mode=mode, read_timeout_seconds=30) as client:
            assert client.server_info is not None and client.server_info.name == "nexus-vm"
            assert "run_command" in {t.name for t in (await client.list_tools()).tools}
            run = await client.call_tool(
                "run_command", {"command": "echo a; echo b >&2"}, progress_callback=on_progress
            )
            assert run.structured_content is not None
            assert (run.structured_content["stdout"], run.structured_content["stderr"]) == ("a\n", "b\n")
            assert sorted(m or "" for m in progress) == ["a\n", "b\n"]
            path = str(tmp_path / "bridge.txt")
            await client.call_tool("file_write", {"path": path, "content": "over stdio"})
            read = await client.call_tool("file_read", {"path": path})
            assert read.content[0].text == "over stdio"  # type: ignore[union-attr]
            with pytest.raises(MCPError) as unknown:
                await client.call_tool("no_such_tool", {})
            assert unknown.value.code == INVALID_PARAMS
            bad = await client.call_tool("file_read", {"path": 42})
            assert bad.is_error is True

        async with Client(_server(daemon.socket, "mcp-cold"), mode=mode, read_timeout_seconds=30) as client:
            with pytest.raises(MCPError) as caught:
                await client.call_tool("run_command", {"command": "true"})
            assert caught.value.code == INVALID_STATE
            # the bridge is still serving after an error
            with pytest.raises(MCPError):
                await client.list_tools()

    anyio.run(scenario)


class _Raw:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def send(self, message: Any) -> None:
        assert self.proc.stdin is not None
        line = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def receive(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the bridge closed its stdout"
        return json.loads(line)

    def close(self) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return code, self.proc.stderr.read().decode()


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


def test_raw_lines_notifications_get_no_reply_and_errors_do_not_kill(daemon: Daemon) -> None:  # noqa: F811
    raw = _Raw(_argv(daemon.socket, "mcp-one"))
    try:
        raw.send(b"this is not json")
        assert raw.receive()["error"]["code"] == PARSE_ERROR
        raw.send(INIT)
        assert raw.receive()["result"]["serverInfo"]["name"] == "nexus-vm"
        raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        raw.send({"jsonrpc": "2.0", "method": "notifications/no-such-thing"})
        raw.send({"jsonrpc": "2.0", "id": "two", "method": "tools/list"})
        listed = raw.receive()  # the next line answers the request: the notifications got no reply
        assert listed["id"] == "two" and any(t["name"] == "run_command" for t in listed["result"]["tools"])
        raw.send({"jsonrpc": "2.0", "id": 3, "method": "no/such/method"})
        assert raw.receive()["error"]["code"] == -32601
        raw.send({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "system_info"}})
        assert raw.receive()["id"] == 4
    finally:
        code, stderr = raw.close()
    assert code == 0, stderr


def test_unreachable_nexusd_is_an_error_per_request(tmp_path: Path) -> None:
    raw = _Raw(_argv(tmp_path / "nobody.sock", "vm"))
    try:
        raw.send(INIT)
        first = raw.receive()
        assert first["id"] == 1 and first["error"]["code"] == INTERNAL_ERROR
        assert "unreachable" in first["error"]["message"]
        raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})  # no reply, and no crash
        raw.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert raw.receive()["id"] == 2
    finally:
        code, stderr = raw.close()
    assert code == 0 and "cannot reach nexusd" in stderr
