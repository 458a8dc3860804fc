"""Killing a VMM left running by a daemon that died: only the process whose argv names the VM's runtime dir."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nexus.vmm.process import kill_orphan


def _sleeper(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv], start_new_session=True)


def test_kills_the_vms_own_vmm_and_removes_its_runtime_dir(tmp_path: Path) -> None:
    runtime = tmp_path / "run" / "vms" / "0123456789ab"
    runtime.mkdir(parents=True)
    orphan = _sleeper("-qmp", f"unix:{runtime}/qmp.sock")
    try:
        assert kill_orphan(orphan.pid, runtime)
        assert orphan.wait(timeout=5) == -9
        assert not runtime.exists()
    finally:
        orphan.kill()
        orphan.wait()


def test_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    runtime = tmp_path / "run" / "vms" / "0123456789ab"
    runtime.mkdir(parents=True)
    other = _sleeper("--api-sock", str(tmp_path / "run" / "vms" / "ffffffffffff" / "api.sock"))
    try:
        assert not kill_orphan(other.pid, runtime)
        assert other.poll() is None
        assert runtime.exists()
    finally:
        other.kill()
        other.wait()
    assert not kill_orphan(other.pid, runtime)  # gone: nothing to do
