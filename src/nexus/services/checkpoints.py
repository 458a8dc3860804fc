"""Checkpoints: a running VM's memory and device state saved together with its drives, and restoring a VM to one -
running again from that moment, its processes, open files and guest links carrying on.

A checkpoint is a snapshot (the same drive copies, listed with the VM's snapshots) that also holds the VMM's saved
state. Taking one pauses the guest, has the VMM write its state, copies the drives while the guest is still paused
(so the two agree without freezing any filesystem: the page cache is in the saved memory) and resumes it. Restoring
checks first - the VM's shape against what the state was saved from, the state file against its digest - and only
then kills whatever runs in the VM (its state is being thrown away), puts the checkpoint's drives back and launches
the VMM from the saved state. The guest's clock is set right when its agent says hello (``nexus/identity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from pathlib import Path

from nexus.domain import (
    Conflict,
    DriveStore,
    InvalidState,
    Layout,
    NotFound,
    SavedState,
    Snapshot,
    SnapshotDrive,
    SnapshotStore,
    Vm,
    VmStore,
    utcnow,
)
from nexus.domain.validation import check_name
from nexus.services.drives import DriveService, new_id
from nexus.services.locks import VmLocks
from nexus.services.runtime import VmRuntime
from nexus.services.snapshots import SnapshotService
from nexus.services.vms import KERNEL_KEY, Resume, VmService

log = logging.getLogger(__name__)

STATE_FILES_DIGEST_CHUNK = 1024 * 1024


def digest_state(directory: Path) -> tuple[int, str]:
    """Total size and SHA-256 of the driver's state files (in name order), read in a worker thread."""
    digest = hashlib.sha256()
    size = 0
    for path in sorted(directory.iterdir()):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(STATE_FILES_DIGEST_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    return size, digest.hexdigest()


class CheckpointService:
    def __init__(
        self,
        *,
        vms: VmService,
        snapshots: SnapshotService,
        drives: DriveService,
        drive_store: DriveStore,
        vm_store: VmStore,
        snapshot_store: SnapshotStore,
        runtime: VmRuntime,
        layout: Layout,
        locks: VmLocks,
    ) -> None:
        self._vms = vms
        self._snapshots = snapshots
        self._drives = drives
        self._drive_store = drive_store
        self._vm_store = vm_store
        self._snapshot_store = snapshot_store
        self._runtime = runtime
        self._layout = layout
        self._locks = locks

    async def create(self, ref: str, name: str | None = None) -> Snapshot:
        vm = self._vm_store.get(ref)
        with self._locks.hold(vm.id, vm.name, "taking a checkpoint"):
            return await self._create(self._vm_store.get(vm.id), name)

    async def _create(self, vm: Vm, name: str | None) -> Snapshot:
        name = check_name(name) if name is not None else utcnow().strftime("ckpt-%Y%m%d-%H%M%S-%f")
        with contextlib.suppress(NotFound):
            self._snapshot_store.get(vm.id, name)
            raise Conflict(f"VM {vm.name} already has a snapshot named {name!r}")
        record = self._vm_store.runtime_record(vm.id)
        if not self._runtime.is_running(vm.id) or record is None:
            raise InvalidState(f"VM {vm.name} is {vm.state}; only a running VM has a memory to checkpoint")
        if KERNEL_KEY not in record.detail:
            raise InvalidState(f"VM {vm.name} was started by an older nexusd; restart it to checkpoint it")
        drives = self._drives_of(vm)
        snapshot_id = new_id()
        state_dir = self._layout.snapshot_state_dir(snapshot_id)
        snapshot = Snapshot(id=snapshot_id, vm_id=vm.id, name=name, created_at=utcnow(), drives=drives)
        started = time.perf_counter()
        try:
            state_dir.mkdir(parents=True)
            async with self._drives.lock:
                was_ready = await self._runtime.save_state(vm.id, state_dir, f"checkpoint {name}")
                saved = time.perf_counter()
                try:
                    await asyncio.to_thread(self._snapshots.copy_drives, snapshot)
                finally:
                    if was_ready:
                        await self._runtime.resume(vm.id, f"checkpoint {name} taken")
            paused_s = time.perf_counter() - started
            size, sha256 = await asyncio.to_thread(digest_state, state_dir)
            state = SavedState(
                vmm=record.driver,
                accel=record.accel,
                kernel=record.detail[KERNEL_KEY],
                vcpus=vm.vcpus,
                mem_mib=vm.mem_mib,
                size_bytes=size,
                sha256=sha256,
            )
            self._snapshot_store.insert(dataclasses.replace(snapshot, state=state))
        except BaseException:
            await asyncio.to_thread(self._drives.delete_snapshot_files, snapshot)
            raise
        log.info(
            "vm %s: checkpoint %s (%d MiB of state) in %.2f s, the guest paused %.2f s (state saved in %.2f s)",
            vm.name,
            name,
            size // 2**20,
            time.perf_counter() - started,
            paused_s,
            saved - started,
        )
        return self._snapshot_store.get(vm.id, name)

    def _drives_of(self, vm: Vm) -> tuple[SnapshotDrive, ...]:
        drives = self._drive_store.find(vm.id)
        return tuple(SnapshotDrive(d.id, d.name, d.kind, d.mount_path) for d in drives)

    async def restore(self, ref: str, name: str, reason: str | None = None) -> Vm:
        """``reason`` for the history (default: "restoring checkpoint NAME")."""
        vm = self._vm_store.get(ref)
        with self._locks.hold(vm.id, vm.name, "restoring a checkpoint"):
            return await self._restore(self._vm_store.get(vm.id), name, reason or f"restoring checkpoint {name}")

    async def _restore(self, vm: Vm, name: str, reason: str) -> Vm:
        snapshot = self._snapshot_store.get(vm.id, name)
        state = snapshot.state
        if state is None:
            raise InvalidState(f"snapshot {name} of VM {vm.name} holds drives only, no memory; roll back to it instead")
        self._snapshots.check_drives_owned(vm, snapshot)
        state_dir = self._layout.snapshot_state_dir(snapshot.id)
        await asyncio.to_thread(self._verify, vm, name, state_dir, state)
        resume = Resume(state_dir, state, reason)
        await self._vms.check_resume(vm, resume)
        if vm.state.has_process:
            await self._vms.stop(vm.id, kill=True, reason=f"{resume.reason}: what ran is thrown away")
        async with self._drives.lock:
            await asyncio.to_thread(self._snapshots.restore_drives, snapshot)
        vm = await self._vms.start(vm.id, resume=resume)
        log.info("vm %s: restored checkpoint %s", vm.name, name)
        return vm

    async def fork(self, ref: str, new_name: str, checkpoint: str | None = None) -> Vm:
        """A new VM running on from a checkpoint of ``ref`` (one taken now when none is named, and removed once the
        fork runs), with copies of the checkpoint's drives and an identity of its own; both VMs run on."""
        vm = self._vm_store.get(ref)
        check_name(new_name)
        with contextlib.suppress(NotFound):
            self._vm_store.get(new_name)
            raise Conflict(f"a VM named {new_name!r} already exists")
        if checkpoint is None:
            snapshot = await self.create(vm.id, utcnow().strftime(f"fork-{new_name}-%Y%m%d-%H%M%S")[:63])
        else:
            snapshot = self._snapshot_store.get(vm.id, checkpoint)
        try:
            state = snapshot.state
            if state is None:
                raise InvalidState(f"snapshot {snapshot.name} of VM {vm.name} holds no memory; clone it instead")
            state_dir = self._layout.snapshot_state_dir(snapshot.id)
            await asyncio.to_thread(self._verify, vm, snapshot.name, state_dir, state)
            fork = await self._snapshots.clone(vm.id, new_name, snapshot.name)
            try:
                resume = Resume(state_dir, state, f"forked from {vm.name} at checkpoint {snapshot.name}")
                fork = await self._vms.start(fork.id, resume=resume)
            except BaseException:
                await self._vms.remove(fork.id, force=True)
                raise
        finally:
            if checkpoint is None:
                await self._snapshots.remove(vm.id, snapshot.name)
        log.info("vm %s: forked to %s at checkpoint %s", vm.name, new_name, snapshot.name)
        return fork

    @staticmethod
    def _verify(vm: Vm, name: str, state_dir: Path, state: SavedState) -> None:
        """Conflict when the saved state is missing or damaged (worker thread)."""
        what = f"checkpoint {name} of VM {vm.name}"
        try:
            size, sha256 = digest_state(state_dir)
        except OSError as exc:
            raise Conflict(f"{what} is damaged: its saved state cannot be read ({exc.strerror or exc})") from exc
        if (size, sha256) != (state.size_bytes, state.sha256):
            raise Conflict(f"{what} is damaged: its saved state does not match its digest; the VM was left as it was")
