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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent

from nexus.agent.gateway import LINK_DOWN, LINK_DOWN_MESSAGE
from nexus.protocol import LineBuffer, encode_message
from tests.helpers import free_port, wait_until
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
        self.links.append(Peer(self.accept_raw()))
        return self.links[-1]

    def accept_raw(self) -> socket.socket:
        assert self.listener is not None
        conn, _ = self.listener.accept()
        conn.settimeout(None)
        return conn

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
        self.http_port = free_port()
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
                "--gateway-http", f"127.0.0.1:{self.http_port}",
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
        wait_until(lambda: "Streamable HTTP" in self.log(), WAIT_S, "the gateway's HTTP endpoint")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/mcp"

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


def test_a_refused_replay_ends_the_local_client(agent: Agent) -> None:
    client = agent.client()
    session = initialize(agent, client)
    agent.nexusd.go_away()
    agent.nexusd.listen()
    link = agent.nexusd.accept()
    replayed = agent.nexusd.message_for(link, lambda m: m.get("method") == "initialize")["params"]["message"]
    refusal = {"jsonrpc": "2.0", "id": replayed["id"], "error": {"code": -32602, "message": "no"}}
    link.send(gw_message(session, refusal))
    wait_until(lambda: client.eof, WAIT_S, "the client to be closed")
    link.wait_for(lambda m: m == gw_close(session))
    assert not any("error" in m for m in client.messages)


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


# --- the Streamable HTTP endpoint -----------------------------------------------------------------------------


class FakeMcp(threading.Thread):
    """nexusd serving every gateway session as a tiny MCP server: tools/call "echo" sends two progress
    notifications when asked, then returns its arguments; "sleep" never answers; "boom" is an error."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.closed: list[str] = []
        self.methods: list[str] = []
        self.start()

    def run(self) -> None:
        buffer = LineBuffer()
        while data := self.sock.recv(1 << 20):
            buffer.feed(data)
            while (line := buffer.next_line()) is not None:
                note = json.loads(line)
                if note["method"] == "gateway/close":
                    self.closed.append(note["params"]["session"])
                elif "method" in (msg := note["params"]["message"]) and "id" in msg:
                    self.methods.append(msg["method"])
                    for reply in self.answer(msg):
                        self.sock.sendall(encode_message(gw_message(note["params"]["session"], reply)))

    @staticmethod
    def answer(msg: Message) -> list[Message]:
        params = msg.get("params") or {}
        if msg["method"] == "initialize":
            info = {"name": "fake-nexusd", "version": "0"}
            return [result(msg["id"], {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                                       "serverInfo": info})]  # fmt: skip
        if msg["method"] == "tools/list":
            return [result(msg["id"], {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]})]
        if msg["method"] == "tools/call" and params["name"] == "sleep":
            return []
        if msg["method"] == "tools/call" and params["name"] == "boom":
            return [{"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32602, "message": "unknown tool"}}]
        if msg["method"] == "tools/call":
            token = params.get("_meta", {}).get("progressToken")
            progress = [
                {"jsonrpc": "2.0", "method": "notifications/progress",
                 "params": {"progressToken": token, "progress": n, "message": f"step {n}"}}
                for n in (1, 2) if token is not None
            ]  # fmt: skip
            text = json.dumps(params["arguments"])
            return [*progress, result(msg["id"], {"content": [{"type": "text", "text": text}], "isError": False})]
        return [{"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no such method"}}]


@pytest.fixture
def served(agent: Agent) -> FakeMcp:
    """The agent's link is dropped and taken again by a ``FakeMcp``."""
    agent.nexusd.go_away()
    agent.nexusd.listen()
    return FakeMcp(agent.nexusd.accept_raw())


def test_http_endpoint_with_the_sdk_client(agent: Agent, served: FakeMcp) -> None:
    async def scenario() -> None:
        http = httpx2.AsyncClient(timeout=httpx2.Timeout(WAIT_S))
        async with http, Client(streamable_http_client(agent.url, http_client=http), mode="legacy") as client:
            assert client.server_info is not None and client.server_info.name == "fake-nexusd"
            assert [tool.name for tool in (await client.list_tools()).tools] == ["echo"]
            steps: list[str | None] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                steps.append(message)

            echoed = await client.call_tool("echo", {"x": 1}, progress_callback=on_progress)
            assert isinstance(echoed.content[0], TextContent) and json.loads(echoed.content[0].text) == {"x": 1}
            assert steps == ["step 1", "step 2"]
            with pytest.raises(MCPError) as refused:  # nexusd's JSON-RPC error comes back as one
                await client.call_tool("boom", {})
            assert refused.value.code == -32602

    anyio.run(scenario)
    wait_until(lambda: len(served.closed) == 1, WAIT_S, "the DELETE to close the session upstream")


def test_http_wire_rules(agent: Agent, served: FakeMcp) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT_PARAMS}
    with httpx.Client(base_url=f"http://127.0.0.1:{agent.http_port}", timeout=WAIT_S) as http:
        ok = http.post("/mcp", json=init, headers={"Accept": "application/json"})
        assert ok.status_code == 200 and ok.json()["result"]["serverInfo"]["name"] == "fake-nexusd"
        sid = {"Mcp-Session-Id": ok.headers["Mcp-Session-Id"]}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert http.post("/mcp", json=note, headers=sid).status_code == 202
        assert http.post("/mcp", json=[note], headers=sid).status_code == 400  # no batches
        assert http.post("/mcp", content=b"{nope", headers=sid).json()["error"]["code"] == -32700
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        assert http.post("/mcp", json=call).status_code == 400  # no session id
        assert http.post("/mcp", json=call, headers={"Mcp-Session-Id": "nope"}).status_code == 404
        assert http.get("/mcp", headers=sid).status_code == 405
        assert http.post("/other", json=call, headers=sid).status_code == 404
        evil = {**sid, "Host": "evil.example:7780"}
        assert http.post("/mcp", json=call, headers=evil).status_code == 403  # DNS rebinding
        assert http.post("/mcp", json=call, headers={**sid, "Origin": "http://evil.example"}).status_code == 403
        assert http.post("/mcp", json=call, headers={**sid, "Origin": "http://localhost:3000"}).status_code == 200
        streamed = http.post("/mcp", json=call, headers={**sid, "Accept": "application/json, text/event-stream"})
        assert streamed.headers["Content-Type"] == "text/event-stream"
        events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events == [result(2, {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]})]

        hanging = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "sleep", "arguments": {}}}
        answer: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: answer.append(http.post("/mcp", json=hanging, headers=sid)))
        waiting.start()
        wait_until(lambda: "tools/call" in served.methods, WAIT_S, "the call to go up")
        assert http.delete("/mcp", headers=sid).status_code == 204  # ends the session: the waiting POST too
        waiting.join(WAIT_S)
        assert answer[0].status_code == 404
        wait_until(lambda: len(served.closed) == 1, WAIT_S, "gateway/close")
        assert http.post("/mcp", json=call, headers=sid).status_code == 404
        assert http.delete("/mcp", headers=sid).status_code == 404


def test_http_request_while_the_link_is_down(agent: Agent) -> None:
    agent.nexusd.go_away()
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT_PARAMS}
    with httpx.Client(timeout=WAIT_S) as http:
        down = http.post(agent.url, json=init, headers={"Accept": "application/json, text/event-stream"})
    assert down.status_code == 200 and "event: message" in down.text
    assert f'"code": {LINK_DOWN}' in down.text
