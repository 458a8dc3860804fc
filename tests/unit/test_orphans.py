"""Killing a VMM left running by a daemon that died: only the process whose argv names the VM's runtime dir or,
for a jailed Firecracker (which only sees its chroot), carries the jailer's ``--id <vm id>``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nexus.vmm.process import kill_orphan
from tests.helpers import wait_until

VM_ID = "0123456789ab"


def _sleeper(*argv: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv], start_new_session=True)
    # Popen returns as exec begins; /proc/PID/cmdline reads empty for a moment after (seen under load).
    wait_until(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes(), 5, "the sleeper's argv")
    return proc


def test_kills_the_vms_own_vmm_and_removes_its_runtime_dir(tmp_path: Path) -> None:
    runtime = tmp_path / "run" / "vms" / VM_ID
    runtime.mkdir(parents=True)
    orphan = _sleeper("-qmp", f"unix:{runtime}/qmp.sock")
    try:
        assert kill_orphan(orphan.pid, VM_ID, runtime)
        assert orphan.wait(timeout=5) == -9
        assert not runtime.exists()
    finally:
        orphan.kill()
        orphan.wait()


def test_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    runtime = tmp_path / "run" / "vms" / VM_ID
    runtime.mkdir(parents=True)
    other_runtime = str(tmp_path / "run" / "vms" / "ffffffffffff" / "api.sock")
    other = _sleeper("--api-sock", other_runtime, "--id", "ffffffffffff", "--api-sock", VM_ID)
    try:
        assert not kill_orphan(other.pid, VM_ID, runtime)
        assert other.poll() is None
        assert runtime.exists()
    finally:
        other.kill()
        other.wait()
    assert not kill_orphan(other.pid, VM_ID, runtime)  # gone: nothing to do


@pytest.mark.parametrize(
    "argv",
    [
        ("--id", VM_ID, "--start-time-us", "1", "--api-sock", "/api.sock"),  # as the real jailer v1.12.1 passes it
        (f"--id={VM_ID}", "--start-time-us=1", "--api-sock", "/api.sock"),
    ],
)
def test_kills_a_jailed_firecracker_by_the_id_the_jailer_gave_it(tmp_path: Path, argv: tuple[str, ...]) -> None:
    runtime = tmp_path / "run" / "vms" / VM_ID
    runtime.mkdir(parents=True)
    orphan = _sleeper(*argv)
    try:
        assert kill_orphan(orphan.pid, VM_ID, runtime)
        assert orphan.wait(timeout=5) == -9
    finally:
        orphan.kill()
        orphan.wait()
