"""What every VMM process handle shares: watching the process exit exactly once (reaping it when it is nexusd's
child, through a pidfd when it was adopted after a restart), proving that a recorded pid is still the VM's VMM,
killing it, a graceful stop that asks the guest to power off and kills after a timeout, and letting go of it
(``detach``) when nexusd exits and the VM runs on.

A driver subclasses ``VmmProcess`` with how to ask for power-off, what to close when nexusd lets go, and what
to release once the process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import shutil
import signal
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

from nexus.domain import ExitStatus, VmmGone, VmmRecord

log = logging.getLogger(__name__)

POWER_OFF_REQUEST_S = 2.0


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` that identify a process and tell how it ended."""

    state: str  # R, S, D, Z (exited, not yet reaped by its parent), X...
    start_time: int  # clock ticks after boot (field 22)
    exit_code: int | None  # the wait status of a zombie (field 52, Linux ≥ 3.5)


def proc_stat(pid: int) -> ProcStat | None:
    """The process's stat fields; None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (OSError, ProcessLookupError):
        return None
    # "pid (comm) state ..." - comm may hold spaces and parentheses, so split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        exit_code = int(fields[49]) if len(fields) > 49 else None
        return ProcStat(state=fields[0], start_time=int(fields[19]), exit_code=exit_code)
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int:
    """The start time of a process that exists (it was just spawned); 0 if it already vanished."""
    stat = proc_stat(pid)
    return stat.start_time if stat is not None else 0


def _zombie_status(stat: ProcStat | None) -> ExitStatus:
    if stat is None or stat.state not in ("Z", "X") or stat.exit_code is None:
        return ExitStatus(None)
    return ExitStatus(os.waitstatus_to_exitcode(stat.exit_code))


def runs_vm(pid: int, vm_id: str, runtime_dir: Path) -> bool:
    """Whether ``pid``'s command line marks it as the VMM of ``vm_id``: a direct VMM names sockets in the VM's
    runtime dir; a jailed Firecracker only sees its chroot, but the jailer passes it ``--id <vm id>`` (two
    arguments, as the real jailer v1.12 does; ``--id=<vm id>`` is taken too)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    marker = f"{runtime_dir}/".encode()
    vm = vm_id.encode()
    pairs = zip(argv, [*argv[1:], b""], strict=True)
    jailed = any(arg == b"--id=" + vm or (arg == b"--id" and value == vm) for arg, value in pairs)
    return jailed or any(marker in arg for arg in argv)


def claim(record: VmmRecord, vm_id: str, runtime_dir: Path) -> int:
    """A pidfd on the VMM ``record`` names, once proven to be that process (same start time, a command line that
    runs ``vm_id``). The pidfd is opened first, so the process cannot be swapped for another between the check and
    its use. Raises VmmGone when it exited or the pid now belongs to someone else (who is left alone)."""
    try:
        fd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        raise VmmGone(f"no process {record.pid}") from None
    except OSError as exc:
        raise VmmGone(f"cannot watch pid {record.pid}: {exc.strerror}") from exc
    try:
        stat = proc_stat(record.pid)
        if stat is None or stat.start_time != record.start_time:
            raise VmmGone(f"pid {record.pid} now belongs to another process")
        if stat.state in ("Z", "X"):
            raise VmmGone(f"pid {record.pid} has exited", _zombie_status(stat))
        if not runs_vm(record.pid, vm_id, runtime_dir):
            raise VmmGone(f"pid {record.pid} does not run this VM")
    except BaseException:
        os.close(fd)
        raise
    return fd


def kill_vmm(record: VmmRecord, vm_id: str, runtime_dir: Path) -> bool:
    """SIGKILL the VM's VMM if ``record`` still proves to be it; False when there was nothing of it to kill."""
    try:
        fd = claim(record, vm_id, runtime_dir)
    except VmmGone:
        return False
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    return True


def kill_orphan(pid: int, vm_id: str, runtime_dir: Path) -> bool:
    """For a VM whose VMM was recorded by pid alone (launched before start times were recorded): kill ``pid`` if
    its command line marks it as the VM's VMM. True if it was; a recycled pid that is something else is left
    alone."""
    if not runs_vm(pid, vm_id, runtime_dir):
        return False
    kill_group(pid)
    shutil.rmtree(runtime_dir, ignore_errors=True)
    return True


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (VMMs run in a session of their own), else the process alone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def child_exit(proc: asyncio.subprocess.Process) -> ExitStatus:
    """The exit of a VMM nexusd spawned: asyncio reaps it, so no zombie is left."""
    return ExitStatus(await proc.wait())


def pidfd_exit(fd: int, pid: int) -> asyncio.Future[ExitStatus]:
    """The exit of an adopted VMM (not nexusd's child: its parent reaps it), seen when its pidfd turns readable.
    Owns ``fd``: closed once the future is done or cancelled. The status is known while the process is still a
    zombie, else unknown."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[ExitStatus] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(_zombie_status(proc_stat(pid)))

    def close(_: asyncio.Future[ExitStatus]) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    loop.add_reader(fd, readable)
    exited.add_done_callback(close)
    return exited


class VmmProcess:
    """A VMM process; ``wait()`` sees it exit and then releases the driver's resources and its runtime dir."""

    power_off_name = "power-off"  # what the guest is asked, for log lines

    def __init__(self, record: VmmRecord, exited: Awaitable[ExitStatus], runtime_dir: Path) -> None:
        self._record = record
        self._runtime_dir = runtime_dir
        self._killable = True  # false once it exited: from then on the pid may belong to someone else
        self._status: ExitStatus | None = None
        self._reaped = asyncio.create_task(self._reap(exited), name=f"vmm-reap-{record.pid}")

    @property
    def pid(self) -> int:
        return self._record.pid

    @property
    def record(self) -> VmmRecord:
        return self._record

    @property
    def exit_status(self) -> ExitStatus | None:
        return self._status

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._reaped)

    async def shutdown(self, timeout_s: float) -> ExitStatus:
        if self._status is None:
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

    async def kill(self) -> ExitStatus:
        if self._killable and not self._reaped.done():
            kill_group(self.pid)
        return await self.wait()

    async def detach(self) -> None:
        """Stop watching the VMM and close the driver's connections to it; it keeps running."""
        self._killable = False
        self._reaped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reaped
        with contextlib.suppress(Exception):
            await self._disconnect()

    async def _request_power_off(self) -> None:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        """Close what nexusd holds open to the VMM (control connections, listeners)."""

    async def _release(self) -> None:
        """Once the VMM is gone: close connections and remove what the driver keeps outside the runtime dir."""
        await self._disconnect()

    async def _reap(self, exited: Awaitable[ExitStatus]) -> ExitStatus:
        try:
            status = await exited
        except asyncio.CancelledError:  # detached, perhaps before this task ever ran: let go of the watch too
            if inspect.iscoroutine(exited):
                exited.close()
            elif isinstance(exited, asyncio.Future):
                exited.cancel()
            raise
        self._killable = False
        with contextlib.suppress(Exception):  # the VMM is gone: whatever its connections' teardown raises is moot
            await self._release()
        shutil.rmtree(self._runtime_dir, ignore_errors=True)
        self._status = status
        return status
