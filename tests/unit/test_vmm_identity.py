"""Proving a recorded pid is still a VM's VMM (start time and command line), watching a process that is not
our child through a pidfd, and reading how it ended."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from nexus.domain import ExitStatus, VmmGone, VmmRecord
from nexus.vmm.process import claim, kill_vmm, pidfd_exit, proc_stat, start_time
from tests.helpers import wait_until

VM_ID = "0123456789ab"


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "vms" / VM_ID
    path.mkdir(parents=True)
    return path


@pytest.fixture
def vmm(runtime: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in VMM: a sleeper whose argv names the VM's runtime dir, as QEMU's does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-qmp", f"unix:{runtime}/qmp.sock"],
        start_new_session=True,
    )
    wait_until(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes(), 5, "the sleeper's argv")
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def record(proc: subprocess.Popen[bytes]) -> VmmRecord:
    return VmmRecord(proc.pid, start_time(proc.pid), "qemu", "tcg")


def test_proc_stat_reads_the_start_time_whatever_the_command_name() -> None:
    me = proc_stat(os.getpid())
    assert me is not None and me.state in "RS" and me.start_time > 0
    assert proc_stat(2**22 + 1) is None  # above pid_max: never a process


def test_claim_takes_the_vms_own_process(runtime: Path, vmm: subprocess.Popen[bytes]) -> None:
    fd = claim(record(vmm), VM_ID, runtime)
    os.close(fd)
    assert vmm.poll() is None


def test_a_recycled_pid_is_neither_claimed_nor_killed(runtime: Path, vmm: subprocess.Popen[bytes]) -> None:
    other_start = replace(record(vmm), start_time=record(vmm).start_time - 1)
    with pytest.raises(VmmGone, match="another process"):
        claim(other_start, VM_ID, runtime)
    assert not kill_vmm(other_start, VM_ID, runtime)
    with pytest.raises(VmmGone, match="does not run this VM"):  # right start time, another VM's argv
        claim(record(vmm), "ffffffffffff", runtime.parent / "ffffffffffff")
    assert vmm.poll() is None


def test_a_dead_vmm_is_gone_with_its_status(runtime: Path, vmm: subprocess.Popen[bytes]) -> None:
    rec = record(vmm)
    os.kill(vmm.pid, signal.SIGKILL)
    wait_until(lambda: (s := proc_stat(vmm.pid)) is not None and s.state == "Z", 5, "a zombie")
    with pytest.raises(VmmGone) as gone:
        claim(rec, VM_ID, runtime)
    assert gone.value.status == ExitStatus(-9) and str(gone.value.status) == "signal 9"
    vmm.wait()
    with pytest.raises(VmmGone, match="no process"):
        claim(rec, VM_ID, runtime)


def test_kill_vmm_kills_only_a_proven_vmm(runtime: Path, vmm: subprocess.Popen[bytes]) -> None:
    assert kill_vmm(record(vmm), VM_ID, runtime)
    assert vmm.wait(timeout=5) == -signal.SIGKILL


def test_pidfd_sees_the_exit_and_its_status(runtime: Path, vmm: subprocess.Popen[bytes]) -> None:
    async def scenario() -> ExitStatus:
        exited = pidfd_exit(claim(record(vmm), VM_ID, runtime), vmm.pid)
        await asyncio.sleep(0.1)
        assert not exited.done()
        os.kill(vmm.pid, signal.SIGTERM)
        return await asyncio.wait_for(exited, 5)

    assert asyncio.run(scenario()) == ExitStatus(-signal.SIGTERM)  # read from the zombie: its parent had not reaped


def test_a_cancelled_pidfd_watch_closes_its_fd(runtime: Path, vmm: subprocess.Popen[bytes]) -> None:
    async def scenario() -> int:
        fd = claim(record(vmm), VM_ID, runtime)
        exited = pidfd_exit(fd, vmm.pid)
        exited.cancel()
        await asyncio.sleep(0)
        return fd

    fd = asyncio.run(scenario())
    with pytest.raises(OSError):
        os.fstat(fd)


def test_exit_status_wording() -> None:
    assert [str(ExitStatus(c)) for c in (0, 3, -9, None)] == ["status 0", "status 3", "signal 9", "status unknown"]
