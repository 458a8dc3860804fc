"""Background processes through a real nexusd: ``/v1/vms/{ref}/processes``, the SDK and ``nexusctl vm proc``/``vm ps``
against the fake Firecracker's VMs (each "guest" agent a real host process). A process outlives the MCP session
that started it and its agent: killed and started again as init would respawn it, the new agent lists and controls
it. Unknown processes are 404 naming them (CLI exit 4, one line); a readiness check that fails is 422 with the last
output, and the process is gone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from nexus.agent.procfiles import proc_start_ticks
from nexus.domain import Conflict, GuestError
from nexus.sdk import Nexus
from tests.api_client import NexusClient
from tests.fakes.firecracker_host import firecracker_daemon, processes_mentioning
from tests.helpers import REPO, Daemon, wait_until
from tests.integration.test_mcp_vm import mcp_client, pytestmark  # noqa: F401  (the same skips)

NEXUSCTL = str(Path(sys.executable).parent / "nexusctl")
VM = "proc-one"


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nxproc-"))  # short: Unix socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(base: Path) -> Iterator[Daemon]:
    d = firecracker_daemon(base)
    try:
        with NexusClient(d.socket, timeout_s=60) as api:
            api.create_vm(name=VM, mem_mib=256)
            api.start_vm(VM)
        yield d
    finally:
        code = d.stop()
        assert code == 0, d.log_text()[-3000:]


@pytest.fixture
def nx(daemon: Daemon) -> Iterator[Nexus]:
    with Nexus(daemon.socket) as client:
        yield client


def raw(daemon: Daemon, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), timeout=60) as http:
        return http.request(method, f"http://nexusd{path}", **kwargs)


def nexusctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NEXUSCTL, "--socket", str(daemon.socket), *args], capture_output=True, text=True, timeout=60)


def test_a_server_started_checked_read_and_stopped(daemon: Daemon, nx: Nexus) -> None:
    procs = nx.vms.processes(VM)
    port = 18000 + os.getpid() % 1000
    server = procs.start(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], name="web", ready_port=port
    )
    assert server.running and server.pid is not None and server.ready_after_s is not None
    assert [p.id for p in procs.list() if p.running] == [server.id]
    assert procs.get("web").id == server.id
    fetch = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}/').status)"
    out = nx.vms.exec(VM, [sys.executable, "-c", fetch])
    assert out.stdout == "200\n"
    wait_until(lambda: '"GET / HTTP/1.1" 200' in procs.output("web", tail=5).text, 10, "the request in its log")
    assert procs.signal("web", "TERM").id == server.id
    done = procs.wait("web", timeout_s=10)
    assert (done.state, done.exit_code, done.signal, done.timed_out) == ("exited", -15, "SIGTERM", False)
    with pytest.raises(Conflict, match=f"process {server.id} is not running"):
        procs.signal("web", "KILL")
    assert proc_start_ticks(server.pid) is None


def test_unknown_processes_are_404_naming_them(daemon: Daemon) -> None:
    for method, path, body in (
        ("GET", "/p404", None),
        ("GET", "/p404/output", None),
        ("POST", "/p404/signal", {"signal": "KILL"}),
        ("GET", "/p404/wait?timeout_s=0", None),
        ("GET", "/ghost", None),
    ):
        answer = raw(daemon, method, f"/v1/vms/{VM}/processes{path}", json=body)
        name = path.split("/")[1].split("?")[0]
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"] == {"code": "not_found", "message": f"no process {name!r} in VM {VM!r}"}
    done = nexusctl(daemon, "vm", "proc", "logs", VM, "p404")
    assert (done.returncode, done.stdout, done.stderr) == (4, "", f"nexusctl: no process 'p404' in VM '{VM}'\n")


def test_bad_input_is_refused_and_starts_nothing(daemon: Daemon, nx: Nexus) -> None:
    before = len(nx.vms.processes(VM).list())
    for body, words in (
        ({"command": "true", "ready_port": 0}, "ready_port"),
        ({"command": "true", "name": "no spaces"}, "name"),
        ({"command": "true", "ready_port": 80, "ready_log": "x"}, "give ready_port or ready_log, not both"),
        ({"command": "true", "cwd": "/nonexistent"}, "cwd '/nonexistent' does not exist"),
        ({"command": "true", "surprise": 1}, "unknown field"),
    ):
        answer = raw(daemon, "POST", f"/v1/vms/{VM}/processes", json=body)
        assert answer.status_code == 422 and words in answer.json()["error"]["message"], (body, answer.text)
    answer = raw(daemon, "POST", f"/v1/vms/{VM}/processes/p1/signal", json={"signal": "BOOM"})
    assert answer.status_code == 422
    answer = raw(daemon, "GET", f"/v1/vms/{VM}/processes/p1/output?offset=0&tail=1")
    assert answer.status_code == 422 and "give offset or tail, not both" in answer.text
    assert len(nx.vms.processes(VM).list()) == before


def test_a_readiness_check_that_never_passes(daemon: Daemon, nx: Nexus) -> None:
    procs = nx.vms.processes(VM)
    script = "echo warming up; echo still warming; sleep 60"
    with pytest.raises(GuestError) as caught:
        procs.start(script, name="never", ready_log="^ready", ready_timeout_s=1)
    message = str(caught.value)
    assert "was not ready: no output line matched within 1 s; it was stopped (killed by SIGKILL)" in message
    assert message.endswith("--- last output ---\nwarming up\nstill warming")
    record = procs.get("never")
    assert (record.state, record.signal, record.reason) == (
        "exited",
        "SIGKILL",
        "not ready: no output line matched within 1 s",
    )
    assert record.pid is not None and proc_start_ticks(record.pid) is None


def test_the_cli(daemon: Daemon) -> None:
    started = nexusctl(daemon, "vm", "proc", "start", VM, "--name", "ticker", "--shell", "--", "echo hi; sleep 30")
    assert started.returncode == 0, started.stderr
    pid = started.stdout.split()[0]
    assert started.stdout.startswith(f"{pid} (ticker) running, pid ")
    listing = nexusctl(daemon, "vm", "ps", VM)
    assert any(line.split()[:3] == [pid, "ticker", "running"] for line in listing.stdout.splitlines())
    assert nexusctl(daemon, "vm", "proc", "logs", VM, "ticker").stdout == "hi\n"
    assert nexusctl(daemon, "vm", "proc", "kill", VM, "ticker").stdout == f"sent SIGTERM to {pid}\n"
    waited = nexusctl(daemon, "vm", "proc", "wait", VM, "ticker")
    assert (waited.returncode, waited.stdout) == (1, f"{pid} killed (SIGTERM)\n")

    script = "for i in 1 2 3; do echo line $i; sleep 0.3; done; exit 7"
    started = nexusctl(daemon, "--json", "vm", "proc", "start", VM, "--shell", "--", script)
    followed = nexusctl(daemon, "vm", "proc", "logs", "-f", VM, started.stdout.split('"id": "')[1].split('"')[0])
    assert (followed.returncode, followed.stdout) == (0, "line 1\nline 2\nline 3\n")
    waited = nexusctl(daemon, "vm", "proc", "wait", VM, "--timeout", "5", "--", followed.args[-1])
    assert waited.returncode == 7
    running = nexusctl(daemon, "vm", "proc", "start", VM, "--", "sleep", "30").stdout.split()[0]
    assert nexusctl(daemon, "vm", "proc", "wait", VM, running, "--timeout", "0.2").returncode == 124
    assert nexusctl(daemon, "vm", "proc", "logs", VM, running, "--tail", "1").returncode == 0
    nexusctl(daemon, "vm", "proc", "kill", VM, running, "--signal", "KILL")


def test_a_process_outlives_the_mcp_session_that_started_it(daemon: Daemon, nx: Nexus) -> None:
    async def start() -> dict[str, Any]:
        async with mcp_client(daemon, VM) as client:
            result = await client.call_tool("process_start", {"command": "sleep 60", "name": "from-mcp"})
            assert not result.is_error
            assert isinstance(result.structured_content, dict)
            return result.structured_content

    started = anyio.run(start)  # the session is closed (DELETE) when the client ends
    record = nx.vms.processes(VM).get("from-mcp")
    assert (record.id, record.state, record.pid) == (started["id"], "running", started["pid"])
    nx.vms.processes(VM).signal("from-mcp", "KILL")


def _agent_of(base: Path, vm_id: str) -> int:
    uds = str(base / "run" / "vms" / vm_id / "vsock.sock")
    (pid,) = [p for p in processes_mentioning(uds) if b"--vsock-unix" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return pid


def test_processes_outlive_their_agent_and_the_next_one_finds_them(daemon: Daemon, base: Path, nx: Nexus) -> None:
    procs = nx.vms.processes(VM)
    server = procs.start("echo serving; sleep 60", name="survivor", ready_log="serving")
    finished = procs.start("echo bye; exit 5")
    assert procs.wait(finished.id, timeout_s=10).exit_code == 5
    vm_id = nx.vms.get(VM).id
    agent = _agent_of(base, vm_id)
    argv = Path(f"/proc/{agent}/cmdline").read_bytes().split(b"\0")[:-1]
    os.kill(agent, signal.SIGKILL)  # the agent dies; init would start it again: so does this test
    wait_until(lambda: nx.vms.get(VM).state == "unreachable", 10, "nexusd to miss the agent")
    respawned = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        wait_until(lambda: nx.vms.get(VM).state == "ready", 20, "the new agent to be ready")
        listed = {p.id: p for p in procs.list()}
        assert (listed[server.id].state, listed[server.id].pid) == ("running", server.pid)
        assert (listed[finished.id].state, listed[finished.id].exit_code) == ("exited", 5)
        assert procs.output("survivor").text == "serving\n"
        procs.signal("survivor", "TERM")
        assert procs.wait("survivor", timeout_s=10).signal == "SIGTERM"
    finally:
        respawned.kill()
        respawned.wait()
