"""Warm pools: per template, nexusd keeps ``size`` VMs booted and ready; a plain request for exactly that shape
claims one (renamed, tagged, told its new host name) instead of booting, and the pool refills in the background.

Pool VMs are ordinary VMs marked with their template (``Vm.pool``), hidden from users' lists until claimed. One
task reconciles every ``TICK_S`` (and at once after a ``set`` or a claim): it boots what is missing (at most
``BOOTS_AT_ONCE`` at a time, all pools together), removes what is surplus, of an old shape or dead, and backs a
template off after a failed boot, so a broken image cannot keep the host busy booting it.

A claim takes the VM's lock without waiting and moves it out of the pool in one conditional store update, with no
await between choosing the VM and taking it: two claims never get one VM, and the reconciler (which removes a pool
VM only under its lock, after checking it is still in the pool) never removes a claimed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

from nexus.domain import (
    Conflict,
    Invalid,
    Lifetime,
    NexusError,
    PoolStatus,
    PoolStore,
    PoolTemplate,
    Role,
    Vm,
    VmFilter,
    VmSpec,
    VmState,
    VmStore,
)
from nexus.domain.egress import EgressMode
from nexus.domain.validation import POOL_SIZE_RANGE, check_name, check_range
from nexus.services.drives import root_drive_name
from nexus.services.identity import IdentityService
from nexus.services.locks import VmLocks
from nexus.services.runtime import VmRuntime
from nexus.services.vms import VmService

log = logging.getLogger(__name__)

TICK_S = 1.0
BOOTS_AT_ONCE = 2  # pool VMs booting at once, all pools together: refilling must not starve users' boots
BACKOFF_S = (5.0, 15.0, 60.0, 300.0)  # before a template's next boot after 1, 2, 3, 4+ failures in a row
REMOVE_WAIT_S = 60.0  # for its VMs to go, when something else holds one
TEMPLATE_NAME_MAX = 40  # its VMs are named pool-<template>-<6 hex>, within a VM name's 63


def shape(vm: Vm) -> tuple[object, ...]:
    return (vm.image, vm.kernel, vm.vcpus, vm.mem_mib, vm.network, vm.egress)


def template_shape(t: PoolTemplate) -> tuple[object, ...]:
    return (t.image, t.kernel, t.vcpus, t.mem_mib, t.network, t.egress)


def is_plain(spec: VmSpec) -> bool:
    """Only a request a pool VM can stand in for exactly: a work VM of the host's, with no published ports, no
    allow-list, no lifetime and not itself a pool VM (its shape is compared separately)."""
    return (
        spec.role is Role.WORK
        and spec.created_by is None
        and not spec.publish
        and not spec.allow
        and spec.lifetime == Lifetime()
        and spec.pool is None
    )


class PoolService:
    def __init__(
        self,
        *,
        store: PoolStore,
        vms: VmService,
        vm_store: VmStore,
        runtime: VmRuntime,
        identity: IdentityService,
        locks: VmLocks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._vms = vms
        self._vm_store = vm_store
        self._runtime = runtime
        self._identity = identity
        self._locks = locks
        self._clock = clock
        self._booting: dict[str, asyncio.Task[None]] = {}  # by VM id
        self._failures: dict[str, int] = {}  # by template: failed boots in a row
        self._retry_at: dict[str, float] = {}
        self._problem: dict[str, str] = {}  # by template: its last failure, until a boot succeeds
        self._wake = asyncio.Event()

    # -- templates ------------------------------------------------------------------------------------------

    def set(
        self,
        name: str,
        size: int,
        *,
        image: str | None = None,
        vcpus: int | None = None,
        mem_mib: int | None = None,
        network: bool | None = None,
        egress: EgressMode | None = None,
    ) -> PoolStatus:
        """Make or replace template ``name``, its defaults resolved now (a later change of the default settings
        does not change it). VMs of an old shape are replaced."""
        check_name(name)
        if len(name) > TEMPLATE_NAME_MAX:
            raise Invalid(f"pool name {name!r} is too long: at most {TEMPLATE_NAME_MAX} characters")
        check_range("size", size, POOL_SIZE_RANGE)
        vm = self._vms.resolve(
            VmSpec(name=_vm_name(name), image=image, vcpus=vcpus, mem_mib=mem_mib, network=network, egress=egress)
        )
        template = PoolTemplate(name, vm.image, vm.kernel, vm.vcpus, vm.mem_mib, vm.network, vm.egress, size)
        self._store.put(template)
        self._forget_failures(name)
        self._wake.set()
        log.info("pool %s: %d x %s", name, size, template_shape(template))
        return self._status(template, self._members())

    def get(self, name: str) -> PoolStatus:
        return self._status(self._store.get(name), self._members())

    def all(self) -> list[PoolStatus]:
        members = self._members()
        return [self._status(t, members) for t in self._store.all()]

    async def remove(self, name: str) -> None:
        """Drop template ``name`` and its idle VMs (claimed ones are users' and stay)."""
        self._store.get(name)
        self._store.delete(name)
        deadline = self._clock() + REMOVE_WAIT_S
        while left := [vm for vm in self._members() if vm.pool == name]:
            if self._clock() >= deadline:  # the reconciler removes the rest (a pool VM of no pool)
                log.warning("pool %s removed; %d of its VMs still busy", name, len(left))
                return
            for vm in left:
                await self._discard(vm, "its pool was removed")  # one busy (the reconciler's) is tried again
            await asyncio.sleep(0.1)
        log.info("pool %s removed", name)

    # -- claims ---------------------------------------------------------------------------------------------

    async def claim_or_create(self, spec: VmSpec) -> Vm:
        """A ready pool VM for ``spec`` when one matches it exactly (returned ready), else a new VM (created, not
        started) - what ``vm run`` asks for."""
        vm = await self.claim(spec)
        return vm if vm is not None else self._vms.create(spec)

    async def claim(self, spec: VmSpec) -> Vm | None:
        if not is_plain(spec):
            return None
        want = self._vms.resolve(spec)  # Invalid as create would say it
        template = next((t for t in self._store.all() if template_shape(t) == shape(want)), None)
        if template is None:
            return None
        reason = f"claimed from pool {template.name} as {spec.name}"
        for vm in self._members():
            if vm.pool != template.name or vm.state is not VmState.READY or shape(vm) != shape(want):
                continue
            try:
                with self._locks.hold(vm.id, vm.name, "being claimed"):
                    taken = self._vm_store.claim(
                        vm.id, template.name, spec.name, root_drive_name(spec.name), want.tags, reason
                    )
            except Conflict:
                if self._locks.busy(vm.id) is None:
                    raise  # the name is taken: as create would refuse it
                continue  # busy (being removed, checkpointed): the next one
            if not taken:
                continue
            self._wake.set()  # refill
            await self._tell_name(vm.id, spec.name)
            log.info("pool %s: %s claimed as %s", template.name, vm.name, spec.name)
            return self._vm_store.get(vm.id)
        return None

    async def _tell_name(self, vm_id: str, name: str) -> None:
        """The guest's host name is its VM's: say the new one (the rest of its identity stays as it was)."""
        try:
            self._runtime.rename(vm_id, name)
            await self._identity.configure_guest(vm_id, self._runtime.links(vm_id))
        except NexusError as exc:  # it is the user's VM now, running; its next ready says the name again
            log.warning("vm %s: claimed, but its agent was not told its new name: %s", name, exc.message)

    # -- the reconciler -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep every pool at its size until cancelled; in-flight boots are cancelled with it."""
        try:
            while True:
                self._wake.clear()  # before the tick: a set or claim during it brings the next one at once
                try:
                    await self.tick()
                except Exception:
                    log.exception("pool reconcile failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK_S)
        finally:
            tasks = list(self._booting.values())
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)

    async def tick(self) -> None:
        templates = {t.name: t for t in self._store.all()}
        members = self._members()
        for vm in members:
            template = templates.get(vm.pool or "")
            if vm.id in self._booting:
                continue
            if template is None or shape(vm) != template_shape(template):
                await self._discard(vm, "its pool changed")
            elif not vm.state.has_process:  # failed, crashed or stopped: replaced, after a pause
                self._failed(template.name, f"{vm.name}: {self._vm_store.history(vm.id)[-1].reason}")
                await self._discard(vm, f"it is {vm.state}")
        members = self._members()
        for template in templates.values():
            mine = [vm for vm in members if vm.pool == template.name]
            surplus = len(mine) - template.size
            for vm in [vm for vm in reversed(mine) if vm.id not in self._booting][: max(surplus, 0)]:
                await self._discard(vm, "its pool shrank")
            while (
                len(mine) < template.size
                and len(self._booting) < BOOTS_AT_ONCE
                and self._clock() >= self._retry_at.get(template.name, 0.0)
            ):
                mine.append(self._boot(template))

    def _boot(self, template: PoolTemplate) -> Vm:
        vm = self._vms.create(
            VmSpec(
                name=_vm_name(template.name),
                image=template.image,
                kernel=template.kernel,
                vcpus=template.vcpus,
                mem_mib=template.mem_mib,
                network=template.network,
                egress=template.egress,
                pool=template.name,
            )
        )
        task = asyncio.create_task(self._start(template.name, vm), name=f"pool-boot-{vm.name}")
        self._booting[vm.id] = task
        task.add_done_callback(lambda _: self._booting.pop(vm.id, None))
        return vm

    async def _start(self, template: str, vm: Vm) -> None:
        try:
            await self._vms.start(vm.id, wait=True)
        except NexusError as exc:  # the next tick finds it failed, backs off and replaces it
            log.warning("pool %s: %s did not boot: %s", template, vm.name, exc.message)
            return
        self._forget_failures(template)
        log.info("pool %s: %s ready", template, vm.name)

    def _forget_failures(self, template: str) -> None:
        for failures in (self._failures, self._retry_at, self._problem):
            failures.pop(template, None)

    def _failed(self, template: str, why: str) -> None:
        self._problem[template] = why
        failures = self._failures[template] = self._failures.get(template, 0) + 1
        pause = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
        self._retry_at[template] = self._clock() + pause
        log.warning("pool %s: %s; next boot in %.0fs", template, why, pause)

    async def _discard(self, vm: Vm, why: str) -> None:
        """Remove a pool VM, unless a claim took it meanwhile or it is busy (then the next tick looks again)."""
        try:
            with self._locks.hold(vm.id, vm.name, "leaving its pool"):
                if self._vm_store.get(vm.id).pool != vm.pool:
                    return
                await self._vms.remove(vm.id, force=True)
        except NexusError as exc:
            log.info("pool %s: %s not removed yet: %s", vm.pool, vm.name, exc.message)
            return
        log.info("pool %s: %s removed: %s", vm.pool, vm.name, why)

    def _members(self) -> list[Vm]:
        return [vm for vm in self._vm_store.find(VmFilter(include_pool=True)) if vm.pool is not None]

    def _status(self, template: PoolTemplate, members: list[Vm]) -> PoolStatus:
        mine = [vm for vm in members if vm.pool == template.name]
        ready = sum(1 for vm in mine if vm.state is VmState.READY)
        booting = sum(
            1 for vm in mine if vm.state is not VmState.READY and (vm.state.has_process or vm.id in self._booting)
        )
        return PoolStatus(template, ready, booting, self._problem.get(template.name))


def _vm_name(template: str) -> str:
    return f"pool-{template}-{secrets.token_hex(3)}"
