"""A Firecracker snapshot as a checkpoint's files: where Firecracker writes them and where a new one reads them.

A checkpoint dir holds ``firecracker.vmstate`` (the microVM state) and ``firecracker.mem`` (the guest memory).
Run directly, Firecracker (root) writes and reads them in the checkpoint dir itself. Jailed, it sees only its
chroot: it writes them at the chroot's root, into files made beforehand for the jailed uid (which may not create
files there), and they are then renamed into the checkpoint dir - the chroot base is on the state dir's filesystem,
as the drives' hard links already require, so nothing is copied - and handed to root. A restore hard-links them
into the new chroot, read-only (Firecracker maps the memory file privately and never writes it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path, PurePosixPath

from nexus.domain.errors import DriverError
from nexus.vmm.firecracker.config import SnapshotFiles
from nexus.vmm.firecracker.jailer import ChrootLayout, PlacedFile

STATE_FILE = "firecracker.vmstate"
MEMORY_FILE = "firecracker.mem"
NAMES = (STATE_FILE, MEMORY_FILE)


def in_directory(directory: Path) -> SnapshotFiles:
    """The snapshot's files in ``directory`` (a checkpoint dir, or a jailed Firecracker's chroot root)."""
    return SnapshotFiles(directory / STATE_FILE, directory / MEMORY_FILE)


def stage(files_dir: Path, uid: int, gid: int) -> SnapshotFiles:
    """Empty files for a jailed Firecracker to write its snapshot into (it opens them with truncate)."""
    staged = in_directory(files_dir)
    for path in (staged.snapshot_path, staged.mem_path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
    return staged


def discard(staged: SnapshotFiles) -> None:
    for path in (staged.snapshot_path, staged.mem_path):
        with contextlib.suppress(OSError):
            Path(path).unlink()


def collect(staged: SnapshotFiles, directory: Path) -> None:
    """Move a jailed Firecracker's snapshot into ``directory`` and make it root's (the jailed uid must not be able
    to change a checkpoint another Firecracker will load)."""
    for source, name in ((staged.snapshot_path, STATE_FILE), (staged.mem_path, MEMORY_FILE)):
        target = directory / name
        try:
            os.replace(source, target)
        except OSError as exc:
            raise DriverError(
                f"cannot move the snapshot {source} into {directory}: {exc.strerror or exc} (the jailer's chroot "
                "base must be on the state dir's filesystem)"
            ) from exc
        os.chown(target, 0, 0)


def seal(directory: Path) -> int:
    """Make the snapshot in ``directory`` readable by its owner only (Firecracker creates the guest's memory 0644)
    and durable (a checkpoint that said it was taken survives a host crash); returns its size."""
    size = 0
    for name in NAMES:
        fd = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o600)
            os.fsync(fd)
            size += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return size


def check(directory: Path) -> None:
    """DriverError unless ``directory`` holds a Firecracker snapshot (a QEMU checkpoint does not)."""
    missing = [name for name in NAMES if not (directory / name).is_file()]
    if missing:
        raise DriverError(f"{directory} holds no Firecracker snapshot (no {', '.join(missing)})")


def placement(directory: Path, layout: ChrootLayout) -> tuple[PlacedFile, ...]:
    """The checkpoint's files as a jailed Firecracker reads them: hard links at its chroot's root, read-only."""
    return tuple(
        PlacedFile(directory / name, layout.host_path(PurePosixPath("/") / name), PurePosixPath("/") / name)
        for name in NAMES
    )
