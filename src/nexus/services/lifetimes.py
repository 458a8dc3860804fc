"""VMs that end or sleep on their own: expiry (``ttl_s`` after creation: stopped, or removed) and idle suspend (a
ready VM unused for ``idle_suspend_s`` is checkpointed and its VMM stopped, freeing its memory; the next tool call,
command, file or process request - or a start - resumes it where it was, transparently).

"Used" is what reaches the guest through ``GuestService`` (REST, MCP, the portal gateway, the CLI all do): it
calls ``touch`` on each use and ``wake`` before it, so a call to a suspended VM waits for the resume and then runs.
A VM's idle time counts from the last use seen by this nexusd, or from when it saw the VM ready (a restarted
nexusd does not know older uses). One task checks every ``TICK_S``; a VM busy with something else (its lock
taken) is looked at again on the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nexus.domain import ExpiryAction, NexusError, NotFound, Vm, VmFilter, VmState, VmStore, utcnow
from nexus.services.checkpoints import CheckpointService
from nexus.services.snapshots import SnapshotService
from nexus.services.vms import VmService

log = logging.getLogger(__name__)

SUSPEND_CHECKPOINT = "idle-suspend"
TICK_S = 1.0


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class LifetimeService:
    def __init__(
        self,
        *,
        vms: VmService,
        checkpoints: CheckpointService,
        snapshots: SnapshotService,
        vm_store: VmStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._vms = vms
        self._checkpoints = checkpoints
        self._snapshots = snapshots
        self._vm_store = vm_store
        self._clock = clock
        self._used: dict[str, float] = {}
        self._waking: dict[str, asyncio.Lock] = {}

    def touch(self, vm_id: str) -> None:
        self._used[vm_id] = self._clock()

    async def wake(self, vm_id: str) -> None:
        """Resume a suspended VM (and wait until it is ready); nothing for any other. Concurrent uses of one
        suspended VM wait for the same resume."""
        lock = self._waking.setdefault(vm_id, asyncio.Lock())
        async with lock:
            vm = self._vm_store.get(vm_id)
            if not vm.suspended or vm.state.has_process:
                return
            try:
                await self._checkpoints.restore(vm.id, SUSPEND_CHECKPOINT, reason="resumed from idle suspend")
            except NotFound:  # its suspend checkpoint was removed by hand: what ran is gone, so it boots afresh
                self._vm_store.set_suspended(vm.id, False)
                log.warning("vm %s: its suspend checkpoint is gone; booting it instead", vm.name)
                await self._vms.start(vm.id)
                return
            self._vm_store.set_suspended(vm.id, False)
            await self._drop_suspend_checkpoint(vm)
            self.touch(vm.id)
            log.info("vm %s: resumed from idle suspend", vm.name)

    async def run(self) -> None:
        """Check every VM each ``TICK_S`` until cancelled."""
        while True:
            await self.tick()
            await asyncio.sleep(TICK_S)

    async def tick(self) -> None:
        now = self._clock()
        for vm in self._vm_store.find(VmFilter(include_pool=True)):
            try:
                expires = vm.expires_at
                if expires is not None and utcnow() >= expires:
                    await self._expire(vm)
                elif vm.lifetime.idle_suspend_s is not None and vm.state is VmState.READY:
                    if now - self._used.setdefault(vm.id, now) >= vm.lifetime.idle_suspend_s:
                        await self._suspend(vm, vm.lifetime.idle_suspend_s)
                else:
                    self._used.pop(vm.id, None)  # not ready: its idle time starts over when it is
            except NexusError as exc:  # busy with something else, or gone meanwhile: next tick
                log.info("vm %s: lifetime check deferred: %s", vm.name, exc.message)
            except Exception:
                log.exception("vm %s: lifetime check failed", vm.name)

    async def _suspend(self, vm: Vm, idle_s: int) -> None:
        await self._drop_suspend_checkpoint(vm)
        deciding = self._clock()
        await self._checkpoints.create(vm.id, SUSPEND_CHECKPOINT)
        if self._used.get(vm.id, deciding) > deciding:  # used while the checkpoint was taken: it is not idle
            await self._drop_suspend_checkpoint(vm)
            return
        await self._vms.stop(vm.id, kill=True, reason=f"suspended: unused for {_span(idle_s)}; its next use resumes it")
        self._vm_store.set_suspended(vm.id, True)
        self._used.pop(vm.id, None)
        log.info("vm %s: suspended after %s unused", vm.name, _span(idle_s))

    async def _expire(self, vm: Vm) -> None:
        ttl = vm.lifetime.ttl_s or 0
        if vm.lifetime.on_expiry is ExpiryAction.REMOVE:
            await self._vms.remove(vm.id, force=True)
            log.info("vm %s: removed: its ttl of %s is over", vm.name, _span(ttl))
            return
        if vm.state.has_process:
            await self._vms.stop(vm.id, reason=f"expired: its ttl of {_span(ttl)} is over")
        if vm.suspended:
            self._vm_store.set_suspended(vm.id, False)
            await self._drop_suspend_checkpoint(vm)

    async def _drop_suspend_checkpoint(self, vm: Vm) -> None:
        with contextlib.suppress(NotFound):
            await self._snapshots.remove(vm.id, SUSPEND_CHECKPOINT)
