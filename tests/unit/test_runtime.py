"""The lifecycle runtime against a fake VMM process whose guest side the test plays (socketpairs)."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nexus.channel import open_link
from nexus.domain import (
    DriverError,
    ExitStatus,
    GuestLink,
    GuestPort,
    InvalidState,
    Role,
    Unavailable,
    Vm,
    VmmRecord,
    VmState,
    utcnow,
)
from nexus.services import RuntimeTimeouts, VmRuntime
from nexus.store import VmRepo, connect, migrate

pytestmark = pytest.mark.anyio


class FakeProcess:
    """A VmProcess whose ports are socketpairs; the test holds the guest ends."""

    def __init__(self) -> None:
        self.pid = 4242
        self.accel = "tcg"
        self.record = VmmRecord(self.pid, 1, "fake", "tcg")
        self._exit: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self.guest: dict[GuestPort, asyncio.Queue[socket.socket]] = {p: asyncio.Queue() for p in GuestPort}
        self.killed = False
        self.powered_off = False
        self.paused = False
        self.detached = False
        self.ignores_power_off = False
        self.mcp_ends: list[GuestEnd] = []

    @property
    def exit_status(self) -> ExitStatus | None:
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    async def detach(self) -> None:
        self.detached = True

    async def connect(self, port: GuestPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, guest = socket.socketpair()
        self.guest[port].put_nowait(guest)
        return await asyncio.open_unix_connection(sock=host)

    def exit(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(ExitStatus(code))

    async def shutdown(self, timeout_s: float) -> ExitStatus:
        if self.ignores_power_off:  # as a guest that does not answer the power button: killed at the timeout
            return await self.kill()
        self.powered_off = True
        self.exit(0)
        return ExitStatus(0)

    async def pause(self) -> None:
        self.paused = True

    async def resume(self) -> None:
        self.paused = False

    async def checkpoint(self, directory: Path) -> None:
        self.paused = True

    async def kill(self) -> ExitStatus:
        self.killed = True
        self.exit(-9)
        return ExitStatus(-9)


class GuestEnd:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.task: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.sock.close()

    async def send(self, message: dict[str, Any]) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, json.dumps(message).encode() + b"\n")

    async def serve_mcp(self) -> None:
        """Answer every request with an empty result (enough for the initialize handshake)."""
        loop = asyncio.get_running_loop()
        buf = b""
        while data := await loop.sock_recv(self.sock, 65536):
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if "id" in msg and msg.get("method") != "hang":  # "hang": a call the agent never answers
                    await self.send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})


HELLO = {"agent_version": "t", "image_id": None, "boot_time": time.time(), "hostname": "g", "pid": 1}


class FlakyRepo(VmRepo):
    """A VmRepo that fails every call while ``broken`` (as SQLite does while another process holds the lock)."""

    broken = False

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name != "broken" and object.__getattribute__(self, "broken"):
            raise sqlite3.OperationalError("database is locked")
        return object.__getattribute__(self, name)


@pytest.fixture
async def env() -> AsyncIterator[tuple[VmRuntime, FlakyRepo, Vm, FakeProcess]]:
    conn = connect(":memory:")
    migrate(conn)
    repo = FlakyRepo(conn)
    now = utcnow()
    vm = Vm("abc123abc123", "t", Role.WORK, 1, 256, "img", "k", VmState.STARTING, now, now)
    repo.insert(vm, "test")
    runtime = VmRuntime(
        repo, connect=open_link, timeouts=RuntimeTimeouts(boot_s=1.5, heartbeat_s=0.6, stop_s=1.0, connect_s=1.0)
    )
    process = FakeProcess()
    runtime.watch(vm, process, console_log=Path("/nonexistent/console.log"))
    yield runtime, repo, vm, process
    process.exit(0)
    await asyncio.sleep(0.05)
    conn.close()


async def _ready(runtime: VmRuntime, vm: Vm, process: FakeProcess) -> GuestEnd:
    control = GuestEnd(await asyncio.wait_for(process.guest[GuestPort.CONTROL].get(), 2))
    await control.send({"jsonrpc": "2.0", "method": "nexus/hello", "params": HELLO})
    await _serve_next_mcp(process)
    await asyncio.wait_for(runtime.wait_ready(vm.id), 2)
    return control


async def _serve_next_mcp(process: FakeProcess) -> GuestEnd:
    """The guest end of the next MCP link nexusd opens, answering (but "hang")."""
    mcp = GuestEnd(await asyncio.wait_for(process.guest[GuestPort.MCP].get(), 2))
    mcp.task = asyncio.get_running_loop().create_task(mcp.serve_mcp())
    process.mcp_ends.append(mcp)
    return mcp


async def _state_becomes(repo: VmRepo, vm: Vm, state: VmState, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while repo.get(vm.id).state is not state:
        assert time.monotonic() < deadline, f"still {repo.get(vm.id).state}, wanted {state}"
        await asyncio.sleep(0.02)


async def test_hello_makes_ready_and_silence_unreachable(env: tuple[VmRuntime, VmRepo, Vm, FakeProcess]) -> None:
    runtime, repo, vm, process = env
    control = await _ready(runtime, vm, process)
    assert repo.get(vm.id).state is VmState.READY
    await _state_becomes(repo, vm, VmState.UNREACHABLE, 3)
    await control.send({"jsonrpc": "2.0", "method": "nexus/heartbeat", "params": {"seq": 1, "uptime_s": 1.0}})
    await _serve_next_mcp(process)  # ready again once the MCP link is open again
    await _state_becomes(repo, vm, VmState.READY, 1)
    reasons = [c.reason for c in repo.history(vm.id)]
    assert any("no heartbeat" in r for r in reasons)
    assert reasons[-1].startswith("agent t ready")


async def test_no_hello_in_time_fails_and_kills(env: tuple[VmRuntime, VmRepo, Vm, FakeProcess]) -> None:
    runtime, repo, vm, process = env
    with pytest.raises(DriverError, match="no agent hello within 2s"):
        await asyncio.wait_for(runtime.wait_ready(vm.id), 5)
    assert process.killed
    assert repo.get(vm.id).state is VmState.FAILED
    assert not runtime.is_running(vm.id)


async def test_exit_after_ready_is_a_crash(env: tuple[VmRuntime, VmRepo, Vm, FakeProcess]) -> None:
    runtime, repo, vm, process = env
    await _ready(runtime, vm, process)
    process.exit(-9)
    await _state_becomes(repo, vm, VmState.CRASHED, 1)
    assert "signal 9" in repo.history(vm.id)[-1].reason
    assert not runtime.is_running(vm.id)


async def test_exit_during_boot_is_a_failed_start(env: tuple[VmRuntime, VmRepo, Vm, FakeProcess]) -> None:
    runtime, repo, vm, process = env
    process.exit(1)
    with pytest.raises(DriverError, match="exited during boot"):
        await asyncio.wait_for(runtime.wait_ready(vm.id), 2)
    assert repo.get(vm.id).state is VmState.FAILED


async def test_stop_powers_off(env: tuple[VmRuntime, VmRepo, Vm, FakeProcess]) -> None:
    runtime, repo, vm, process = env
    await _ready(runtime, vm, process)
    await asyncio.wait_for(runtime.stop(vm.id), 3)
    assert process.powered_off
    assert [c.to_state for c in repo.history(vm.id)][-2:] == [VmState.STOPPING, VmState.STOPPED]


async def test_stop_that_had_to_kill_says_so(env: tuple[VmRuntime, VmRepo, Vm, FakeProcess]) -> None:
    runtime, repo, vm, process = env
    await _ready(runtime, vm, process)
    process.ignores_power_off = True
    await asyncio.wait_for(runtime.stop(vm.id), 3)
    assert repo.get(vm.id).state is VmState.STOPPED
    assert repo.history(vm.id)[-1].reason.startswith("stopped by force (VMM exit signal 9)")


async def test_paused_vm_is_not_unreachable_and_resumes(env: tuple[VmRuntime, VmRepo, Vm, FakeProcess]) -> None:
    runtime, repo, vm, process = env
    await _ready(runtime, vm, process)
    await runtime.pause(vm.id)
    assert process.paused
    assert repo.get(vm.id).state is VmState.PAUSED
    await asyncio.sleep(1.0)  # longer than the heartbeat timeout, with no heartbeats
    assert repo.get(vm.id).state is VmState.PAUSED
    with pytest.raises(InvalidState, match="paused"):
        runtime.mcp(vm.id)
    await runtime.resume(vm.id)
    assert not process.paused
    assert repo.get(vm.id).state is VmState.READY
    with pytest.raises(InvalidState, match="not paused"):
        await runtime.resume(vm.id)


async def test_stop_of_a_paused_vm_resumes_it_first(env: tuple[VmRuntime, VmRepo, Vm, FakeProcess]) -> None:
    runtime, repo, vm, process = env
    await _ready(runtime, vm, process)
    await runtime.pause(vm.id)
    await asyncio.wait_for(runtime.stop(vm.id), 3)
    assert not process.paused
    assert process.powered_off
    assert repo.get(vm.id).state is VmState.STOPPED


async def test_mcp_link_closed_by_the_guest_fails_calls_at_once_and_is_reopened(
    env: tuple[VmRuntime, VmRepo, Vm, FakeProcess],
) -> None:
    runtime, repo, vm, process = env
    await _ready(runtime, vm, process)
    first = runtime.mcp(vm.id)
    in_flight = asyncio.create_task(first.call("hang", timeout_s=30))
    await asyncio.sleep(0.05)
    process.mcp_ends[-1].close()  # the guest drops the MCP stream (EOF); the VM stays up
    with pytest.raises(Unavailable, match="went away during hang"):
        await asyncio.wait_for(in_flight, 1)  # at once, not after its 30 s timeout
    await _serve_next_mcp(process)
    second = await _open_link(runtime, vm)
    assert second is not first
    assert await asyncio.wait_for(second.call("tools/list"), 2) == {}
    assert repo.get(vm.id).state is VmState.READY


async def test_unreachable_agent_fails_calls_in_flight_and_link_returns_with_heartbeats(
    env: tuple[VmRuntime, VmRepo, Vm, FakeProcess],
) -> None:
    runtime, repo, vm, process = env
    control = await _ready(runtime, vm, process)
    in_flight = asyncio.create_task(runtime.mcp(vm.id).call("hang", timeout_s=30))
    await _state_becomes(repo, vm, VmState.UNREACHABLE, 3)
    with pytest.raises(Unavailable, match="unreachable"):
        await asyncio.wait_for(in_flight, 1)
    with pytest.raises(Unavailable, match="not open"):
        runtime.mcp(vm.id)
    await asyncio.sleep(0.3)
    assert process.guest[GuestPort.MCP].empty()  # no reconnect attempts while the agent is silent
    await control.send({"jsonrpc": "2.0", "method": "nexus/heartbeat", "params": {"seq": 1, "uptime_s": 1.0}})
    await _serve_next_mcp(process)
    await _state_becomes(repo, vm, VmState.READY, 1)
    link = await _open_link(runtime, vm)
    assert await asyncio.wait_for(link.call("tools/list"), 2) == {}


async def _open_link(runtime: VmRuntime, vm: Vm) -> GuestLink:
    deadline = time.monotonic() + 2
    while True:
        try:
            return runtime.mcp(vm.id)
        except Unavailable:
            assert time.monotonic() < deadline, "the MCP link was not reopened"
            await asyncio.sleep(0.01)


async def test_exit_while_the_store_is_locked_releases_the_vm_and_records_it_later(
    env: tuple[VmRuntime, FlakyRepo, Vm, FakeProcess],
) -> None:
    runtime, repo, vm, process = env
    await _ready(runtime, vm, process)
    repo.set_runtime(vm.id, process.record)
    repo.broken = True
    process.exit(-9)
    deadline = time.monotonic() + 4
    while runtime.is_running(vm.id):  # released within its wait for the store, not when the store is back
        assert time.monotonic() < deadline, "the VM was not released while the store was locked"
        await asyncio.sleep(0.05)
    repo.broken = False
    await _state_becomes(repo, vm, VmState.CRASHED, 8)
    assert repo.get(vm.id).pid is None
    assert "signal 9" in repo.history(vm.id)[-1].reason


async def test_watchdog_survives_a_locked_store(env: tuple[VmRuntime, FlakyRepo, Vm, FakeProcess]) -> None:
    """Silence while the store is locked: calls in flight fail at once, and unreachable is recorded once it
    is back (the watchdog logs and goes on; it does not die)."""
    runtime, repo, vm, process = env
    await _ready(runtime, vm, process)
    in_flight = asyncio.create_task(runtime.mcp(vm.id).call("hang", timeout_s=30))
    repo.broken = True
    with pytest.raises(Unavailable, match="unreachable"):
        await asyncio.wait_for(in_flight, 3)
    await asyncio.sleep(0.6)
    repo.broken = False
    await _state_becomes(repo, vm, VmState.UNREACHABLE, 2)


async def test_detach_all_leaves_the_vmm_running_and_the_record_as_it_was(
    env: tuple[VmRuntime, VmRepo, Vm, FakeProcess],
) -> None:
    runtime, repo, vm, process = env
    control = await _ready(runtime, vm, process)
    assert await runtime.detach_all() == [vm.name]
    assert process.detached and not process.killed and not process.powered_off
    assert not runtime.is_running(vm.id)
    assert repo.get(vm.id).state is VmState.READY  # the next nexusd adopts it from here
    assert await asyncio.get_running_loop().sock_recv(control.sock, 100) in (b"", b"\n")  # links closed
