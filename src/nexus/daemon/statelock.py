"""One nexusd per state dir: an exclusive ``flock`` on ``<state dir>/nexusd.lock``, held for the daemon's life.

The kernel drops the lock when the holder dies, so a lock is never stale; the file keeps the holder's pid only
to name it in the refusal. The descriptor is close-on-exec, so no VMM inherits it and outlives the daemon
holding it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from nexus.domain import Unavailable

LOCK_FILE = "nexusd.lock"


@contextlib.contextmanager
def state_dir_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state dir for this process; Unavailable (touching nothing) when another nexusd holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise Unavailable(
                f"another nexusd (pid {holder}) is using the state dir {state_dir}; stop it first, or give this "
                "one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
