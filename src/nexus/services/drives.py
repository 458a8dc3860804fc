"""Drive use cases: create (from an image, or empty and formatted ext4), list, attach, detach, grow, remove;
and what the VM lifecycle needs of drives (the drives a VM boots with; dropping a removed VM's workspace).

Every drive lives in a volume of its own (``Layout.drive_volume``) made by the ``StorageBackend``. Removals
check every reference first and refuse (Conflict) before anything is touched; rows go before files, so a failure
half-way leaves stray files, never a row without its data. Attaching and detaching need the VM stopped: drives
reach a guest at boot. Slow file work runs in a worker thread; the database is touched on the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nexus.domain import (
    DRIVE_FILE,
    Conflict,
    DataDrive,
    Drive,
    DriveKind,
    DriveStore,
    Image,
    ImageStore,
    Invalid,
    InvalidState,
    Layout,
    NotFound,
    Snapshot,
    SnapshotStore,
    StorageBackend,
    Vm,
    VmStore,
    utcnow,
)
from nexus.domain.validation import DRIVE_SIZE_MIB_RANGE, check_name, check_range, referenced
from nexus.services.locks import VmLocks

log = logging.getLogger(__name__)

NEW_SUFFIX = ".new"  # a drive volume being made, not yet recorded

MIB = 1 << 20
_MOUNT_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
_FORBIDDEN_MOUNTS = {"/", "/proc", "/sys", "/dev", "/run", "/boot", "/etc", "/usr", "/bin", "/sbin", "/lib"}


def new_id() -> str:
    return secrets.token_hex(6)


def check_mount_path(path: str) -> str:
    """An absolute path the agent can mount a drive at (no ``,`` ``:`` or spaces: it travels on the cmdline)."""
    if not _MOUNT_RE.fullmatch(path) or len(path) > 200 or any(p in (".", "..") for p in path.split("/")):
        raise Invalid(f"invalid mount path {path!r}: use an absolute path of letters, digits and ._- (like /data)")
    if path in _FORBIDDEN_MOUNTS:
        raise Invalid(f"mount path {path} would hide the guest's own {path}")
    return path


def root_drive_name(vm_name: str) -> str:
    """Root drives are named ``<vm>.root``: a user's drive name cannot contain a dot, so they never collide."""
    return f"{vm_name}.root"


@dataclass(frozen=True, slots=True)
class VmDrives:
    """What a VM boots with: its root drive file, its data drives, and the (serial, path) mounts for the agent."""

    root: Path
    data: tuple[DataDrive, ...]
    mounts: tuple[tuple[str, str], ...]


class DriveService:
    def __init__(
        self,
        *,
        drives: DriveStore,
        snapshots: SnapshotStore,
        vms: VmStore,
        images: ImageStore,
        backend: StorageBackend,
        layout: Layout,
        format_drive: Callable[[Path], None],
        grow_filesystem: Callable[[Path], None],
        is_running: Callable[[str], bool],
        locks: VmLocks | None = None,
    ) -> None:
        self._drives = drives
        self._snapshots = snapshots
        self._vms = vms
        self._images = images
        self.backend = backend
        self._layout = layout
        self._format = format_drive
        self._grow = grow_filesystem
        self._is_running = is_running
        self._locks = locks or VmLocks()
        self.lock = asyncio.Lock()  # one workspace change at a time: volumes are made outside transactions

    def storage_status(self) -> tuple[str, str]:
        return self.backend.name, self.backend.reason

    # -- the drive resource

    def find(self) -> list[Drive]:
        return self._drives.find()

    def get(self, ref: str) -> Drive:
        return self._drives.get(ref)

    async def create(self, name: str, image: str | None = None, size_mib: int | None = None) -> Drive:
        check_name(name)
        if (image is None) == (size_mib is None):
            raise Invalid("give either an image to copy or a size in MiB for an empty ext4 drive")
        source: Image | None = referenced(lambda: self._images.get(image)) if image is not None else None
        if size_mib is not None:
            check_range("size_mib", size_mib, DRIVE_SIZE_MIB_RANGE)
        self._require_free_name(name)
        drive = Drive(
            id=new_id(),
            name=name,
            kind=DriveKind.DATA,
            size_mib=source.size_mib if source is not None else int(size_mib or 0),
            created_at=utcnow(),
            image=source.name if source is not None else None,
        )
        async with self.lock:
            await asyncio.to_thread(self._make_volume, drive, source)
            try:
                self._drives.insert(drive)
            except Conflict:
                await asyncio.to_thread(self.backend.delete_volume, self._layout.drive_volume(drive.id))
                raise
        log.info("drive %s created (%d MiB, %s)", drive.name, drive.size_mib, drive.image or "empty ext4")
        return drive

    def _make_volume(self, drive: Drive, source: Image | None) -> None:
        volume = self._layout.drive_volume(drive.id)
        volume.parent.mkdir(parents=True, exist_ok=True)
        self.backend.create_volume(volume)
        try:
            target = self._layout.drive_file(drive.id)
            if source is not None:
                self.backend.copy_file(source.path, target)
            else:
                with target.open("xb") as fh:
                    fh.truncate(drive.size_mib * MIB)
                self._format(target)
        except BaseException:
            self.backend.delete_volume(volume)
            raise

    def attach(self, ref: str, vm_ref: str, mount_path: str | None) -> Drive:
        drive = self._drives.get(ref)
        vm = referenced(lambda: self._vms.get(vm_ref))
        with self._locks.hold(vm.id, vm.name, "attaching a drive"):
            return self._attach(self._drives.get(drive.id), self._vms.get(vm.id), mount_path)

    def _attach(self, drive: Drive, vm: Vm, mount_path: str | None) -> Drive:
        if mount_path is not None:
            check_mount_path(mount_path)
        if drive.kind is DriveKind.ROOT:
            raise Conflict(f"drive {drive.name} is a root drive; it stays with its VM")
        if drive.vm_id is not None:
            owner = self._vms.get(drive.vm_id).name
            raise Conflict(f"drive {drive.name} is attached to VM {owner}; detach it first")
        self._require_stopped(vm, f"attach drive {drive.name}")
        if mount_path is not None:
            taken = [d.name for d in self._drives.find(vm.id) if d.mount_path == mount_path]
            if taken:
                raise Conflict(f"VM {vm.name} already mounts drive {taken[0]} at {mount_path}")
        self._drives.attach(drive.id, vm.id, mount_path)
        return self._drives.get(drive.id)

    def detach(self, ref: str) -> Drive:
        drive = self._drives.get(ref)
        if drive.kind is DriveKind.ROOT:
            raise Conflict(f"drive {drive.name} is a root drive; it stays with its VM")
        if drive.vm_id is None:
            raise Conflict(f"drive {drive.name} is not attached")
        vm = self._vms.get(drive.vm_id)
        with self._locks.hold(vm.id, vm.name, "detaching a drive"):
            if self._drives.get(drive.id).vm_id != vm.id:
                raise Conflict(f"drive {drive.name} was detached meanwhile")
            self._require_stopped(self._vms.get(vm.id), f"detach drive {drive.name}")
            self._drives.attach(drive.id, None, None)
        return self._drives.get(drive.id)

    async def resize(self, ref: str, size_mib: int) -> Drive:
        drive = self._drives.get(ref)
        check_range("size_mib", size_mib, DRIVE_SIZE_MIB_RANGE)
        if size_mib <= drive.size_mib:
            raise Invalid(f"drive {drive.name} is {drive.size_mib} MiB; it can only grow (shrinking loses data)")
        owner = self._vms.get(drive.vm_id) if drive.vm_id is not None else None
        with self._locks.hold(owner.id, owner.name, "resizing a drive") if owner else contextlib.nullcontext():
            if owner is not None:
                self._require_stopped(self._vms.get(owner.id), f"resize drive {drive.name}")
            path = self._layout.drive_file(drive.id)
            async with self.lock:
                await asyncio.to_thread(os.truncate, path, size_mib * MIB)
                self._drives.set_size(drive.id, size_mib)
                await asyncio.to_thread(self._grow, path)
        return self._drives.get(drive.id)

    async def remove(self, ref: str) -> None:
        drive = self._drives.get(ref)
        if drive.vm_id is not None:
            owner = self._vms.get(drive.vm_id).name
            what = "is the root drive of" if drive.kind is DriveKind.ROOT else "is attached to"
            raise Conflict(f"drive {drive.name} {what} VM {owner}; detach it (or remove the VM) first")
        users = self._drives.snapshot_users(drive.id)
        if users:
            raise Conflict(f"drive {drive.name} is held by snapshot(s) {', '.join(users)}; remove them first")
        async with self.lock:
            self._drives.delete(drive.id)
            await asyncio.to_thread(self.backend.delete_volume, self._layout.drive_volume(drive.id))
        log.info("drive %s removed", drive.name)

    # -- for the VM lifecycle

    async def boot_drives(self, vm: Vm, image: Image) -> VmDrives:
        """The drives ``vm`` boots with; its root drive is made from ``image`` at its first start."""
        attached = self._drives.find(vm.id)
        root = next((d for d in attached if d.kind is DriveKind.ROOT), None)
        if root is None:
            root = await self._make_root(vm, image)
        data = tuple(d for d in attached if d.kind is DriveKind.DATA)
        return VmDrives(
            root=self._layout.drive_file(root.id),
            data=tuple(DataDrive(d.id, self._layout.drive_file(d.id)) for d in data),
            mounts=tuple((d.id, d.mount_path) for d in data if d.mount_path is not None),
        )

    async def _make_root(self, vm: Vm, image: Image) -> Drive:
        drive = Drive(
            id=new_id(),
            name=root_drive_name(vm.name),
            kind=DriveKind.ROOT,
            size_mib=image.size_mib,
            created_at=utcnow(),
            vm_id=vm.id,
            image=image.name,
        )
        legacy = self._layout.legacy_root_drive(vm.id)
        source = legacy if legacy.exists() else image.path
        async with self.lock:
            volume = self._layout.drive_volume(drive.id)
            # Made as ".<id>.new", recorded, then renamed in: a crash before the row leaves a ".new" that recover
            # removes (nothing ever used it), one after it a ".new" that recover renames in (see recover).
            pending = volume.with_name(f".{volume.name}{NEW_SUFFIX}")

            def make() -> str:
                volume.parent.mkdir(parents=True, exist_ok=True)
                self.backend.create_volume(pending)
                try:
                    return self.backend.copy_file(source, pending / DRIVE_FILE)
                except BaseException:
                    self.backend.delete_volume(pending)
                    raise

            method = await asyncio.to_thread(make)
            try:
                self._drives.insert(drive)
            except BaseException:
                await asyncio.to_thread(self.backend.delete_volume, pending)
                raise
            pending.rename(volume)
        if source == legacy:
            legacy.unlink()
        log.info(
            "vm %s: root drive from %s (%s)", vm.name, "its old root.img" if source == legacy else image.name, method
        )
        return drive

    def clone_drive(self, source_volume: Path, drive: Drive) -> None:
        """Make ``drive``'s volume a writable clone of ``source_volume`` (worker thread; caller holds ``lock``)."""
        volume = self._layout.drive_volume(drive.id)
        volume.parent.mkdir(parents=True, exist_ok=True)
        self.backend.clone_volume(source_volume, volume, readonly=False)

    def delete_snapshot_files(self, snapshot: Snapshot) -> None:
        """Remove a snapshot's volumes and directory (worker thread)."""
        for item in snapshot.drives:
            self.backend.delete_volume(self._layout.snapshot_volume(snapshot.id, item.drive_id))
        shutil.rmtree(self._layout.snapshot_state_dir(snapshot.id), ignore_errors=True)  # a checkpoint's memory
        directory = self._layout.snapshot_dir(snapshot.id)
        if directory.exists():
            for leftover in directory.iterdir():  # a half-made volume of a snapshot that failed
                self.backend.delete_volume(leftover)
            directory.rmdir()

    async def drop_vm(self, vm: Vm) -> None:
        """A VM is being removed: its snapshots and root drive go; its data drives are detached and kept."""
        snapshots = self._snapshots.find(vm.id)
        drives = self._drives.find(vm.id)
        async with self.lock:
            for snapshot in snapshots:
                self._snapshots.delete(snapshot.id)
            for drive in drives:
                if drive.kind is DriveKind.ROOT:
                    self._drives.delete(drive.id)
                else:
                    self._drives.attach(drive.id, None, None)

            def files() -> None:
                for snapshot in snapshots:
                    self.delete_snapshot_files(snapshot)
                for drive in drives:
                    if drive.kind is DriveKind.ROOT:
                        self.backend.delete_volume(self._layout.drive_volume(drive.id))

            await asyncio.to_thread(files)

    # -- after a crash

    def recover(self) -> None:
        """At daemon start: finish or undo what a crash interrupted. A rollback that had swapped a drive's volume
        away is completed, one that had not is dropped; half-made volumes and snapshot files without a row (copies,
        never the only copy of anything) are removed. A drive volume without a row is kept and reported."""
        for root in (self._layout.drives_dir, self._layout.images_dir):
            for leftover in sorted(root.glob(".*.part")) if root.exists() else []:
                log.warning("removing %s, left half-made by a crash", leftover)
                self.backend.delete_volume(leftover)
        if self._layout.drives_dir.exists():
            self._recover_rollbacks()
            known = {d.id for d in self._drives.find()}
            for pending in sorted(self._layout.drives_dir.glob(f".*{NEW_SUFFIX}")):
                drive_id = pending.name[1 : -len(NEW_SUFFIX)]
                if drive_id in known and not self._layout.drive_volume(drive_id).exists():
                    pending.rename(self._layout.drive_volume(drive_id))
                    log.warning("drive %s: finished making it (a crash came between its row and its volume)", drive_id)
                else:
                    log.warning("removing %s, a drive a crash left before it was recorded", pending)
                    self.backend.delete_volume(pending)
            for volume in sorted(self._layout.drives_dir.iterdir()):
                if not volume.name.startswith(".") and volume.name not in known:
                    log.warning("drive volume %s has no drive in the database; left in place", volume)
        if self._layout.snapshots_dir.exists():
            for directory in sorted(self._layout.snapshots_dir.iterdir()):
                if not self._snapshots.exists(directory.name):
                    log.warning("removing snapshot files %s, whose snapshot was never recorded or removed", directory)
                    for volume in directory.iterdir():
                        self.backend.delete_volume(volume)
                    directory.rmdir()

    def _recover_rollbacks(self) -> None:
        drives = self._layout.drives_dir
        for marker in sorted(drives.glob(".*.rollback")) + sorted(drives.glob(".*.old")):
            if not marker.exists():  # renamed by an earlier step of this loop
                continue
            volume = drives / marker.name[1:].rsplit(".", 1)[0]
            fresh, old = drives / f".{volume.name}.rollback", drives / f".{volume.name}.old"
            if not volume.exists() and fresh.exists():  # swapped away, not yet in: finish the rollback
                fresh.rename(volume)
                log.warning("drive %s: finished a rollback a crash interrupted", volume.name)
            elif not volume.exists() and old.exists():  # cannot happen with the order _restore uses; be safe
                old.rename(volume)
                log.warning("drive %s: put back the volume a crashed rollback had moved away", volume.name)
            for leftover in (fresh, old):
                if leftover.exists() and volume.exists():
                    self.backend.delete_volume(leftover)

    # -- checks

    def _require_free_name(self, name: str) -> None:
        try:
            self._drives.get(name)
        except NotFound:
            return
        raise Conflict(f"a drive named {name!r} already exists")

    def _require_stopped(self, vm: Vm, what: str) -> None:
        if vm.state.has_process or self._is_running(vm.id):
            raise InvalidState(f"VM {vm.name} is {vm.state}; stop it to {what} (drives reach a guest at boot)")
