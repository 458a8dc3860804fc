"""The agent's gateway: the real agent process, a Unix socket standing in for nexusd's end of the gateway port,
and real local clients (raw connections to the gateway socket, and ``nexus-mcp`` as a subprocess)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.agent.gateway import LINK_DOWN, LINK_DOWN_MESSAGE
from nexus.protocol import encode_message
from tests.helpers import wait_until
from tests.integration.test_agent_server import SRC_DIR, WAIT_S, Message, Peer

INIT_PARAMS = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "pytest", "version": "0"}}


def gw_message(session: str, message: Message) -> Message:
    return {"jsonrpc": "2.0", "method": "gateway/message", "params": {"session": session, "message": message}}


def gw_close(session: str) -> Message:
    return {"jsonrpc": "2.0", "method": "gateway/close", "params": {"session": session}}


def result(request_id: Any, value: Any) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


class Nexusd:
    """nexusd's end of the gateway stream: a listening Unix socket the agent dials (and redials)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener: socket.socket | None = None
        self.links: list[Peer] = []
        self.listen()

    def listen(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(4)
        listener.settimeout(WAIT_S)
        self.listener = listener

    def accept(self) -> Peer:
        assert self.listener is not None
        conn, _ = self.listener.accept()
        conn.settimeout(None)
        self.links.append(Peer(conn))
        return self.links[-1]

    def go_away(self) -> None:
        """nexusd stops: the link and the listener close, so the agent's redials fail until ``listen``."""
        assert self.listener is not None
        self.listener.close()
        self.listener = None
        self.path.unlink()
        for link in self.links:
            link.close()

    def message_for(self, link: Peer, pred: Any, start: int = 0) -> Message:
        """The next gateway/message (from index ``start``) whose MCP message satisfies ``pred``."""
        return link.wait_for(
            lambda m: (
                any(m is later for later in link.messages[start:])
                and m.get("method") == "gateway/message"
                and pred(m["params"]["message"])
            )
        )


class Agent:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.local = workdir / "run" / "gateway.sock"
        self.nexusd = Nexusd(workdir / "gw.sock")
        (workdir / "cmdline").write_text("quiet\n")
        self.stderr = open(workdir / "agent.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "nexus.agent",
                "--control", "none", "--mcp", "none",
                "--gateway", str(self.nexusd.path),
                "--gateway-socket", str(self.local),
                "--gateway-http", "none",
                "--image-json", str(workdir / "none.json"),
                "--cmdline", str(workdir / "cmdline"),
                "--log-level", "debug",
            ],
            env={**os.environ, "PYTHONPATH": SRC_DIR},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )  # fmt: skip
        self.clients: list[Peer] = []
        self.link = self.nexusd.accept()
        wait_until(lambda: self.local.exists(), WAIT_S, "the gateway socket")

    def client(self) -> Peer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.local))
        self.clients.append(Peer(sock))
        return self.clients[-1]

    def log(self) -> str:
        return (self.workdir / "agent.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.stderr.closed:
            return
        for peer in [*self.clients, *self.nexusd.links]:
            peer.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(WAIT_S) == 0
        finally:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(WAIT_S)
            if self.nexusd.listener is not None:
                self.nexusd.listener.close()
            self.stderr.close()


@pytest.fixture
def agent() -> Iterator[Agent]:
    workdir = Path(tempfile.mkdtemp(prefix="nxg-", dir="/tmp"))  # AF_UNIX paths must stay short
    a = Agent(workdir)
    try:
        yield a
        a.stop()
        assert not a.local.exists()  # the agent removed its socket when it stopped
    finally:
        a.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def initialize(agent: Agent, client: Peer, link: Peer | None = None) -> str:
    """Run the MCP handshake of ``client`` through the gateway; returns its session id."""
    link = link or agent.link
    start = len(link.messages)
    request_id = client.request("initialize", INIT_PARAMS)
    seen = agent.nexusd.message_for(link, lambda m: m.get("method") == "initialize", start)
    session = str(seen["params"]["session"])
    link.send(gw_message(session, result(request_id, {"protocolVersion": "2025-11-25", "capabilities": {}})))
    assert client.response(request_id)["result"]["protocolVersion"] == "2025-11-25"
    client.notify("notifications/initialized")
    agent.nexusd.message_for(link, lambda m: m.get("method") == "notifications/initialized", start)
    return session


def test_the_socket_is_open_to_every_user(agent: Agent) -> None:
    assert agent.local.stat().st_mode & 0o777 == 0o666


def test_sessions_are_tunnelled_both_ways_and_kept_apart(agent: Agent) -> None:
    a, b = agent.client(), agent.client()
    first = a.request("initialize", INIT_PARAMS)
    a_msg = agent.nexusd.message_for(agent.link, lambda m: m.get("method") == "initialize")
    assert a_msg["params"]["message"] == {"jsonrpc": "2.0", "id": first, "method": "initialize", "params": INIT_PARAMS}
    assert set(a_msg) == {"jsonrpc", "method", "params"}  # a notification: the stream carries no requests
    b.request("initialize", INIT_PARAMS)  # the same request id, another session
    start = agent.link.messages.index(a_msg) + 1
    b_msg = agent.nexusd.message_for(agent.link, lambda m: m.get("method") == "initialize", start)
    sa, sb = a_msg["params"]["session"], b_msg["params"]["session"]
    assert isinstance(sa, str) and isinstance(sb, str) and sa != sb
    agent.link.send(gw_message(sb, result(first, {"who": "b"})))
    agent.link.send(gw_message(sa, result(first, {"who": "a"})))
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}
    agent.link.send(gw_message(sa, progress))
    assert b.response(first)["result"] == {"who": "b"}
    assert a.response(first)["result"] == {"who": "a"}
    assert a.wait_for(lambda m: m.get("method") == "notifications/progress") == progress
    assert len(b.messages) == 1


def test_client_eof_closes_the_session_upstream(agent: Agent) -> None:
    client = agent.client()
    session = initialize(agent, client)
    client.close()
    assert agent.link.wait_for(lambda m: m.get("method") == "gateway/close") == gw_close(session)
    silent = agent.client()
    silent.close()  # a client that never said anything: nexusd never heard of its session
    again = agent.client()
    initialize(agent, again)
    closes = [m for m in agent.link.messages if m.get("method") == "gateway/close"]
    assert closes == [gw_close(session)]


def test_host_close_ends_the_local_client(agent: Agent) -> None:
    client = agent.client()
    session = initialize(agent, client)
    agent.link.send(gw_close(session))
    wait_until(lambda: client.eof, WAIT_S, "the client to be closed")
    # a message for a session the agent no longer has: the agent tells nexusd to forget it
    agent.link.send(gw_message(session, result(9, {})))
    agent.link.wait_for(lambda m: m.get("method") == "gateway/close" and m["params"]["session"] == session)


def test_invalid_lines_are_answered_locally(agent: Agent) -> None:
    client = agent.client()
    client.send_raw(b"{not json\n")
    assert client.wait_for(lambda m: True)["error"]["code"] == -32700
    client.send({"jsonrpc": "1.0", "id": 4, "method": "ping"})
    assert client.response(4)["error"]["code"] == -32600
    assert not any(m.get("method") == "gateway/message" for m in agent.link.messages)


def test_link_down_answers_requests_at_once_and_replays_the_handshake(agent: Agent) -> None:
    client = agent.client()
    session = initialize(agent, client)
    in_flight = client.request("tools/call", {"name": "run_command", "arguments": {"command": ["sleep", "9"]}})
    agent.nexusd.message_for(agent.link, lambda m: m.get("id") == in_flight)
    agent.nexusd.go_away()  # nexusd restarts: the request it had will never be answered
    lost = client.response(in_flight)
    assert lost["error"] == {"code": LINK_DOWN, "message": LINK_DOWN_MESSAGE}

    client.notify("notifications/cancelled", {"requestId": in_flight})  # dropped: nobody to tell
    while_down = client.request("tools/list")
    assert client.response(while_down, timeout_s=2.0)["error"]["code"] == LINK_DOWN
    assert "gateway/message" not in {m.get("method") for m in client.messages}

    agent.nexusd.listen()  # nexusd is back, without the sessions it had
    link = agent.nexusd.accept()
    replay = agent.nexusd.message_for(link, lambda m: m.get("method") == "initialize")
    assert replay["params"]["session"] == session
    replayed = replay["params"]["message"]
    assert replayed["params"] == INIT_PARAMS and str(replayed["id"]).startswith("nexus-replay-")
    assert link.messages[1] == gw_message(session, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    link.send(gw_message(session, result(replayed["id"], {"protocolVersion": "2025-11-25", "capabilities": {}})))
    after = client.request("tools/list")
    forwarded = agent.nexusd.message_for(link, lambda m: m.get("id") == after)
    assert link.messages.index(forwarded) == 2  # nothing new went before the replay
    link.send(gw_message(session, result(after, {"tools": []})))
    assert client.response(after)["result"] == {"tools": []}
    assert not any(m.get("id") == replayed["id"] for m in client.messages)  # the replay's answer was swallowed


def test_a_session_never_initialized_is_not_replayed(agent: Agent) -> None:
    client = agent.client()
    request_id = client.request("initialize", INIT_PARAMS)
    agent.nexusd.message_for(agent.link, lambda m: m.get("method") == "initialize")
    agent.nexusd.go_away()  # before nexusd answered
    assert client.response(request_id)["error"]["code"] == LINK_DOWN
    agent.nexusd.listen()
    link = agent.nexusd.accept()
    again = client.request("initialize", INIT_PARAMS)  # the client retries: its initialize comes first
    seen = agent.nexusd.message_for(link, lambda m: m.get("method") == "initialize")
    assert seen["params"]["message"]["id"] == again and link.messages.index(seen) == 0


def run_nexus_mcp(agent: Agent, socket_path: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "nexus.agent.gateway_client", "--socket", str(socket_path or agent.local)],
        env={**os.environ, "PYTHONPATH": SRC_DIR},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT_S)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_nexus_mcp_pumps_stdio_and_exits_0_when_stdin_ends(agent: Agent) -> None:
    with reaped(run_nexus_mcp(agent)) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(encode_message({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT_PARAMS}))
        proc.stdin.flush()
        seen = agent.nexusd.message_for(agent.link, lambda m: m.get("method") == "initialize")
        session = seen["params"]["session"]
        agent.link.send(gw_message(session, result(1, {"protocolVersion": "2025-11-25"})))
        assert json.loads(proc.stdout.readline()) == result(1, {"protocolVersion": "2025-11-25"})
        proc.stdin.close()
        assert proc.wait(WAIT_S) == 0
        agent.link.wait_for(lambda m: m == gw_close(session))


def test_nexus_mcp_exits_1_when_the_gateway_ends_the_session(agent: Agent) -> None:
    with reaped(run_nexus_mcp(agent)) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(encode_message({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT_PARAMS}))
        proc.stdin.flush()
        seen = agent.nexusd.message_for(agent.link, lambda m: m.get("method") == "initialize")
        agent.link.send(gw_close(seen["params"]["session"]))
        assert proc.wait(WAIT_S) == 1
        assert proc.stderr.read().decode().count("\n") == 1


def test_nexus_mcp_without_a_gateway_says_so_in_one_line(agent: Agent) -> None:
    missing = agent.workdir / "absent.sock"
    with reaped(run_nexus_mcp(agent, missing)) as proc:
        assert proc.wait(WAIT_S) == 1
        assert proc.stderr is not None
        assert proc.stderr.read().decode() == (
            f"nexus-mcp: the Nexus gateway is not running in this VM (no {missing})\n"
        )
