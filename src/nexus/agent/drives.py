"""Data drives in the guest: mount them at boot (``nexus.mounts`` on the kernel command line), and freeze/thaw
the filesystems around a host-side snapshot (FIFREEZE/FITHAW ioctls), with a timer that thaws by itself.

Standard library only. Disks are found by their virtio-blk serial (``/sys/block/vdX/serial``), never by the
order the kernel named them. Mounting runs the guest's ``mount`` binary; a drive that cannot be mounted is
logged and skipped (the agent must come up whatever happens). While frozen nothing here logs: a log line
written to a frozen filesystem would block the very thread that has to thaw it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import threading
from pathlib import Path

from nexus.protocol import decode_mounts

__all__ = ["Freezer", "find_disk", "mount_drives"]

log = logging.getLogger("nexus.agent")

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int), linux/fs.h
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
_MOUNT_TIMEOUT_S = 60.0


def find_disk(serial: str, sys_block: Path = Path("/sys/block")) -> str | None:
    """The /dev path of the disk whose virtio-blk serial is ``serial``."""
    try:
        entries = sorted(sys_block.iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            found = (entry / "serial").read_text().strip()
        except OSError:
            continue
        if found == serial:
            return f"/dev/{entry.name}"
    return None


def mount_drives(value: str | None) -> list[str]:
    """Mount each ``serial:path`` of a ``nexus.mounts`` value; returns the paths now mounted."""
    mounted: list[str] = []
    for serial, path in decode_mounts(value or ""):
        device = find_disk(serial)
        if device is None:
            log.error("drive %s: no disk with that serial; not mounting %s", serial, path)
            continue
        try:
            os.makedirs(path, exist_ok=True)
            done = subprocess.run(
                ["mount", "-t", "ext4", device, path], capture_output=True, text=True, timeout=_MOUNT_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("drive %s: mounting %s at %s failed: %s", serial, device, path, exc)
            continue
        if done.returncode != 0:
            log.error("drive %s: mount %s %s: %s", serial, device, path, done.stderr.strip())
            continue
        log.info("drive %s: %s mounted at %s", serial, device, path)
        mounted.append(path)
    return mounted


class Freezer:
    """Freezes the data drive mounts and ``/`` (in that order; thawed in reverse) until thawed or timed out."""

    def __init__(self, mounts: list[str], root: str = "/") -> None:
        self._paths = [*mounts, root]
        self._lock = threading.Lock()
        self._frozen: list[int] = []  # open fds of the frozen mount points
        self._frozen_paths: list[str] = []
        self._timer: threading.Timer | None = None
        self.auto_thaws = 0

    def freeze(self, timeout_s: float) -> list[str]:
        with self._lock:
            if self._frozen:
                raise RuntimeError("already frozen")
            os.sync()
            try:
                for path in self._paths:
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        fcntl.ioctl(fd, FIFREEZE, 0)
                    except OSError:
                        os.close(fd)
                        raise
                    self._frozen.append(fd)
                    self._frozen_paths.append(path)
            except OSError:
                self._thaw_locked()
                raise
            self._timer = threading.Timer(timeout_s, self._auto_thaw)
            self._timer.daemon = True
            self._timer.start()
            return list(self._frozen_paths)

    def thaw(self) -> list[str]:
        with self._lock:
            return self._thaw_locked()

    def _auto_thaw(self) -> None:
        with self._lock:
            if self._frozen:
                self.auto_thaws += 1
                self._thaw_locked()
        log.warning("filesystems thawed by timeout: the host did not thaw them")

    def _thaw_locked(self) -> list[str]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        thawed = list(self._frozen_paths)
        for fd in reversed(self._frozen):
            try:
                fcntl.ioctl(fd, FITHAW, 0)
            except OSError:
                pass  # not frozen any more (thawed by someone else): nothing to undo
            finally:
                os.close(fd)
        self._frozen.clear()
        self._frozen_paths.clear()
        return thawed
