"""An in-memory VMM for unit tests of the services: ``FakeVmmDriver`` (the ``VmmDriver`` port), ``FakeVmProcess``
(``VmProcess``) and ``connect_fake_guest`` (a ``GuestConnector``) whose links a tiny in-process agent answers: hello
and heartbeats on the control port, ``initialize``/``tools/list``/``tools/call`` on the MCP port. ``VmRuntime``
drives a VM to ``ready`` with it as with a real VMM; no process, socket or QEMU is involved.

Faults are scripted per launch with ``Boot`` (``FakeVmmDriver.boots``, consumed in order) and per VM id for
adoption (``FakeVmmDriver.adopt_faults``); a running process crashes with ``FakeVmProcess.exit(code)``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus.domain import (
    DriverError,
    ExitStatus,
    GuestLink,
    GuestPort,
    LaunchSpec,
    NotificationHandler,
    ProgressHandler,
    SpawnHook,
    Unavailable,
    VmmRecord,
    VmProcess,
)
from nexus.protocol import HEARTBEAT_METHOD, HELLO_METHOD, MCP_LATEST_PROTOCOL_VERSION, Heartbeat, Hello

DRIVER = "fake"
_pids = itertools.count(40000)


@dataclass
class Boot:
    """What one launch does; the default boots, says hello, beats and powers off when asked."""

    fail_before_spawn: BaseException | None = None  # raised by launch before any process exists (e.g. ENOSPC)
    fail_after_spawn: BaseException | None = None  # spawned and on record, then killed by the driver and raised
    exit_during_boot: int | None = None  # the VMM exits with this status right after launch returned
    says_hello: bool = True  # False: the agent never says hello (the boot times out)
    ignores_shutdown: bool = False  # the guest does not power off: killed when shutdown's timeout passes
    gate: asyncio.Event | None = None  # launch waits for it first (holds a start inside the VM's lock)
    reached: asyncio.Event = field(default_factory=asyncio.Event)  # set when a launch with this Boot begins
    console: str = "fake firmware\nfake kernel: booting\n"


class FakeVmProcess:
    """A ``VmProcess`` that is only a future of its exit status, plus the links its agent has open."""

    def __init__(self, record: VmmRecord, boot: Boot, heartbeat_s: float) -> None:
        self._record = record
        self.boot = boot
        self.heartbeat_s = heartbeat_s
        self._exit: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self.links: list[FakeGuestLink] = []
        self.events: list[str] = []  # shutdown, kill, pause, resume, detach, in order
        self.tool_calls: list[tuple[str, dict[str, Any]]] = []  # (tool, arguments) of every tools/call

    @property
    def pid(self) -> int:
        return self._record.pid

    @property
    def accel(self) -> str:
        return self._record.accel

    @property
    def record(self) -> VmmRecord:
        return self._record

    @property
    def exit_status(self) -> ExitStatus | None:
        return self._exit.result() if self._exit.done() else None

    def exit(self, code: int) -> None:
        """The VMM ends with ``code`` (negative: that signal); its guest links drop. Idempotent."""
        if self._exit.done():
            return
        self._exit.set_result(ExitStatus(code))
        for link in self.links:
            link.drop(f"the VMM exited ({ExitStatus(code)})")

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    async def connect(self, port: GuestPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise DriverError("a FakeVmProcess has no streams: open its links with connect_fake_guest")

    async def shutdown(self, timeout_s: float) -> ExitStatus:
        self.events.append("shutdown")
        if not self.boot.ignores_shutdown:
            self.exit(0)
        try:
            return await asyncio.wait_for(self.wait(), timeout_s)
        except TimeoutError:
            return await self.kill()

    async def kill(self) -> ExitStatus:
        self.events.append("kill")
        self.exit(-9)
        return await self.wait()

    async def pause(self) -> None:
        self._require_running("pause")
        self.events.append("pause")

    async def resume(self) -> None:
        self._require_running("resume")
        self.events.append("resume")

    async def checkpoint(self, directory: Path) -> None:
        self._require_running("checkpoint")
        self.events.append("checkpoint")
        (directory / "fake.vmstate").write_bytes(f"the state of pid {self.pid}".encode())

    async def detach(self) -> None:
        self.events.append("detach")
        for link in self.links:
            link.drop("nexusd detached")

    def _require_running(self, what: str) -> None:
        if self._exit.done():
            raise DriverError(f"cannot {what}: the VMM exited ({self.exit_status})")


class FakeGuestLink:
    """A ``GuestLink`` to one port of a fake agent; calls are answered in-process, as the agent answers them."""

    def __init__(self, process: FakeVmProcess, port: GuestPort, vm_name: str) -> None:
        self._process = process
        self.port = port
        self._vm_name = vm_name
        self._closed = asyncio.Event()
        self._reason = ""
        self._agent: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def close_reason(self) -> str:
        return self._reason

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = 30.0,
        on_progress: ProgressHandler | None = None,
    ) -> Any:
        self._require_open(method)
        params = params or {}
        if self.port is GuestPort.CONTROL and method.startswith("nexus/"):
            return {}
        if self.port is GuestPort.MCP and method == "initialize":
            return {
                "protocolVersion": MCP_LATEST_PROTOCOL_VERSION,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "fake-agent", "version": "0"},
            }
        if self.port is GuestPort.MCP and method == "tools/list":
            return {"tools": []}
        if self.port is GuestPort.MCP and method == "tools/call":
            self._process.tool_calls.append((str(params.get("name")), dict(params.get("arguments") or {})))
            return {"content": [{"type": "text", "text": "ok"}], "structuredContent": {"ok": True}, "isError": False}
        raise Unavailable(f"VM {self._vm_name}: its agent does not know {method}")

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self._require_open(method)

    async def close(self, reason: str = "closed") -> None:
        self.drop(reason)

    def drop(self, reason: str) -> None:
        if self.closed:
            return
        self._reason = reason
        self._closed.set()
        if self._agent is not None:
            self._agent.cancel()

    def start_agent(self, on_notification: NotificationHandler) -> None:
        """The agent's side of a control link: hello at once, then a heartbeat every ``heartbeat_s``."""
        self._agent = asyncio.get_running_loop().create_task(self._beat(on_notification))

    async def _beat(self, on_notification: NotificationHandler) -> None:
        booted = time.time()
        hello = Hello(agent_version="fake", image_id=None, boot_time=booted, hostname=self._vm_name, pid=1)
        on_notification(HELLO_METHOD, hello.to_params())
        for seq in itertools.count(1):
            await asyncio.sleep(self._process.heartbeat_s)
            on_notification(HEARTBEAT_METHOD, Heartbeat(seq, time.time() - booted).to_params())

    def _require_open(self, method: str) -> None:
        if self.closed:
            raise Unavailable(f"VM {self._vm_name} went away during {method}: {self._reason}")


async def connect_fake_guest(
    process: VmProcess,
    port: GuestPort,
    vm_name: str,
    on_notification: NotificationHandler | None,
    timeout_s: float,
) -> GuestLink:
    """A ``GuestConnector`` for ``FakeVmProcess``es: a link to the fake agent's ``port``."""
    assert isinstance(process, FakeVmProcess), f"connect_fake_guest needs a FakeVmProcess, got {process!r}"
    if process.exit_status is not None:
        raise Unavailable(f"VM {vm_name}: cannot open its {port} port: the VMM exited ({process.exit_status})")
    link = FakeGuestLink(process, port, vm_name)
    process.links.append(link)
    if port is GuestPort.CONTROL and process.boot.says_hello and on_notification is not None:
        link.start_agent(on_notification)
    return link


@dataclass
class FakeVmmDriver:
    """A ``VmmDriver`` whose VMMs are ``FakeVmProcess``es. ``boots`` scripts the next launches in order (then the
    default ``Boot()``); ``adopt_faults`` maps a VM id to what ``adopt`` raises for it (``VmmGone``/``DriverError``)."""

    heartbeat_s: float = 0.1
    boots: list[Boot] = field(default_factory=list)
    adopt_faults: dict[str, BaseException] = field(default_factory=dict)
    processes: dict[str, FakeVmProcess] = field(default_factory=dict)  # the latest process of each VM id
    launched: list[LaunchSpec] = field(default_factory=list)
    forgotten: list[tuple[str, VmmRecord | None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return DRIVER

    @property
    def reason(self) -> str:
        return "a fake VMM for unit tests"

    async def launch(self, spec: LaunchSpec, on_spawn: SpawnHook) -> VmProcess:
        boot = self.boots.pop(0) if self.boots else Boot()
        self.launched.append(spec)
        boot.reached.set()
        if boot.gate is not None:
            await boot.gate.wait()
        if boot.fail_before_spawn is not None:
            raise boot.fail_before_spawn
        spec.console_log.parent.mkdir(parents=True, exist_ok=True)
        spec.console_log.write_text(boot.console)
        pid = next(_pids)
        record = VmmRecord(pid, pid * 7, DRIVER, "none", {"runtime_dir": str(spec.runtime_dir)})
        process = self.processes[spec.vm_id] = FakeVmProcess(record, boot, self.heartbeat_s)
        try:
            on_spawn(record)
            if boot.fail_after_spawn is not None:
                raise boot.fail_after_spawn
        except BaseException:
            await process.kill()  # as a real driver: nothing left behind
            raise
        if boot.exit_during_boot is not None:
            asyncio.get_running_loop().call_soon(process.exit, boot.exit_during_boot)
        return process

    async def adopt(self, vm_id: str, name: str, record: VmmRecord) -> VmProcess:
        if record.driver != DRIVER:
            raise DriverError(f"VM {name}: a {record.driver} VMM, not a fake one")
        fault = self.adopt_faults.get(vm_id)
        if fault is not None:
            raise fault
        process = self.processes[vm_id] = FakeVmProcess(record, Boot(), self.heartbeat_s)
        return process

    def forget(self, vm_id: str, record: VmmRecord | None) -> None:
        self.forgotten.append((vm_id, record))


__all__ = ["DRIVER", "Boot", "FakeGuestLink", "FakeVmProcess", "FakeVmmDriver", "connect_fake_guest"]
