"""Terminals through a real nexusd whose VM is the fake Firecracker's (a real agent as a host process, so the guest's
programs are this host's processes and their pids can be watched):

- a model drives ``python3 -i`` with the shell_* MCP tools through the official MCP SDK client (prompt, an
  expression, ^C, the screen, the exit code), and the tools' refusals (unknown session, cap, idle timeout);
- ``nexusctl vm shell`` under a real pseudo-terminal on the host (prompt, expression, resize seen by ``stty
  size``, ^C, the shell's exit code, the terminal restored), and ``vm exec -it`` from a pipe;
- the WebSocket itself: a client that vanishes takes its guest program with it, exit frames, a bad control frame,
  refusals before the handshake; over TCP only with the admin token (no token 401, an agent token 403); audited.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.sync.client import unix_connect
from websockets.typing import Origin

from nexus.client.client import Unauthorized
from nexus.domain import Forbidden, Invalid, InvalidState, NotFound
from nexus.sdk import Nexus
from tests.api_client import NexusClient
from tests.fakes.firecracker_host import firecracker_daemon
from tests.helpers import Daemon, free_port, wait_until
from tests.integration.test_mcp_vm import mcp_client, pytestmark  # noqa: F401  (pytestmark: the same skips)
from tests.pty_terminal import Terminal

ADMIN = "admin-token-for-the-terminals-0123456789"
VM = "term"


@dataclass
class Setup:
    daemon: Daemon
    url: str
    agent_token: str


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    base = Path(tempfile.mkdtemp(prefix="nxterm-"))
    token_file = base / "admin-token"
    token_file.write_text(ADMIN + "\n")
    token_file.chmod(0o600)
    url = f"http://127.0.0.1:{free_port()}"
    d = firecracker_daemon(base, None, None, "--listen", url.removeprefix("http://"), "--token-file", str(token_file))
    try:
        with NexusClient(d.socket, timeout_s=60) as api:
            api.create_vm(name=VM, mem_mib=256)
            api.start_vm(VM)
            api.create_vm(name="cold", mem_mib=256)
            agent = api.create_token(VM)["token"]
        yield Setup(d, url, agent)
    finally:
        code = d.stop()
        log = d.log_text()
        shutil.rmtree(base, ignore_errors=True)
        assert code == 0, log[-3000:]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- the shell_* tools, as a model uses them -------------------------------------------------------------------


def test_a_model_drives_python_through_the_shell_tools(setup: Setup) -> None:
    async def scenario() -> None:
        async with mcp_client(setup.daemon, VM) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"shell_open", "shell_write", "shell_read", "shell_close"} <= tools

            async def call(name: str, **args: Any) -> dict[str, Any]:
                result = await client.call_tool(name, args)
                assert result.is_error is False, result.content
                content: dict[str, Any] | None = result.structured_content
                assert content is not None
                return content

            opened = await call("shell_open", command=["python3", "-q", "-i"])
            session = opened["session"]
            assert opened["output"].endswith(">>> ") and alive(opened["pid"])
            await call("shell_write", session=session, text="6*7", keys=["Enter"])
            read = await call("shell_read", session=session, wait_s=10)
            assert read["output"] == "6*7\n42\n>>> " and read["exited"] is False

            await call("shell_write", session=session, text="while True: pass\r")
            await call("shell_read", session=session, wait_s=5)
            await call("shell_write", session=session, keys=["C-c"])
            read = await call("shell_read", session=session, wait_s=10)
            assert "KeyboardInterrupt" in read["output"] and read["output"].endswith(">>> ")

            screen = await call("shell_read", session=session, mode="screen")
            lines = screen["screen"].splitlines()
            assert lines[:3] == [">>> 6*7", "42", ">>> while True: pass"] and lines[-1] == ">>>"
            assert screen["cursor"] == {"row": len(lines) - 1, "col": 4} and (screen["rows"], screen["cols"]) == (
                24,
                80,
            )

            await call("shell_write", session=session, text="raise SystemExit(3)\r")
            read = await call("shell_read", session=session, wait_s=10)
            assert read["exited"] is True and read["exit_code"] == 3
            closed = await call("shell_close", session=session)
            assert closed["exit_code"] == 3 and not alive(opened["pid"])

    anyio.run(scenario)


def test_shell_tool_refusals_the_cap_and_the_idle_timeout(setup: Setup) -> None:
    with NexusClient(setup.daemon.socket, timeout_s=60) as api:

        def tool(name: str, **args: Any) -> dict[str, Any]:
            return api.call_tool(VM, name, args)

        gone = tool("shell_read", session="sh-999")
        assert gone["isError"] is True and "no session 'sh-999'" in gone["content"][0]["text"]
        assert tool("shell_write", session="sh-999", text="x")["isError"] is True
        bad_key = tool("shell_open", command="cat", wait_s=0)["structuredContent"]["session"]
        refused = tool("shell_write", session=bad_key, keys=["Hyper"])
        assert refused["isError"] is True and "unknown key 'Hyper'" in refused["content"][0]["text"]
        assert tool("shell_open", rows=0)["isError"] is True
        tool("shell_close", session=bad_key)

        # The cap (16 sessions) counts every session; the 17th is refused and names the open ones.
        opened = [tool("shell_open", command="cat", wait_s=0)["structuredContent"] for _ in range(16)]
        assert all("session" in o for o in opened)
        over = tool("shell_open", command="cat", wait_s=0)
        assert over["isError"] is True and "16 sessions are open" in over["content"][0]["text"]
        for o in opened:
            assert tool("shell_close", session=o["session"])["isError"] is False
        assert not any(alive(o["pid"]) for o in opened)

        # A session nothing reads or writes is closed after its idle timeout, its program killed.
        idle = tool("shell_open", command="sleep 600", idle_timeout_s=1, wait_s=0)["structuredContent"]
        time.sleep(1.5)
        wait_until(lambda: tool("shell_read", session=idle["session"])["isError"], 5, "the idle session to close")
        assert not alive(idle["pid"])


# --- nexusctl vm shell under a real terminal -------------------------------------------------------------------


def nexusctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "nexus.cli.main", *args]


def test_vm_shell_on_a_real_terminal(setup: Setup) -> None:
    term = Terminal(nexusctl("--socket", str(setup.daemon.socket), "vm", "shell", VM), rows=30, cols=100)
    try:
        lflag = termios.tcgetattr(term.slave)[3]
        term.expect(rb"[#$] ")  # the guest shell's prompt
        term.send(b"echo MARK$((6*7))\r")
        term.expect(rb"MARK42")
        assert termios.tcgetattr(term.slave)[3] & termios.ECHO == 0  # raw mode: the guest's terminal echoes
        term.send(b"stty size\r")
        term.expect(rb"[\r\n]30 100\r\n")
        term.resize(40, 120)
        time.sleep(0.3)  # SIGWINCH reaches nexusctl, which tells nexusd
        term.send(b"stty size\r")
        term.expect(rb"[\r\n]40 120\r\n")

        term.send(b"python3 -q -i\r")
        term.expect(rb">>> ")
        term.send(b"6*7\r")
        term.expect(rb"\r\n42\r\n>>> ")
        term.send(b"while True: pass\r")
        time.sleep(0.3)
        term.send(b"\x03")  # ^C reaches the guest's python, not nexusctl
        term.expect(rb"KeyboardInterrupt\r\n>>> ")
        term.send(b"raise SystemExit(0)\r")
        term.send(b"echo MARK$((7*7))\r")
        term.expect(rb"MARK49")
        term.send(b"exit 3\r")
        assert term.proc.wait(timeout=15) == 3
        assert termios.tcgetattr(term.slave)[3] == lflag  # the user's terminal is as it was
    finally:
        term.close()


def test_vm_exec_tty_from_a_pipe(setup: Setup) -> None:
    sock = str(setup.daemon.socket)
    done = subprocess.run(
        nexusctl("--socket", sock, "vm", "exec", "-it", VM, "--", "/bin/sh"),
        input=b"echo piped-$((1+1))\nexit 4\n",
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 4, done.stderr
    assert b"piped-2" in done.stdout
    # the end of stdin is the end of input for the program (^D on its terminal)
    done = subprocess.run(
        nexusctl("--socket", sock, "vm", "exec", "-it", VM, "--", "cat"),
        input=b"abc\n",
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.count(b"abc") == 2  # the terminal's echo, then cat's copy
    # -t without -i: no input; --shell joins the words; a signal's death is 128+N
    done = subprocess.run(
        nexusctl("--socket", sock, "vm", "exec", "-t", "--shell", VM, "--", "kill", "-9", "$$"),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 137, done.stderr
    # -i without -t: stdin fed to a plain exec
    done = subprocess.run(
        nexusctl("--socket", sock, "vm", "exec", "-i", VM, "--", "wc", "-c"), input=b"12345", capture_output=True
    )
    assert done.returncode == 0 and done.stdout.strip() == b"5"
    refused = subprocess.run(nexusctl("--socket", sock, "vm", "shell", "cold"), capture_output=True, timeout=60)
    assert (refused.returncode, refused.stderr) == (5, b"nexusctl: the VM is not running\n")  # as for vm exec


# --- the WebSocket ----------------------------------------------------------------------------------------------

_VANISHING_CLIENT = """
import sys
from websockets.sync.client import unix_connect
from websockets.typing import Origin
ws = unix_connect(sys.argv[1], "ws://nexusd/v1/vms/term/shell?command=/bin/sh&command=-c&command=echo+pid=$$;+exec+sleep+600")
print(ws.recv(10).decode().strip(), flush=True)
sys.stdin.read()
"""


def test_a_vanished_client_takes_its_program_with_it(setup: Setup) -> None:
    client = subprocess.Popen(
        [sys.executable, "-c", _VANISHING_CLIENT, str(setup.daemon.socket)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert client.stdout is not None
        line = client.stdout.readline().decode()
        pid = int(line.strip().removeprefix("pid="))
        assert alive(pid)
        client.send_signal(signal.SIGKILL)  # no close frame: the socket just goes
        client.wait()
        wait_until(lambda: not alive(pid), 10, "the guest program of a vanished client to end")
    finally:
        with contextlib.suppress(ProcessLookupError):
            client.kill()
        client.wait()


def test_websocket_frames_exit_codes_and_refusals(setup: Setup) -> None:
    url = f"ws://nexusd/v1/vms/{VM}/shell"
    with unix_connect(str(setup.daemon.socket), url + "?command=sh&command=-c&command=kill+-TERM+$$") as ws:
        assert json.loads(ws.recv(10)) == {"type": "exit", "code": 143, "signal": 15}
        with pytest.raises(ConnectionClosedOK):
            ws.recv(10)
    with unix_connect(str(setup.daemon.socket), url + "?command=cat") as ws:
        ws.send('{"type": "resize", "rows": "many"}')
        frame = json.loads(ws.recv(10))
        assert frame["type"] == "error" and "not a control frame" in frame["message"]
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003

    # a browser page: only from an origin nexusd allows (the MCP endpoints' rule against DNS rebinding)
    for origin, allowed in (("http://evil.example", False), ("http://localhost:8080", True)):
        try:
            with unix_connect(str(setup.daemon.socket), url + "?command=true", origin=Origin(origin)) as ws:
                assert allowed and json.loads(ws.recv(10))["type"] == "exit"
        except InvalidStatus as exc:
            assert not allowed and exc.response.status_code == 403
            assert b"mcp_allowed_origins" in (exc.response.body or b"")

    with Nexus(setup.daemon.socket) as nx:
        with pytest.raises(NotFound, match="nope"):
            nx.vms.shell("nope")
        with pytest.raises(InvalidState, match="not running"):
            nx.vms.shell("cold")
        with pytest.raises(Invalid, match="1 to 1000 rows"):
            nx.vms.shell(VM, rows=0)
        with nx.vms.shell(VM, ["sh", "-c", "read line; echo got:$line; stty size"], rows=7, cols=33) as shell:
            shell.resize(9, 44)
            time.sleep(0.2)
            shell.write(b"x\r")
            seen = b""
            while data := shell.read(10):
                seen += data
            assert b"got:x\r\n9 44\r\n" in seen and shell.exit_code == 0


def test_over_tcp_only_the_admin_token_opens_a_terminal_and_it_is_audited(setup: Setup) -> None:
    with pytest.raises(Unauthorized, match="missing bearer token"):
        Nexus(url=setup.url).vms.shell(VM)
    with pytest.raises(Forbidden, match="MCP endpoint"):
        Nexus(url=setup.url, token=setup.agent_token).vms.shell(VM)
    with Nexus(url=setup.url, token=ADMIN) as nx, nx.vms.shell(VM, ["sh", "-c", "echo over-tcp"]) as shell:
        seen = b""
        while data := shell.read(10):
            seen += data
        assert b"over-tcp" in seen and shell.exit_code == 0

    with NexusClient(setup.daemon.socket, timeout_s=60) as api:
        entries = api.request("GET", "/v1/audit", params={"vm": VM, "limit": 500})["entries"]
    shells = [e for e in entries if e["action"] == "WS /v1/vms/{ref}/shell"]
    by_caller = {(e["caller"], e["decision"]) for e in shells}
    assert ("admin", "allow") in by_caller and ("anonymous", "deny") in by_caller
    assert any(e["caller"].startswith("token:") and e["decision"] == "deny" for e in shells)
    allowed = next(e for e in shells if e["caller"] == "admin")
    assert allowed["target"] == VM and allowed["args_digest"] and allowed["is_error"] is False
    hidden = base64.b64encode(b"over-tcp").decode()
    assert not any("over-tcp" in json.dumps(e) or hidden in json.dumps(e) for e in shells)
