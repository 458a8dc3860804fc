"""What every VMM process handle shares: the asyncio child it owns, reaping it exactly once (no zombie), killing
its whole session, and a graceful stop that asks the guest to power off and kills after a timeout.

A driver subclasses ``VmmProcess`` with how to ask for power-off and what to release once the process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

log = logging.getLogger(__name__)

POWER_OFF_REQUEST_S = 2.0


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (VMMs run in a session of their own), else the process alone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_orphan(pid: int, vm_id: str, runtime_dir: Path) -> bool:
    """Kill ``pid`` if it is the VMM of VM ``vm_id`` whose runtime dir is ``runtime_dir`` — left running by a daemon
    that died — whichever driver started it. True if it was; a recycled pid that is something else is left alone."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # A direct VMM names sockets in this VM's runtime dir; a jailed Firecracker only sees its chroot, but the
    # jailer passes it ``--id=<vm id>``.
    marker = f"{runtime_dir}/".encode()
    jailed_id = f"--id={vm_id}".encode()
    if not any(marker in arg or arg == jailed_id for arg in argv):
        return False
    kill_group(pid)
    shutil.rmtree(runtime_dir, ignore_errors=True)
    return True


class VmmProcess:
    """A VMM child process; ``wait()`` reaps it and then releases the driver's resources and its runtime dir."""

    power_off_name = "power-off"  # what the guest is asked, for log lines

    def __init__(self, proc: asyncio.subprocess.Process, runtime_dir: Path) -> None:
        self._proc = proc
        self._runtime_dir = runtime_dir
        self._reaped = asyncio.create_task(self._reap(), name=f"vmm-reap-{proc.pid}")

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._reaped.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._reaped)

    async def shutdown(self, timeout_s: float) -> int:
        if self.returncode is None:
            try:
                await asyncio.wait_for(self._request_power_off(), POWER_OFF_REQUEST_S)
            except (Exception, TimeoutError) as exc:
                log.info("pid %d: %s failed (%s); killing", self.pid, self.power_off_name, exc)
                return await self.kill()
            try:
                return await asyncio.wait_for(self.wait(), timeout_s)
            except TimeoutError:
                log.info("pid %d: guest did not power off within %.0fs; killing", self.pid, timeout_s)
        return await self.kill()

    async def kill(self) -> int:
        if self.returncode is None:
            kill_group(self._proc.pid)
        return await self.wait()

    async def _request_power_off(self) -> None:
        raise NotImplementedError

    async def _release(self) -> None:
        """Close what the driver opened for this VM (control connections, listeners); called once reaped."""

    async def _reap(self) -> int:
        code = await self._proc.wait()  # reaped: from here on the pid may belong to someone else
        with contextlib.suppress(Exception):  # the VMM is gone: whatever its connections' teardown raises is moot
            await self._release()
        shutil.rmtree(self._runtime_dir, ignore_errors=True)
        return code
