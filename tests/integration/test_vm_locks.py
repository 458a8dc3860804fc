"""One lock per VM: racing requests on the same VM never interleave. Fired 50 times each with random offsets,
rollback/start, resize/start and rm/start either run one after the other or one of them is refused at once
(409); a VMM is never launched on a drive that is then replaced under it, the drive is exactly the snapshot's
after a rollback that said it succeeded, and a removed VM has no VMM left.

The services are nexusd's own (``wire``) on a real SQLite database and real drive files; only the VMM is a
stand-in, which records what its root drive held (inode, bytes, size) at the moment it was launched.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nexus.api import Services
from nexus.daemon.config import Config
from nexus.daemon.wiring import wire
from nexus.domain import (
    Conflict,
    DriverError,
    ExitStatus,
    GuestPort,
    LaunchSpec,
    Layout,
    NotFound,
    SpawnHook,
    VmmGone,
    VmmRecord,
    VmProcess,
    VmSpec,
    VmState,
)
from nexus.store import open_database
from nexus.workspaces import probe_backend
from tests.fakes.firecracker_host import prepare_state

pytestmark = pytest.mark.anyio
ROUNDS = 50
DRIVE_BYTES = 8 * 1024 * 1024


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Launch:
    vm_id: str
    inode: int  # of the root drive file
    digest: str  # of the root drive's bytes
    data_sizes: tuple[int, ...]  # of the data drive files


class StandInProcess:
    """Runs until stopped or killed; its agent never answers (the tests start VMs without waiting)."""

    accel = "none"

    def __init__(self, record: VmmRecord) -> None:
        self.record = record
        self.pid = record.pid
        self._exit: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()

    @property
    def exit_status(self) -> ExitStatus | None:
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    async def connect(self, port: GuestPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise DriverError("no guest here")

    async def shutdown(self, timeout_s: float) -> ExitStatus:
        return await self.kill()

    async def kill(self) -> ExitStatus:
        if not self._exit.done():
            self._exit.set_result(ExitStatus(0))
        return await self.wait()

    async def pause(self) -> None:
        pass

    async def resume(self) -> None:
        pass

    async def checkpoint(self, directory: Path) -> None:
        pass

    async def detach(self) -> None:
        pass


@dataclass
class StandInVmm:
    name: str = "standin"
    reason: str = "a stand-in VMM for the lock tests"
    launches: list[Launch] = field(default_factory=list)
    running: dict[str, StandInProcess] = field(default_factory=dict)

    async def launch(self, spec: LaunchSpec, on_spawn: SpawnHook) -> VmProcess:
        await asyncio.sleep(random.uniform(0, 0.003))  # a launch takes a moment: a window for a racing request
        stat = os.stat(spec.root_drive)
        sizes = tuple(os.stat(d.path).st_size for d in spec.data_drives)
        self.launches.append(Launch(spec.vm_id, stat.st_ino, _digest(spec.root_drive.read_bytes()), sizes))
        record = VmmRecord(pid=10_000 + len(self.launches), start_time=1, driver=self.name, accel="none")
        on_spawn(record)
        process = StandInProcess(record)
        self.running[spec.vm_id] = process
        process._exit.add_done_callback(lambda _: self.running.pop(spec.vm_id, None))
        return process

    async def adopt(self, vm_id: str, name: str, record: VmmRecord) -> VmProcess:
        raise VmmGone("a stand-in is never adopted")

    def forget(self, vm_id: str, record: VmmRecord | None) -> None:
        pass


@pytest.fixture
def world(tmp_path: Path) -> Any:
    state = prepare_state(tmp_path)
    layout = Layout(state_dir=state, runtime_dir=tmp_path / "run")
    conn = open_database(layout.database)
    vmm = StandInVmm()
    services, _ = wire(conn, layout, vmm, vmm.reason, probe_backend(state), Config(network=False))
    yield services, vmm, layout
    conn.close()


async def _race(first: Any, second: Any) -> tuple[Any, Any]:
    """Run both with a random offset between them; each outcome is its result or the error it raised."""

    async def delayed(coro: Any, delay_s: float) -> Any:
        await asyncio.sleep(delay_s)
        return await coro

    offset = random.uniform(0, 0.015)
    a: Any
    b: Any
    a, b = await asyncio.gather(delayed(first, 0), delayed(second, offset), return_exceptions=True)
    for outcome in (a, b):
        if isinstance(outcome, BaseException) and not isinstance(outcome, Conflict | NotFound):
            raise outcome
    return a, b


def _ok(outcome: Any) -> bool:
    return not isinstance(outcome, BaseException)


async def _root_drive(services: Services, layout: Layout, vm_id: str) -> Path:
    await services.vms.start(vm_id, wait=False)  # the root drive is made at the first start
    await services.vms.stop(vm_id)
    root = next(d for d in services.drives.find() if d.vm_id == vm_id)
    return layout.drive_file(root.id)


async def test_rollback_racing_start(world: Any) -> None:
    services, vmm, layout = world
    vm = services.vms.create(_spec("race-rb"))
    disk = await _root_drive(services, layout, vm.id)
    # Drives big enough that restoring one takes a few milliseconds: the window a racing start once fell into.
    snapshot, later = os.urandom(DRIVE_BYTES), os.urandom(DRIVE_BYTES)
    disk.write_bytes(snapshot)
    await services.snapshots.create(vm.id, "s")
    refused = 0
    for _ in range(ROUNDS):
        disk.write_bytes(later)
        rolled, started = await _race(services.snapshots.rollback(vm.id, "s"), services.vms.start(vm.id, wait=False))
        refused += not _ok(rolled) or not _ok(started)
        if _ok(rolled):
            assert _digest(disk.read_bytes()) == _digest(snapshot)  # it said so: the drive is the snapshot's
        if _ok(started):
            launch = vmm.launches[-1]
            assert launch.inode == os.stat(disk).st_ino, "the VMM runs on a drive file that was replaced under it"
            assert launch.digest == _digest(snapshot if _ok(rolled) else later)
            await services.vms.stop(vm.id)
    assert refused, "no round overlapped: the race was never run"


async def test_resize_racing_start(world: Any) -> None:
    services, vmm, layout = world
    vm = services.vms.create(_spec("race-rs"))
    await _root_drive(services, layout, vm.id)
    drive = await services.drives.create("data-rs", size_mib=16)
    services.drives.attach(drive.id, vm.id, "/data")
    refused = 0
    for i in range(ROUNDS):
        size = 17 + i
        resized, started = await _race(services.drives.resize(drive.id, size), services.vms.start(vm.id, wait=False))
        refused += not _ok(resized) or not _ok(started)
        if _ok(resized):
            assert os.stat(layout.drive_file(drive.id)).st_size == size * 1024 * 1024
        if _ok(started):
            # a resize that succeeded came first: the VMM saw the grown file, never one grown under it
            launched = vmm.launches[-1].data_sizes
            assert launched == ((size if _ok(resized) else size - 1) * 1024 * 1024,), (launched, resized)
            await services.vms.stop(vm.id)
            assert services.vms.get(vm.id).state is VmState.STOPPED
        if not _ok(resized):
            await services.drives.resize(drive.id, size)  # the next round grows it by one again
    assert refused


async def test_remove_racing_start(world: Any) -> None:
    services, vmm, _ = world
    refused = 0
    for i in range(ROUNDS):
        vm = services.vms.create(_spec(f"race-rm-{i}"))
        removed, started = await _race(services.vms.remove(vm.id, force=False), services.vms.start(vm.id, wait=False))
        assert _ok(removed) != _ok(started), (removed, started)  # exactly one of them
        refused += 1
        if _ok(removed):
            assert vm.id not in vmm.running, "a removed VM's VMM runs on"
            with pytest.raises(NotFound):
                services.vms.get(vm.id)
        else:
            assert vm.id in vmm.running
            await services.vms.remove(vm.id, force=True)
            assert vm.id not in vmm.running
    assert refused == ROUNDS


def _spec(name: str) -> VmSpec:
    return VmSpec(name=name, network=False)
