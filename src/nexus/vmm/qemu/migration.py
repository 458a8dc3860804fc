"""Save a paused QEMU's state to a file and load it into a new QEMU, through QMP migration to a file descriptor.

The file is handed to QEMU over the QMP socket (``getfd``, SCM_RIGHTS), so no shell and no path quoting are
involved (``exec:`` URIs would run one; ``file:`` URIs arrived only in QEMU 8.2). Saving leaves the source paused
with its block devices flushed and inactive until ``cont`` (which reactivates them); loading needs a QEMU started
with ``-incoming defer`` and the same machine, memory and devices, and leaves it paused for the caller's ``cont``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Final, cast

from qemu.qmp import QMPClient

from nexus.domain import DriverError

__all__ = ["STATE_FILE", "load_state", "save_state"]

STATE_FILE: Final = "qemu.vmstate"
_FD_NAME: Final = "nexus-state"
_MAX_BANDWIDTH: Final = 64 * 1024**3  # bytes/s: QEMU's default (128 MiB/s) would throttle a file write
_POLL_S: Final = 0.01
MIGRATION_TIMEOUT_S: Final = 300.0


async def _wait_migration(qmp: QMPClient, what: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        info = cast(dict[str, Any], await qmp.execute("query-migrate"))
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise DriverError(f"QEMU could not {what}: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise DriverError(f"QEMU did not {what} within {timeout_s:.0f} s (migration {status})")
        await asyncio.sleep(_POLL_S)


async def _send_fd(qmp: QMPClient, fd: int) -> None:
    qmp.send_fd_scm(fd)
    await qmp.execute("getfd", {"fdname": _FD_NAME})


async def save_state(qmp: QMPClient, directory: Path, timeout_s: float = MIGRATION_TIMEOUT_S) -> int:
    """Pause the guest and write its state to ``directory/STATE_FILE`` (which must not exist); returns its size.
    The file is fsynced before this returns, so a checkpoint that said it was taken survives a host crash."""
    path = directory / STATE_FILE
    await qmp.execute("stop")
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": _MAX_BANDWIDTH})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        await _send_fd(qmp, fd)
    finally:
        os.close(fd)  # QEMU holds its own copy now, and closes it when the migration ends
    await qmp.execute("migrate", {"uri": f"fd:{_FD_NAME}"})
    await _wait_migration(qmp, "save the VM's state", timeout_s)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


async def load_state(qmp: QMPClient, directory: Path, timeout_s: float = MIGRATION_TIMEOUT_S) -> None:
    """Load ``directory/STATE_FILE`` into a QEMU waiting with ``-incoming defer``; it is paused afterwards. A
    state QEMU cannot load (corrupt, or saved from another machine shape) makes QEMU exit: the caller sees the
    QMP connection drop and reports QEMU's stderr."""
    path = directory / STATE_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DriverError(f"cannot open the saved state {path}: {exc.strerror or exc}") from exc
    try:
        await _send_fd(qmp, fd)
    finally:
        os.close(fd)
    await qmp.execute("migrate-incoming", {"uri": f"fd:{_FD_NAME}"})
    await _wait_migration(qmp, "load the VM's state", timeout_s)
