"""Snapshot use cases: snapshot a VM's drives together, list, roll back, remove, and clone a VM (from its
current drives or from a snapshot).

A snapshot of a running VM is consistent: the agent syncs and freezes the guest's filesystems (``nexus/freeze``)
just around the copies and thaws them right after, whatever happened (and thaws by itself after a timeout should
nexusd die in between). A rollback replaces each drive's volume by a writable clone of the snapshot's; it needs the
VM stopped, or ``restart`` (stop, roll back, start). Nothing here copies bytes itself: the ``StorageBackend``
does, behind ``DriveService``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from nexus.domain import (
    Conflict,
    Drive,
    DriveKind,
    DriveStore,
    InvalidState,
    Layout,
    NexusError,
    NotFound,
    Snapshot,
    SnapshotDrive,
    SnapshotStore,
    Vm,
    VmSpec,
    VmState,
    VmStore,
    utcnow,
)
from nexus.domain.validation import check_name, referenced
from nexus.protocol import FREEZE_METHOD, THAW_METHOD
from nexus.services.drives import DriveService, new_id, root_drive_name
from nexus.services.locks import VmLocks
from nexus.services.runtime import VmRuntime
from nexus.services.vms import VmService

log = logging.getLogger(__name__)

FREEZE_TIMEOUT_S = 30.0  # the agent thaws by itself after this long


class SnapshotService:
    def __init__(
        self,
        *,
        vms: VmService,
        drives: DriveService,
        vm_store: VmStore,
        drive_store: DriveStore,
        snapshots: SnapshotStore,
        runtime: VmRuntime,
        layout: Layout,
        locks: VmLocks,
    ) -> None:
        self._locks = locks
        self._vms = vms
        self._drives = drives
        self._vm_store = vm_store
        self._drive_store = drive_store
        self._snapshots = snapshots
        self._runtime = runtime
        self._layout = layout

    def find(self, ref: str) -> list[Snapshot]:
        return self._snapshots.find(self._vm_store.get(ref).id)

    def get(self, ref: str, name: str) -> Snapshot:
        return self._snapshots.get(self._vm_store.get(ref).id, name)

    async def create(self, ref: str, name: str | None = None) -> Snapshot:
        vm = self._vm_store.get(ref)
        with self._locks.hold(vm.id, vm.name, "taking a snapshot"):
            return await self._create(self._vm_store.get(vm.id), name)

    async def _create(self, vm: Vm, name: str | None) -> Snapshot:
        name = check_name(name) if name is not None else utcnow().strftime("snap-%Y%m%d-%H%M%S-%f")
        with contextlib.suppress(NotFound):
            self._snapshots.get(vm.id, name)
            raise Conflict(f"VM {vm.name} already has a snapshot named {name!r}")
        drives = self._drive_store.find(vm.id)
        if not drives:
            raise InvalidState(f"VM {vm.name} has no drives yet: its root drive is made at its first start")
        snapshot = Snapshot(
            id=new_id(),
            vm_id=vm.id,
            name=name,
            created_at=utcnow(),
            drives=tuple(SnapshotDrive(d.id, d.name, d.kind, d.mount_path) for d in drives),
        )
        async with self._drives.lock:
            started = time.perf_counter()
            async with self._frozen(vm):
                copy_started = time.perf_counter()
                await asyncio.to_thread(self.copy_drives, snapshot)
                copy_ms = (time.perf_counter() - copy_started) * 1000
            took_ms = (time.perf_counter() - started) * 1000
            try:
                self._snapshots.insert(snapshot)
            except Conflict:
                await asyncio.to_thread(self._drives.delete_snapshot_files, snapshot)
                raise
        log.info(
            "vm %s: snapshot %s of %d drive(s) in %.1f ms (copies %.1f ms, the rest freezing and thawing the guest)",
            vm.name,
            name,
            len(drives),
            took_ms,
            copy_ms,
        )
        return self._snapshots.get(vm.id, name)

    def copy_drives(self, snapshot: Snapshot) -> None:
        """Copy the drives into the snapshot's directory (worker thread); on failure nothing of it is left."""
        directory = self._layout.snapshot_dir(snapshot.id)
        directory.mkdir(parents=True, exist_ok=True)  # a checkpoint's saved state may be in it already
        try:
            for item in snapshot.drives:
                self._drives.backend.clone_volume(
                    self._layout.drive_volume(item.drive_id),
                    self._layout.snapshot_volume(snapshot.id, item.drive_id),
                    readonly=True,
                )
        except BaseException:
            self._drives.delete_snapshot_files(snapshot)
            raise

    async def rollback(self, ref: str, name: str, restart: bool = False) -> Vm:
        vm = self._vm_store.get(ref)
        with self._locks.hold(vm.id, vm.name, "rolling back"):  # held through stop, restore and start
            return await self._rollback(self._vm_store.get(vm.id), name, restart)

    async def _rollback(self, vm: Vm, name: str, restart: bool) -> Vm:
        snapshot = self._snapshots.get(vm.id, name)
        self.check_drives_owned(vm, snapshot)
        running = vm.state.has_process
        if running and not restart:
            raise InvalidState(f"VM {vm.name} is {vm.state}; stop it first, or roll back with restart")
        if running:
            await self._vms.stop(vm.id)
        async with self._drives.lock:
            await asyncio.to_thread(self.restore_drives, snapshot)
        log.info("vm %s: rolled back to snapshot %s", vm.name, name)
        if running:
            return await self._vms.start(vm.id)
        return self._vm_store.get(vm.id)

    def check_drives_owned(self, vm: Vm, snapshot: Snapshot) -> None:
        """Conflict when a data drive of the snapshot has since moved to another VM: it is that VM's now."""
        for item in snapshot.drives:
            owner = self._drive_store.get(item.drive_id).vm_id
            if owner is not None and owner != vm.id:
                other = self._vm_store.get(owner).name
                raise Conflict(f"drive {item.drive_name} is attached to VM {other} now; detach it to roll it back")

    def restore_drives(self, snapshot: Snapshot) -> None:
        """Replace each drive's volume by a writable clone of the snapshot's (worker thread; the VM is stopped)."""
        backend = self._drives.backend
        for item in snapshot.drives:
            volume = self._layout.drive_volume(item.drive_id)
            fresh, old = volume.with_name(f".{volume.name}.rollback"), volume.with_name(f".{volume.name}.old")
            for leftover in (fresh, old):  # of a rollback that was interrupted
                backend.delete_volume(leftover)
            backend.clone_volume(self._layout.snapshot_volume(snapshot.id, item.drive_id), fresh, readonly=False)
            volume.rename(old)
            fresh.rename(volume)
            backend.delete_volume(old)

    async def remove(self, ref: str, name: str) -> None:
        snapshot = self.get(ref, name)
        async with self._drives.lock:
            self._snapshots.delete(snapshot.id)
            await asyncio.to_thread(self._drives.delete_snapshot_files, snapshot)

    async def clone(self, ref: str, new_name: str, snapshot_name: str | None = None) -> Vm:
        """A new VM with the same spec and copies of the drives (root, and data drives as ``<new>-<drive>``),
        as they are now or as snapshot ``snapshot_name`` holds them. The clone is created, not started."""
        vm = self._vm_store.get(ref)
        check_name(new_name)
        snapshot = referenced(lambda: self._snapshots.get(vm.id, snapshot_name)) if snapshot_name is not None else None
        if snapshot is not None:
            sources = [
                (self._drive_store.get(d.drive_id), d.mount_path, self._layout.snapshot_volume(snapshot.id, d.drive_id))
                for d in snapshot.drives
            ]
        else:
            sources = [(d, d.mount_path, self._layout.drive_volume(d.id)) for d in self._drive_store.find(vm.id)]
        copies = [(self._copy_of(new_name, drive, mount), volume) for drive, mount, volume in sources]
        for copy, _ in copies:
            with contextlib.suppress(NotFound):
                self._drive_store.get(copy.name)
                raise Conflict(f"a drive named {copy.name!r} already exists (the clone's copy of a data drive)")
        spec = VmSpec(
            name=new_name,
            role=vm.role,
            vcpus=vm.vcpus,
            mem_mib=vm.mem_mib,
            image=vm.image,
            kernel=vm.kernel,
            tags=vm.tags,
            network=vm.network,  # a fork resumes the source's memory: its devices must be the same
            egress=vm.egress,
            allow=self._vm_store.allow_list(vm.id),
        )
        clone = self._vms.create(spec)
        try:
            async with self._drives.lock:
                live = snapshot is None and bool(copies)
                with self._locks.hold(vm.id, vm.name, "being cloned"):
                    async with self._frozen(self._vm_store.get(vm.id)) if live else contextlib.nullcontext():
                        await asyncio.to_thread(self._clone_volumes, copies)
                for copy, _ in copies:
                    self._drive_store.insert(dataclasses.replace(copy, vm_id=clone.id))
        except BaseException:
            for copy, _ in copies:  # rows first (a data drive's row would outlive the VM), then the VM, then files
                self._drive_store.delete(copy.id)
            await self._vms.remove(clone.id, force=True)
            await asyncio.to_thread(self._delete_volumes, [copy for copy, _ in copies])
            raise
        log.info("vm %s: cloned to %s%s", vm.name, new_name, f" from snapshot {snapshot_name}" if snapshot else "")
        return self._vm_store.get(clone.id)

    @staticmethod
    def _copy_of(new_name: str, drive: Drive, mount_path: str | None) -> Drive:
        name = root_drive_name(new_name) if drive.kind is DriveKind.ROOT else f"{new_name}-{drive.name}"[:63]
        return Drive(
            id=new_id(),
            name=name,
            kind=drive.kind,
            size_mib=drive.size_mib,
            created_at=utcnow(),
            mount_path=mount_path,
            image=drive.image,
        )

    def _clone_volumes(self, copies: list[tuple[Drive, Path]]) -> None:
        made: list[Drive] = []
        try:
            for copy, source in copies:
                self._drives.clone_drive(source, copy)
                made.append(copy)
        except BaseException:
            self._delete_volumes(made)
            raise

    def _delete_volumes(self, drives: list[Drive]) -> None:
        for drive in drives:
            self._drives.backend.delete_volume(self._layout.drive_volume(drive.id))

    @contextlib.asynccontextmanager
    async def _frozen(self, vm: Vm) -> AsyncIterator[None]:
        """Around a copy of ``vm``'s drives: nothing for a VM without a process, freeze/thaw for a ready one."""
        vm = self._vm_store.get(vm.id)
        if not vm.state.has_process:
            yield
            return
        if vm.state is not VmState.READY:
            raise InvalidState(f"VM {vm.name} is {vm.state}; a running VM is copied only while ready")
        await self._runtime.agent_request(vm.id, FREEZE_METHOD, {"timeout_s": FREEZE_TIMEOUT_S}, FREEZE_TIMEOUT_S)
        try:
            yield
        finally:
            try:
                await self._runtime.agent_request(vm.id, THAW_METHOD, {}, FREEZE_TIMEOUT_S)
            except NexusError as exc:  # the agent thaws by itself after FREEZE_TIMEOUT_S
                log.warning("vm %s: thaw failed (the agent thaws by itself): %s", vm.name, exc.message)
