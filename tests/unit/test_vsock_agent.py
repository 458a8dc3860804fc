"""The agent's vsock transport, run over AF_UNIX through an injected ``SocketSpace`` (``unix_space``).

The same endpoint code a guest runs on AF_VSOCK: the control stream dials host port 1024 and redials when the
host drops it; the MCP port listens on 1025 and serves several connections. No AF_VSOCK socket is ever made
(guarded): the real ``VSOCK_SPACE`` is only inspected, never connected.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.agent.config import AgentConfig, load_config
from nexus.agent.main import MCP_LISTEN_SESSIONS, gateway_endpoint, run, vsock_space_for
from nexus.agent.transport import (
    VSOCK_SPACE,
    SocketDialEndpoint,
    SocketListenEndpoint,
    choose_transport,
    unix_space,
    vsock_endpoint,
)
from nexus.protocol import (
    CONTROL_PORT_NAME,
    CONTROL_VSOCK_PORT,
    GATEWAY_PORT_NAME,
    GATEWAY_VSOCK_PORT,
    HOST_CID,
    MCP_PORT_NAME,
    MCP_VSOCK_PORT,
    LineBuffer,
    encode_message,
)

WAIT_S = 5.0
Message = dict[str, Any]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A short path prefix: Unix socket paths are limited to 107 bytes."""
    root = tempfile.mkdtemp(prefix="vs", dir="/tmp")
    try:
        yield os.path.join(root, "v")
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Host:
    """One host end of a connection, reading newline-delimited JSON."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(WAIT_S)
        self.sock = sock
        self._buf = LineBuffer()
        self._ids = 0

    def message(self) -> Message:
        while (line := self._buf.next_line()) is None:
            data = self.sock.recv(65536)
            assert data, "the agent closed the connection"
            self._buf.feed(data)
        return dict(json.loads(line))

    def next(self, method: str) -> Message:
        while True:
            msg = self.message()
            if msg.get("method") == method:
                return msg

    def call(self, method: str, params: Any = None) -> Any:
        self._ids += 1
        self.sock.sendall(encode_message({"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params}))
        while True:
            msg = self.message()
            if msg.get("id") == self._ids:
                assert "error" not in msg, msg
                return msg["result"]

    def close(self) -> None:
        self.sock.close()


def _dial(path: str) -> Host:
    deadline = time.monotonic() + WAIT_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return Host(sock)
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_real_vsock_endpoints_address_the_host_and_any() -> None:
    control = vsock_endpoint(CONTROL_PORT_NAME)
    mcp = vsock_endpoint(MCP_PORT_NAME)
    assert isinstance(control, SocketDialEndpoint) and control.address == (HOST_CID, CONTROL_VSOCK_PORT)
    assert isinstance(mcp, SocketListenEndpoint) and mcp.address == (socket.VMADDR_CID_ANY, MCP_VSOCK_PORT)
    gateway = vsock_endpoint(GATEWAY_PORT_NAME)
    assert isinstance(gateway, SocketDialEndpoint) and gateway.address == (HOST_CID, GATEWAY_VSOCK_PORT)
    assert VSOCK_SPACE.family == socket.AF_VSOCK and not VSOCK_SPACE.unix_paths
    with pytest.raises(ValueError):
        vsock_endpoint("org.other")


def test_unix_space_uses_firecracker_names(prefix: str) -> None:
    space = unix_space(prefix)
    assert space.host_address(1024) == f"{prefix}_1024"  # where Firecracker connects for guest → host:1024
    assert space.listen_address(1025) == f"{prefix}.guest_1025"
    mcp = vsock_endpoint(MCP_PORT_NAME, space)
    assert isinstance(mcp, SocketListenEndpoint) and mcp.address == f"{prefix}.guest_1025"


def test_choose_transport(tmp_path: Path) -> None:
    sys_root, dev_vsock, image_json = tmp_path / "ports", tmp_path / "vsock", tmp_path / "image.json"
    sys_root.mkdir()

    def choose(requested: str = "auto") -> str:
        return choose_transport(requested, sys_root=str(sys_root), dev_vsock=str(dev_vsock), image_json=str(image_json))

    assert choose() == "virtio-serial"  # nothing there yet: wait for the virtio-serial port
    dev_vsock.touch()
    assert choose() == "virtio-serial"  # /dev/vsock, but not inside a Nexus image (a host): never dial it
    image_json.write_text("{}")
    assert choose() == "vsock"
    (sys_root / "vport1p1").mkdir()
    (sys_root / "vport1p1" / "name").write_text("org.nexus.control\n")
    assert choose() == "virtio-serial"  # the vsock module alone makes /dev/vsock; our port decides
    assert choose("vsock") == "vsock"
    dev_vsock.unlink()
    assert choose("virtio-serial") == "virtio-serial"


def test_transport_options(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("quiet nexus.transport=vsock\n")
    assert load_config(["--cmdline", str(tmp_path / "none")]).transport == "auto"
    assert load_config(["--cmdline", str(cmdline)]).transport == "vsock"
    flag = load_config(["--cmdline", str(cmdline), "--transport", "virtio-serial"])
    assert (flag.transport, flag.vsock_unix) == ("virtio-serial", None)
    emulated = load_config(["--cmdline", str(cmdline), "--vsock-unix", "/run/v"])
    assert (emulated.transport, emulated.vsock_unix) == ("vsock", "/run/v")
    space = vsock_space_for(emulated)
    assert space is not None and space.family == socket.AF_UNIX
    assert vsock_space_for(flag) is None
    cmdline.write_text("nexus.transport=carrier-pigeon\n")
    bad = load_config(["--cmdline", str(cmdline)])
    assert bad.transport == "auto" and "nexus.transport" in bad.warnings[0]
    with pytest.raises(SystemExit):
        load_config(["--vsock-unix", "/run/v", "--transport", "virtio-serial"])
    with pytest.raises(SystemExit):
        load_config(["--transport", "pigeon"])


def test_listen_endpoint_accepts_and_cleans_up(prefix: str) -> None:
    path = f"{prefix}.guest_1025"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # left by a previous agent
    stale.close()
    endpoint = SocketListenEndpoint(path, "test", unix_space(prefix).make_socket, unlink=path)
    stop = threading.Event()
    got: list[Any] = []
    accepting = threading.Thread(target=lambda: got.append(endpoint.connect(stop)))
    accepting.start()
    host = _dial(path)
    accepting.join(WAIT_S)
    stream = got[0]
    assert stream is not None
    host.sock.sendall(b"ping\n")
    assert stream.read(WAIT_S) == b"ping\n"
    stream.write(b"pong\n")
    assert host.sock.recv(100) == b"pong\n"
    host.close()
    assert stream.read(WAIT_S) == b""
    stream.close()
    threading.Timer(0.2, stop.set).start()
    assert endpoint.connect(stop) is None
    endpoint.close()
    endpoint.close()
    assert not os.path.exists(path)


def test_dial_endpoint_gives_up_when_stopped(prefix: str) -> None:
    endpoint = vsock_endpoint(CONTROL_PORT_NAME, unix_space(prefix))
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert endpoint.connect(stop) is None


@pytest.fixture
def agent(prefix: str) -> Iterator[threading.Event]:
    """The whole agent in-process on Unix-emulated vsock; the host listens at ``<prefix>_1024`` first."""
    config = AgentConfig(
        control=None,
        mcp=None,
        heartbeat_s=0.2,
        image_json=f"{prefix}.none",
        vsock_unix=prefix,
        gateway_socket=f"{prefix}.gw",
        gateway_http=None,
    )
    stop = threading.Event()
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(run(config, stop)), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(WAIT_S)
    assert done == [0]
    assert not os.path.exists(f"{prefix}.guest_{MCP_VSOCK_PORT}")  # the listener removed its socket


def _listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    listener.settimeout(WAIT_S)
    return listener


def test_agent_dials_control_and_redials_after_the_host_drops(prefix: str, agent: threading.Event) -> None:
    listener = _listen(f"{prefix}_{CONTROL_VSOCK_PORT}")
    try:
        first = Host(listener.accept()[0])
        hello = first.next("nexus/hello")
        assert hello["params"]["image_id"] is None
        assert first.next("nexus/heartbeat")["params"]["seq"] >= 1
        assert first.call("nexus/echo", {"x": 1}) == {"x": 1}
        first.close()  # the host side drops (nexusd restarted, say)
        second = Host(listener.accept()[0])
        assert second.next("nexus/hello")["params"]["agent_version"] == hello["params"]["agent_version"]
        assert second.next("nexus/heartbeat")
        second.close()
    finally:
        listener.close()


def test_agent_serves_mcp_on_its_listener(prefix: str, agent: threading.Event) -> None:
    mcp = _dial(f"{prefix}.guest_{MCP_VSOCK_PORT}")
    init = mcp.call(
        "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    )
    assert init["serverInfo"]["name"] == "nexus-agent"
    names = {tool["name"] for tool in mcp.call("tools/list")["tools"]}
    assert {"run_command", "file_read", "file_write"} <= names
    others = [_dial(f"{prefix}.guest_{MCP_VSOCK_PORT}") for _ in range(MCP_LISTEN_SESSIONS - 1)]
    for other in others:  # served side by side, not left waiting in the backlog
        assert other.call("nexus/echo", [1]) == [1]
        other.close()
    result = mcp.call("tools/call", {"name": "run_command", "arguments": {"command": ["echo", "over vsock"]}})
    assert result["structuredContent"]["stdout"] == "over vsock\n"
    mcp.close()
    again = _dial(f"{prefix}.guest_{MCP_VSOCK_PORT}")  # and a new connection after one ended
    assert again.call("nexus/echo", {"y": 2}) == {"y": 2}
    again.close()


def test_agent_dials_the_gateway_and_opens_its_socket_once_linked(prefix: str, agent: threading.Event) -> None:
    time.sleep(0.3)
    assert not os.path.exists(f"{prefix}.gw")  # no host on the gateway port yet: no socket claims a gateway
    listener = _listen(f"{prefix}_{GATEWAY_VSOCK_PORT}")
    try:
        nexusd = Host(listener.accept()[0])
        client = _dial(f"{prefix}.gw")
        client.sock.sendall(encode_message({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        up = nexusd.next("gateway/message")["params"]
        assert up["message"] == {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        reply = {"jsonrpc": "2.0", "id": 1, "result": {}}
        nexusd.sock.sendall(
            encode_message({"jsonrpc": "2.0", "method": "gateway/message", "params": {**up, "message": reply}})
        )
        assert client.message() == reply
        client.close()
        assert nexusd.next("gateway/close")["params"] == {"session": up["session"]}
        nexusd.close()
    finally:
        listener.close()


def test_gateway_endpoint_follows_the_options(prefix: str) -> None:
    explicit = AgentConfig(control="/c", mcp="/m")
    assert gateway_endpoint(explicit, None) is None  # a test or debugging run: no gateway unless asked for
    assert gateway_endpoint(AgentConfig(control="/c", mcp="/m", gateway="none"), None) is None
    asked = gateway_endpoint(AgentConfig(control="/c", mcp="/m", gateway=f"{prefix}_gw"), None)
    assert asked is not None and asked.description == f"{prefix}_gw"
    dialled = gateway_endpoint(AgentConfig(control=None, mcp=None), unix_space(prefix))
    assert isinstance(dialled, SocketDialEndpoint) and dialled.address == f"{prefix}_{GATEWAY_VSOCK_PORT}"
