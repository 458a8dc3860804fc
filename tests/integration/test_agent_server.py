"""The real agent process against a fake host: two listening Unix sockets standing in for QEMU's
chardev sockets. Everything goes over the wire as newline-delimited JSON-RPC."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nexus
from nexus.protocol import FILE_CHUNK_BYTES, MAX_LINE_BYTES, LineBuffer, encode_message

SRC_DIR = str(Path(nexus.__file__).resolve().parent.parent)
WAIT_S = 10.0

Message = dict[str, Any]


class Peer:
    """The host end of one accepted connection: collects every message the agent sends, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[Message] = []
        self.eof = False
        self._cond = threading.Condition()
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = LineBuffer()
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self.eof = True
                    self._cond.notify_all()
                return
            buf.feed(data)
            while (line := buf.next_line()) is not None:
                with self._cond:
                    self.messages.append(json.loads(line))
                    self._cond.notify_all()

    def send(self, message: Message) -> None:
        self.sock.sendall(encode_message(message))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, params: Any = None, **extra: Any) -> int:
        self._next_id += 1
        msg: Message = {"jsonrpc": "2.0", "id": self._next_id, "method": method, **extra}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return self._next_id

    def notify(self, method: str, params: Any = None) -> None:
        msg: Message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    def wait_for(self, pred: Callable[[Message], bool], timeout_s: float = WAIT_S) -> Message:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for msg in self.messages:
                    if pred(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise AssertionError(
                        f"no matching message; got {[m.get('method', m.get('id')) for m in self.messages]}"
                    )
                self._cond.wait(left)

    def response(self, request_id: Any, timeout_s: float = WAIT_S) -> Message:
        return self.wait_for(lambda m: "method" not in m and m.get("id") == request_id, timeout_s)

    def call(self, method: str, params: Any = None) -> Any:
        resp = self.response(self.request(method, params))
        assert "error" not in resp, resp
        return resp["result"]

    def tool(self, name: str, **arguments: Any) -> Message:
        result = self.call("tools/call", {"name": name, "arguments": arguments})
        assert set(result) == {"content", "structuredContent", "isError"}
        assert result["content"][0]["type"] == "text" and isinstance(result["content"][0]["text"], str)
        return result  # type: ignore[no-any-return]

    def index_of(self, pred: Callable[[Message], bool]) -> int:
        with self._cond:
            return next(i for i, m in enumerate(self.messages) if pred(m))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Host:
    """Listening sockets plus the agent process connected to them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.listeners: dict[str, socket.socket] = {}
        for port in ("control", "mcp"):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(workdir / f"{port}.sock"))
            listener.listen(4)
            listener.settimeout(WAIT_S)
            self.listeners[port] = listener
        (workdir / "image.json").write_text(json.dumps({"id": "img-123", "name": "test"}))
        (workdir / "cmdline").write_text("console=ttyS0 nexus.heartbeat_s=5 quiet\n")
        self.stderr = open(workdir / "agent.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "nexus.agent",
                "--control", str(workdir / "control.sock"),
                "--mcp", str(workdir / "mcp.sock"),
                "--heartbeat-s", "0.2",
                "--image-json", str(workdir / "image.json"),
                "--cmdline", str(workdir / "cmdline"),
            ],
            env={**os.environ, "PYTHONPATH": SRC_DIR},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )  # fmt: skip
        self.peers: list[Peer] = []
        self.control = self.accept("control")
        self.mcp = self.accept("mcp")

    def accept(self, port: str) -> Peer:
        conn, _ = self.listeners[port].accept()
        conn.settimeout(None)
        peer = Peer(conn)
        self.peers.append(peer)
        return peer

    def log(self) -> str:
        return (self.workdir / "agent.log").read_text(errors="replace")

    def stop(self) -> None:
        for peer in self.peers:
            peer.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(WAIT_S)
        for listener in self.listeners.values():
            listener.close()
        self.stderr.close()


@pytest.fixture
def host() -> Iterator[Host]:
    workdir = Path(tempfile.mkdtemp(prefix="nxa-", dir="/tmp"))  # AF_UNIX paths must stay short
    h = Host(workdir)
    try:
        yield h
    finally:
        h.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def mcp(host: Host) -> Peer:
    result = host.mcp.call(
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "pytest", "version": "0"}},
    )
    assert result["protocolVersion"] == "2025-11-25"
    host.mcp.notify("notifications/initialized")
    return host.mcp


def is_method(method: str) -> Callable[[Message], bool]:
    return lambda m: m.get("method") == method


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before open, or between open and read
        return False


def wait_until(pred: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- control port --------------------------------------------------------------------------------------


def test_hello_then_heartbeats(host: Host) -> None:
    hello = host.control.wait_for(lambda m: True)
    assert hello["method"] == "nexus/hello" and "id" not in hello
    params = hello["params"]
    assert set(params) == {"agent_version", "image_id", "boot_time", "hostname", "pid"}
    assert params["agent_version"] == nexus.__version__
    assert params["image_id"] == "img-123"
    assert params["pid"] == host.proc.pid
    assert params["hostname"] == socket.gethostname()
    assert abs(params["boot_time"] - (time.time() - time.clock_gettime(time.CLOCK_BOOTTIME))) < 5
    # --heartbeat-s 0.2 overrides nexus.heartbeat_s=5 from the kernel command line
    host.control.wait_for(lambda m: m.get("method") == "nexus/heartbeat" and m["params"]["seq"] >= 3, 3.0)
    beats = [m["params"] for m in host.control.messages if m.get("method") == "nexus/heartbeat"]
    assert [b["seq"] for b in beats] == list(range(1, len(beats) + 1))
    assert all(a["uptime_s"] < b["uptime_s"] for a, b in itertools.pairwise(beats))


def test_control_requests_and_errors(host: Host) -> None:
    c = host.control
    assert c.call("nexus/echo", {"a": [1, "ü", None]}) == {"a": [1, "ü", None]}
    assert c.call("nexus/ping")["uptime_s"] > 0
    assert c.call("nexus/hello")["pid"] == host.proc.pid
    unknown = c.response(c.request("nexus/nope"))
    assert unknown["error"]["code"] == -32601
    # Not launched by nexusd (no nexus.mounts on its command line): it must never freeze this host's filesystems.
    assert c.response(c.request("nexus/freeze", {"timeout_s": 1}))["error"]["code"] == -32601
    c.send_raw(b"{not json\n")
    assert c.wait_for(lambda m: "error" in m and m["id"] is None)["error"]["code"] == -32700


def test_control_reconnect_resends_hello(host: Host) -> None:
    first = host.control
    first.wait_for(lambda m: m.get("method") == "nexus/heartbeat")
    last_seq = max(m["params"]["seq"] for m in first.messages if m.get("method") == "nexus/heartbeat")
    first.close()
    second = host.accept("control")
    assert second.wait_for(lambda m: True)["method"] == "nexus/hello"
    beat = second.wait_for(is_method("nexus/heartbeat"))
    assert beat["params"]["seq"] > last_seq


# --- MCP port ------------------------------------------------------------------------------------------


def test_initialize_negotiates_the_version(host: Host) -> None:
    m = host.mcp
    old = m.call("initialize", {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "x"}})
    assert old["protocolVersion"] == "2025-03-26"
    assert old["capabilities"] == {"tools": {"listChanged": False}}
    assert old["serverInfo"] == {"name": "nexus-agent", "version": nexus.__version__}
    future = m.call("initialize", {"protocolVersion": "2099-01-01", "capabilities": {}})
    assert future["protocolVersion"] == "2025-11-25"


def test_every_tool_over_the_wire(mcp: Peer, tmp_path: Path) -> None:
    assert mcp.call("ping") == {}
    tools = mcp.call("tools/list")["tools"]
    assert {t["name"] for t in tools} == {
        "file_read", "file_write", "file_delete", "list_dir", "archive_create", "archive_extract", "run_command",
        "system_info", "process_start", "process_list", "process_output", "process_signal", "process_wait",
        "shell_open", "shell_write", "shell_read", "shell_close",
    }  # fmt: skip
    for t in tools:
        assert isinstance(t["description"], str) and t["inputSchema"]["type"] == "object"

    path = tmp_path / "dir" / "f.txt"
    w = mcp.tool("file_write", path=str(path), content="hi there\n")["structuredContent"]
    assert (w["bytes_written"], w["size"]) == (9, 9)
    r = mcp.tool("file_read", path=str(path), offset=3)
    assert r["content"][0]["text"] == "there\n" and r["structuredContent"]["eof"] is True
    entries = mcp.tool("list_dir", path=str(path.parent))["structuredContent"]["entries"]
    assert [(e["name"], e["type"], e["size"]) for e in entries] == [("f.txt", "file", 9)]
    run = mcp.tool("run_command", command=["cat", str(path)])
    assert run["isError"] is False
    assert run["structuredContent"]["stdout"] == "hi there\n"
    assert run["content"][0]["text"].endswith("--- stdout ---\nhi there")  # a rendering, not the JSON again
    info = mcp.tool("system_info")["structuredContent"]
    assert info["image_id"] == "img-123" and info["agent_version"] == nexus.__version__
    assert mcp.tool("file_delete", path=str(path))["structuredContent"]["deleted"] is True
    missing = mcp.tool("file_read", path=str(path))
    assert missing["isError"] is True and "No such file" in missing["content"][0]["text"]
    unknown = mcp.response(mcp.request("tools/call", {"name": "no_such_tool", "arguments": {}}))
    assert unknown["error"]["code"] == -32602 and "unknown tool 'no_such_tool'" in unknown["error"]["message"]


def test_protocol_errors(mcp: Peer) -> None:
    def error_of(request_id: Any) -> int:
        return int(mcp.response(request_id)["error"]["code"])

    mcp.send_raw(b'{"jsonrpc": "2.0", "id": 77, "method": \n')
    assert mcp.wait_for(lambda m: "error" in m and m["id"] is None)["error"]["code"] == -32700
    assert error_of(mcp.request("no/such/method")) == -32601
    assert error_of(mcp.request("server/discover", {})) == -32601  # the SDK's probe falls back
    mcp.send({"id": 90, "method": "ping"})  # no "jsonrpc"
    assert error_of(90) == -32600
    assert error_of(mcp.request("tools/call", ["file_read"])) == -32602
    assert error_of(mcp.request("tools/call", {"arguments": {}})) == -32602
    assert error_of(mcp.request("tools/call", {"name": "file_read", "arguments": "x"})) == -32602
    mcp.send_raw(b"[]\n")
    mcp.wait_for(lambda m: m.get("error", {}).get("code") == -32600 and m["id"] is None)


def test_notifications_get_no_reply(mcp: Peer) -> None:
    before = len(mcp.messages)
    mcp.notify("notifications/initialized")
    mcp.notify("notifications/whatever", {"x": 1})
    mcp.notify("tools/list")  # a known method sent as a notification is still a notification
    mcp.send({"jsonrpc": "2.0", "id": 5555, "result": {}})  # a response from the host: ignored
    ping = mcp.request("ping")
    mcp.response(ping)
    assert [m.get("id") for m in mcp.messages[before:]] == [ping]


def test_long_command_does_not_block_file_read(mcp: Peer, tmp_path: Path) -> None:
    (tmp_path / "quick").write_text("quick")
    slow = mcp.request("tools/call", {"name": "run_command", "arguments": {"command": "sleep 2; echo slow"}})
    quick = mcp.request("tools/call", {"name": "file_read", "arguments": {"path": str(tmp_path / "quick")}})
    assert mcp.response(quick)["result"]["structuredContent"]["content"] == "quick"
    assert mcp.response(slow)["result"]["structuredContent"]["stdout"] == "slow\n"
    assert mcp.index_of(lambda m: m.get("id") == quick) < mcp.index_of(lambda m: m.get("id") == slow)


def test_progress_notifications_stream_output(mcp: Peer) -> None:
    call_id = mcp.request(
        "tools/call",
        {
            "name": "run_command",
            "arguments": {"command": "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three"},
            "_meta": {"progressToken": "tok-1"},
        },
    )
    result = mcp.response(call_id)["result"]["structuredContent"]
    assert (result["stdout"], result["stderr"]) == ("one\nthree\n", "two\n")
    notes = [m["params"] for m in mcp.messages if m.get("method") == "notifications/progress"]
    assert [(n["message"], n["_meta"]["nexus/stream"]) for n in notes] == [
        ("one\n", "stdout"), ("two\n", "stderr"), ("three\n", "stdout"),
    ]  # fmt: skip
    assert all(n["progressToken"] == "tok-1" for n in notes)
    assert [n["progress"] for n in notes] == [4, 8, 14]
    last_note = max(i for i, m in enumerate(mcp.messages) if m.get("method") == "notifications/progress")
    assert last_note < mcp.index_of(lambda m: m.get("id") == call_id)


def test_cancelled_call_is_killed_and_never_answered(mcp: Peer, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    call_id = mcp.request(
        "tools/call", {"name": "run_command", "arguments": {"command": f"echo $$ > {pidfile}; exec sleep 30"}}
    )
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    pid = int(pidfile.read_text())
    assert pid_alive(pid)
    mcp.notify("notifications/cancelled", {"requestId": call_id, "reason": "test"})
    wait_until(lambda: not pid_alive(pid))
    mcp.response(mcp.request("ping"))
    time.sleep(0.2)
    assert not any(m.get("id") == call_id for m in mcp.messages)


def test_large_base64_round_trip(mcp: Peer, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024)
    path = tmp_path / "big.bin"
    w = mcp.tool("file_write", path=str(path), content=base64.b64encode(data).decode(), encoding="base64")
    assert w["structuredContent"]["size"] == len(data)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    got, offset, eof = b"", 0, False
    while not eof:  # in pages of the most one call returns
        r = mcp.tool("file_read", path=str(path), encoding="base64", offset=offset, length=FILE_CHUNK_BYTES)
        got += base64.b64decode(r["structuredContent"]["content"])
        offset, eof = len(got), r["structuredContent"]["eof"]
    assert got == data
    # the same in 1 MiB chunks with append
    chunked = tmp_path / "chunked.bin"
    for i in range(0, len(data), 1 << 20):
        chunk = base64.b64encode(data[i : i + (1 << 20)]).decode()
        mcp.tool("file_write", path=str(chunked), content=chunk, encoding="base64", append=i > 0)
    assert chunked.read_bytes() == data


def test_mcp_reconnect_cancels_in_flight_calls(host: Host, mcp: Peer, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    mcp.request("tools/call", {"name": "run_command", "arguments": {"command": f"echo $$ > {pidfile}; exec sleep 30"}})
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    pid = int(pidfile.read_text())
    mcp.close()
    wait_until(lambda: not pid_alive(pid))
    again = host.accept("mcp")
    assert again.call("ping") == {}
    assert again.call("nexus/echo", [1, 2]) == [1, 2]


def test_sigterm_stops_the_agent(host: Host) -> None:
    host.control.wait_for(is_method("nexus/hello"))
    host.proc.send_signal(signal.SIGTERM)
    assert host.proc.wait(WAIT_S) == 0
    assert "stopped" in host.log()


def test_oversized_line_is_rejected_and_the_stream_resyncs(mcp: Peer) -> None:
    mcp.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"nexus/echo","params":"' + b"x" * MAX_LINE_BYTES + b'"}\n')
    error = mcp.wait_for(lambda m: "error" in m)
    assert (error["id"], error["error"]["code"]) == (None, -32600)
    assert mcp.call("nexus/echo", {"after": True}) == {"after": True}
