"""A real Firecracker microVM through nexusd: boot, hello over hybrid vsock, a tool call, pause/resume, a
graceful stop (SendCtrlAltDel → the guest reboots → Firecracker exits).

Runs only where Firecracker can: a ``firecracker`` binary (``$NEXUS_E2E_FIRECRACKER``, else PATH) and a KVM that
boots ordinary guests (``/dev/kvm`` opens, and the QEMU boot probe did not find it useless). Elsewhere it skips
and says why. The kernel and image come from the shared e2e state dir (fetched and built by the QEMU e2e
fixture); this test's own nexusd gets a state dir of its own that links to them, so it never shares a database
with the session's QEMU daemon.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.daemon.drivers import firecracker_binary, kvm_runs_guests
from nexus.vmm.qemu.accel import kvm_device_problem
from tests.api_client import NexusClient
from tests.e2e.conftest import STATE, linked_state
from tests.helpers import Daemon, start_daemon

pytestmark = pytest.mark.vm


BINARY = Path(os.environ["NEXUS_E2E_FIRECRACKER"]) if os.environ.get("NEXUS_E2E_FIRECRACKER") else None


def firecracker_unusable() -> str | None:
    binary, where = firecracker_binary(BINARY)
    if binary is None:
        return where
    problem = kvm_device_problem()
    if problem is not None:
        return f"Firecracker needs KVM: {problem}"
    works, why = kvm_runs_guests(STATE / "cache" / "accel.json")
    if works is False:
        return f"KVM cannot run ordinary guests here: {why}"
    return None


@pytest.fixture
def fc_daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    reason = firecracker_unusable()
    if reason is not None:
        print(f"skipping the Firecracker e2e: {reason}")
        pytest.skip(reason)
    request.getfixturevalue("e2e_daemon")  # the shared kernel and image exist once it is up
    base = Path(tempfile.mkdtemp(prefix="nxfce2e-"))  # short: Unix socket paths
    try:
        config = base / "nexusd.toml"
        binary = f'firecracker_binary = "{BINARY}"\n' if BINARY is not None else ""
        config.write_text("boot_timeout_s = 30\nheartbeat_timeout_s = 4\nstop_timeout_s = 10\n" + binary)
        daemon = start_daemon(base, "--config", str(config), state_dir=linked_state(base, vmm="firecracker"))
        try:
            yield daemon
        finally:
            code = daemon.stop()
            if code != 0:
                print(daemon.log_text()[-5000:])
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_firecracker_boot_tool_stop(fc_daemon: Daemon) -> None:
    with NexusClient(fc_daemon.socket, timeout_s=120) as api:
        assert api.health()["driver"]["name"] == "firecracker"
        vm = api.create_vm(name="e2e-fc", mem_mib=512)
        try:
            ready = api.start_vm("e2e-fc")
            assert (ready["state"], ready["vmm"], ready["accel"]) == ("ready", "firecracker", "kvm")
            result = api.call_tool("e2e-fc", "run_command", {"command": ["uname", "-r"]})
            assert result["structuredContent"]["exit_code"] == 0
            assert api.pause_vm("e2e-fc")["state"] == "paused"
            assert api.resume_vm("e2e-fc")["state"] == "ready"
            stopped = api.stop_vm("e2e-fc")
            assert stopped["state"] == "stopped"
            reason = api.vm_history("e2e-fc")[-1]["reason"]
            assert "VMM exit status 0" in reason, reason  # exited on the guest's reboot, not killed at the timeout
            assert not (fc_daemon.runtime_dir / "vms" / vm["id"]).exists()
        finally:
            api.remove_vm("e2e-fc", force=True)
