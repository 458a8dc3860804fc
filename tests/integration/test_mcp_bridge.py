"""``nexusctl mcp-bridge REF`` as a subprocess: the official SDK's stdio client through it to a real nexusd whose
VM is the fake Firecracker's (a real agent, no kernel), and raw lines for what the SDK never sends. Sessions lost
on nexusd (idle past a short ``mcp_session_idle_timeout_s``, or nexusd restarted with its VM running on) are
reopened by the bridge; keepalive pings keep an idle one; a nexusd that is briefly unreachable is waited for."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent

from nexus.mcp.errors import INVALID_STATE
from nexus.protocol import INTERNAL_ERROR, INVALID_PARAMS, PARSE_ERROR
from tests.api_client import NexusClient
from tests.fakes.firecracker import write_fake_binary
from tests.fakes.firecracker_host import firecracker_daemon
from tests.helpers import Daemon, wait_until
from tests.integration.test_mcp_vm import (
    daemon,  # noqa: F401  (the module's nexusd with its VMs)
    pytestmark,  # noqa: F401
)

REOPENED = "re-initializing"  # the bridge's stderr line when it replaces a lost session
OPENED = "Created new transport with session ID"  # the SDK's log line in nexusd's log for each new session
IDLE_TIMEOUT_S = 3.0


def _argv(socket: Path, ref: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "nexus.cli.main", "--socket", str(socket), "mcp-bridge", *options, ref]


def _server(socket: Path, ref: str, *options: str) -> StdioServerParameters:
    argv = _argv(socket, ref, *options)
    return StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))


def _client(socket: Path, ref: str, errlog: TextIO, *options: str) -> Client:
    """The SDK's stdio client through the bridge, the bridge's stderr to ``errlog``; the 2025 handshake (a session:
    2026-era messages have none to lose)."""
    return Client(stdio_client(_server(socket, ref, *options), errlog=errlog), mode="legacy", read_timeout_seconds=30)


def _daemon_with_idle_timeout(base: Path, idle_timeout_s: float) -> Daemon:
    """The fake Firecracker's nexusd, closing MCP sessions idle for ``idle_timeout_s``: a config file of its own,
    the fake's settings and the timeout, named after the fake's (the last --config wins)."""
    config = base / "bridge.toml"
    lines = [
        "boot_timeout_s = 30",
        "heartbeat_timeout_s = 3",
        "stop_timeout_s = 10",
        f'firecracker_binary = "{write_fake_binary(base)}"',
        f"mcp_session_idle_timeout_s = {idle_timeout_s}",
    ]
    config.write_text("\n".join(lines) + "\n")
    return firecracker_daemon(base, None, None, "--config", str(config))


@pytest.fixture(scope="module")
def short() -> Iterator[Daemon]:
    """A nexusd whose MCP sessions idle out after IDLE_TIMEOUT_S, with a ready VM ``br-one``."""
    base = Path(tempfile.mkdtemp(prefix="nxbridge-"))
    d = _daemon_with_idle_timeout(base, IDLE_TIMEOUT_S)
    try:
        with NexusClient(d.socket, timeout_s=60) as api:
            api.create_vm(name="br-one", mem_mib=256)
            api.start_vm("br-one")
        yield d
    finally:
        code = d.stop()
        log = d.log_text()
        shutil.rmtree(base, ignore_errors=True)
        assert code == 0, log[-3000:]


async def _echo(client: Client, text: str) -> None:
    run = await client.call_tool("run_command", {"command": f"echo {text}"})
    assert run.structured_content is not None and run.structured_content["stdout"] == f"{text}\n", run


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_sdk_stdio_client_through_the_bridge(daemon: Daemon, tmp_path: Path, mode: str) -> None:  # noqa: F811
    async def scenario() -> None:
        messages: list[str | None] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # ProgressFnT
            messages.append(message)

        async with Client(_server(daemon.socket, "mcp-one"), mode=mode, read_timeout_seconds=30) as client:
            assert client.server_info is not None and client.server_info.name == "nexus-vm"
            assert "run_command" in {t.name for t in (await client.list_tools()).tools}
            run = await client.call_tool(
                "run_command", {"command": "echo a; echo b >&2"}, progress_callback=on_progress
            )
            assert run.structured_content is not None
            assert (run.structured_content["stdout"], run.structured_content["stderr"]) == ("a\n", "b\n")
            assert sorted(m or "" for m in messages) == ["a\n", "b\n"]
            path = str(tmp_path / "bridge.txt")
            await client.call_tool("file_write", {"path": path, "content": "over stdio"})
            read = await client.call_tool("file_read", {"path": path})
            assert isinstance(read.content[0], TextContent) and read.content[0].text == "over stdio"
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


def _call(request_id: Any, command: str) -> dict[str, Any]:
    params = {"name": "run_command", "arguments": {"command": command}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def _handshake(raw: _Raw) -> None:
    raw.send(INIT)
    assert raw.receive()["id"] == 1
    raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


def test_a_session_idle_past_the_timeout_is_reopened(short: Daemon, tmp_path: Path) -> None:
    async def scenario() -> None:
        with (tmp_path / "bridge.err").open("w") as errlog:
            async with _client(short.socket, "br-one", errlog, "--keepalive", "0") as client:
                await _echo(client, "before")
                await anyio.sleep(IDLE_TIMEOUT_S + 1.5)  # nexusd closes the session meanwhile
                await _echo(client, "after")
                await _echo(client, "again")  # in the new session, which is not reopened again

    opened = short.log_text().count(OPENED)
    anyio.run(scenario)
    stderr = (tmp_path / "bridge.err").read_text()
    assert stderr.count(REOPENED) == 1 and short.log_text().count(OPENED) == opened + 2, stderr


def test_keepalive_pings_keep_an_idle_session(short: Daemon) -> None:
    opened = short.log_text().count(OPENED)
    raw = _Raw(_argv(short.socket, "br-one", "--keepalive", "1"))
    try:
        _handshake(raw)
        time.sleep(2 * IDLE_TIMEOUT_S)
        raw.send(_call(2, "echo kept"))
        answer = raw.receive()  # the pings' answers were not written: the next line answers the call
        assert answer["id"] == 2 and answer["result"]["structuredContent"]["stdout"] == "kept\n", answer
    finally:
        code, stderr = raw.close()
    assert code == 0 and REOPENED not in stderr and "ping failed" not in stderr, stderr
    assert short.log_text().count(OPENED) == opened + 1  # one session all along


def test_calls_finding_the_session_gone_together_share_one_reinitialization(short: Daemon) -> None:
    opened = short.log_text().count(OPENED)
    raw = _Raw(_argv(short.socket, "br-one", "--keepalive", "0"))
    ids = list(range(10, 16))
    try:
        _handshake(raw)
        time.sleep(IDLE_TIMEOUT_S + 1.5)
        for request_id in ids:  # all written before any answer: in flight together when they meet the 404
            raw.send(_call(request_id, f"sleep 0.2; echo {request_id}"))
        answers = {a["id"]: a for a in (raw.receive() for _ in ids)}
        assert sorted(answers) == ids  # the replayed initialize's answer was not written
        for request_id, answer in answers.items():
            assert answer["result"]["structuredContent"]["stdout"] == f"{request_id}\n", answer
        raw.send({"jsonrpc": "2.0", "id": "last", "method": "tools/list"})
        assert raw.receive()["id"] == "last"
    finally:
        code, stderr = raw.close()
    assert code == 0 and stderr.count(REOPENED) == 1, stderr
    assert short.log_text().count(OPENED) == opened + 2  # the handshake's session, and the one that replaced it


def test_the_same_bridge_goes_on_across_a_nexusd_restart(tmp_path: Path) -> None:
    """nexusd stopped (SIGTERM) with its VM left running, started again on the same state dir and socket: the
    bridge's session is unknown to the new nexusd, and the next call reopens one."""
    base = Path(tempfile.mkdtemp(prefix="nxbridge-restart-"))
    nexusd = firecracker_daemon(base, stop_vms_on_exit=False)
    pid = 0

    async def scenario() -> None:
        nonlocal nexusd
        with (tmp_path / "bridge.err").open("w") as errlog:
            async with _client(nexusd.socket, "br-restart", errlog) as client:
                await _echo(client, "before")
                assert nexusd.stop() == 0
                nexusd = firecracker_daemon(base, stop_vms_on_exit=False)
                with NexusClient(nexusd.socket, timeout_s=30) as api:
                    wait_until(lambda: api.get_vm("br-restart")["state"] == "ready", 30, "the VM ready again")
                    assert api.get_vm("br-restart")["pid"] == pid  # the same VMM, adopted
                await _echo(client, "after")

    try:
        with NexusClient(nexusd.socket, timeout_s=60) as api:
            api.create_vm(name="br-restart", mem_mib=256)
            pid = api.start_vm("br-restart")["pid"]
        anyio.run(scenario)
        assert (tmp_path / "bridge.err").read_text().count(REOPENED) == 1
    finally:
        with NexusClient(nexusd.socket, timeout_s=60) as api:
            api.stop_vm("br-restart")
        code = nexusd.stop()
        log = nexusd.log_text()
        shutil.rmtree(base, ignore_errors=True)
        assert code == 0, log[-3000:]


class _UnixHttp(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    initializations = 0


class _Scripted(http.server.BaseHTTPRequestHandler):
    """A stand-in nexusd. The first initialize opens session "s1"; any later one is refused (HTTP 500 with nexusd's
    error body); notifications get 202; a request in a session finds it gone (404, the SDK's "Session not found"),
    and one without a session gets an empty result."""

    server: _UnixHttp

    def do_POST(self) -> None:
        message = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if message.get("method") == "initialize":
            self.server.initializations += 1
            if self.server.initializations == 1:
                result = {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "serverInfo": {"name": "s", "version": "0"},
                }
                self._answer(200, {"jsonrpc": "2.0", "id": message["id"], "result": result}, {"mcp-session-id": "s1"})
            else:
                self._answer(500, {"error": {"code": "internal", "message": "the VM endpoint\nbroke"}})
        elif "id" not in message:
            self._answer(202, None)
        elif self.headers.get("mcp-session-id"):
            self._answer(404, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}})
        else:
            self._answer(200, {"jsonrpc": "2.0", "id": message["id"], "result": {}})

    def _answer(self, status: int, message: Any, headers: dict[str, str] | None = None) -> None:
        body = b"" if message is None else json.dumps(message).encode()
        self.send_response(status)
        for name, value in {"content-type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"  # a Unix socket's peer has no address

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _scripted(socket: Path) -> Iterator[_UnixHttp]:
    server = _UnixHttp(str(socket), _Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_nexusd_briefly_unreachable_is_waited_for(tmp_path: Path) -> None:
    socket = tmp_path / "later.sock"
    raw = _Raw(_argv(socket, "vm", "--keepalive", "0"))
    try:
        raw.send({"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
        assert raw.proc.stderr is not None
        assert b"trying again" in raw.proc.stderr.readline()  # it found no socket
        with _scripted(socket):
            assert raw.receive() == {"jsonrpc": "2.0", "id": 7, "result": {}}
    finally:
        code, stderr = raw.close()
    assert code == 0, stderr


def test_a_session_that_cannot_be_reopened_is_an_error_for_the_call(tmp_path: Path) -> None:
    socket = tmp_path / "scripted.sock"
    with _scripted(socket) as server:
        raw = _Raw(_argv(socket, "vm", "--keepalive", "0"))
        try:
            _handshake(raw)
            for request_id in (2, 3):  # each call finds the session gone, and tries to reopen it
                raw.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/list"})
                error = raw.receive()["error"]
                assert error["code"] == INTERNAL_ERROR
                assert error["message"] == (
                    "the MCP session ended on nexusd and a new one could not be opened: "
                    "nexusd answered HTTP 500: internal: the VM endpoint broke"
                )
        finally:
            code, stderr = raw.close()
        assert server.initializations == 3
    assert code == 0 and stderr.count(REOPENED) == 2, stderr
