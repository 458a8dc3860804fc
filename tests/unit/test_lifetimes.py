"""Expiry and idle suspend decide from a real store and a fake clock; the services they call are stand-ins that
record the calls (the real ones are exercised with real VMs in tests/e2e/test_checkpoint_e2e.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from nexus.domain import ExpiryAction, Lifetime, NotFound, Role, Vm, VmState, utcnow
from nexus.services.lifetimes import SUSPEND_CHECKPOINT, LifetimeService
from nexus.store import VmRepo, open_database


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Calls:
    """What the lifetime service asked of the VM, checkpoint and snapshot services."""

    log: list[tuple[str, str]] = field(default_factory=list)
    store: VmRepo | None = None
    missing_checkpoint: bool = False
    on_checkpoint: Any = None

    async def stop(self, ref: str, kill: bool = False, reason: str = "") -> None:
        self.log.append(("stop-kill" if kill else "stop", reason))
        assert self.store is not None
        vm = self.store.get(ref)
        self.store.set_state(vm.id, vm.state, VmState.STOPPED, reason)

    async def remove(self, ref: str, force: bool) -> None:
        self.log.append(("rm", ref))
        assert self.store is not None
        self.store.delete(self.store.get(ref).id)

    async def start(self, ref: str) -> None:
        self.log.append(("start", ref))

    async def create(self, ref: str, name: str) -> None:
        self.log.append(("checkpoint", name))
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    async def restore(self, ref: str, name: str, reason: str | None = None) -> None:
        if self.missing_checkpoint:
            raise NotFound(f"the VM has no snapshot named {name!r}")
        self.log.append(("restore", reason or name))

    async def remove_snapshot(self, ref: str, name: str) -> None:
        self.log.append(("drop", name))


class Snapshots:
    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    async def remove(self, ref: str, name: str) -> None:
        await self._calls.remove_snapshot(ref, name)


def _world(tmp_path: Path) -> tuple[LifetimeService, VmRepo, Calls, Clock]:
    store = VmRepo(open_database(tmp_path / "nexus.db"))
    calls, clock = Calls(store=store), Clock()
    service = LifetimeService(
        vms=calls,  # type: ignore[arg-type]
        checkpoints=calls,  # type: ignore[arg-type]
        snapshots=Snapshots(calls),  # type: ignore[arg-type]
        vm_store=store,
        clock=clock,
    )
    return service, store, calls, clock


def _vm(store: VmRepo, name: str, lifetime: Lifetime, state: VmState, age_s: float = 0) -> Vm:
    created = utcnow() - timedelta(seconds=age_s)
    vm = Vm(
        id=f"{name:0>12}"[-12:],
        name=name,
        role=Role.WORK,
        vcpus=1,
        mem_mib=256,
        image="img",
        kernel="k",
        state=VmState.CREATED,
        created_at=created,
        updated_at=created,
        lifetime=lifetime,
    )
    store.insert(vm, "created")
    if state is not VmState.CREATED:
        store.set_state(vm.id, VmState.CREATED, state, "test")
    return replace(vm, state=state)


def test_an_idle_vm_is_suspended_once_its_idle_time_is_over_and_a_use_puts_that_off(tmp_path: Path) -> None:
    service, store, calls, clock = _world(tmp_path)
    vm = _vm(store, "idle", Lifetime(idle_suspend_s=60), VmState.READY)

    async def scenario() -> None:
        await service.tick()  # first seen ready: idle from now
        clock.now += 59
        await service.tick()
        assert calls.log == []
        service.touch(vm.id)  # a use: the idle time starts over
        clock.now += 59
        await service.tick()
        assert calls.log == []
        clock.now += 1
        await service.tick()
        assert [c[0] for c in calls.log] == ["drop", "checkpoint", "stop-kill"]
        assert calls.log[2][1] == "suspended: unused for 1m; its next use resumes it"
        assert store.get(vm.id).suspended

    asyncio.run(scenario())


def test_a_use_while_the_checkpoint_is_taken_keeps_the_vm_running(tmp_path: Path) -> None:
    service, store, calls, clock = _world(tmp_path)
    vm = _vm(store, "busy", Lifetime(idle_suspend_s=10), VmState.READY)

    def used_meanwhile() -> None:
        clock.now += 0.5
        service.touch(vm.id)

    calls.on_checkpoint = used_meanwhile

    async def scenario() -> None:
        await service.tick()
        clock.now += 10
        await service.tick()
        assert [c[0] for c in calls.log] == ["drop", "checkpoint", "drop"]  # taken, then thrown away
        assert store.get(vm.id).state is VmState.READY and not store.get(vm.id).suspended

    asyncio.run(scenario())


def test_wake_resumes_a_suspended_vm_and_boots_one_whose_checkpoint_is_gone(tmp_path: Path) -> None:
    service, store, calls, _ = _world(tmp_path)
    vm = _vm(store, "asleep", Lifetime(idle_suspend_s=10), VmState.STOPPED)
    store.set_suspended(vm.id, True)

    async def scenario() -> None:
        await service.wake(vm.id)
        assert calls.log == [("restore", "resumed from idle suspend"), ("drop", SUSPEND_CHECKPOINT)]
        assert not store.get(vm.id).suspended
        await service.wake(vm.id)  # not suspended any more: nothing
        assert len(calls.log) == 2

        store.set_suspended(vm.id, True)
        calls.missing_checkpoint, calls.log = True, []
        await service.wake(vm.id)
        assert calls.log == [("start", vm.id)] and not store.get(vm.id).suspended

    asyncio.run(scenario())


def test_expiry_stops_or_removes_and_leaves_others_alone(tmp_path: Path) -> None:
    service, store, calls, _ = _world(tmp_path)
    stop = _vm(store, "ttl-stop", Lifetime(ttl_s=60), VmState.READY, age_s=61)
    gone = _vm(store, "ttl-rm", Lifetime(ttl_s=60, on_expiry=ExpiryAction.REMOVE), VmState.STOPPED, age_s=61)
    young = _vm(store, "ttl-young", Lifetime(ttl_s=60), VmState.READY, age_s=30)

    async def scenario() -> None:
        await service.tick()
        assert ("stop", "expired: its ttl of 1m is over") in calls.log and ("rm", gone.id) in calls.log
        assert store.get(stop.id).state is VmState.STOPPED and store.get(young.id).state is VmState.READY
        calls.log = []
        await service.tick()  # expired and stopped already: nothing more
        assert calls.log == []

    asyncio.run(scenario())
