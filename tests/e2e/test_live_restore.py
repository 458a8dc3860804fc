"""Live restore with real QEMU VMs: nexusd dies (SIGKILL) or exits (SIGTERM) and the next one adopts the VMs it
left running, untouched; a VMM that died meanwhile is settled as crashed; a recycled pid is left alone.

This test's nexusd has a state dir of its own (one nexusd per state dir) linked to the session's kernel and
image. The test process makes itself a child subreaper, as systemd is for nexusd.service: the VMMs a dead
nexusd leaves become its children, so it can show that an adopted VMM's stop was a clean guest power-off (exit
status 0) and that nothing is left unreaped.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api_client import NexusClient
from tests.e2e.conftest import reap, restartable_daemon
from tests.helpers import wait_until

pytestmark = pytest.mark.vm

TICKER = "setsid sh -c 'while :; do date +%s >> /root/ticks; sleep 0.2; done' </dev/null >/dev/null 2>&1 &"


def _ticks(api: NexusClient, name: str) -> int:
    out = api.call_tool(name, "run_command", {"command": ["wc", "-l", "/root/ticks"]})
    return int(out["structuredContent"]["stdout"].split()[0])


def _ready_within(api: NexusClient, names: list[str], timeout_s: float) -> float:
    started = time.monotonic()
    wait_until(
        lambda: all(api.get_vm(n)["state"] == "ready" for n in names), timeout_s, f"{names} ready after the restart"
    )
    return time.monotonic() - started


def test_vms_outlive_nexusd_killed_or_stopped(restart_base: Path) -> None:
    daemon = restartable_daemon(restart_base)
    pids: dict[str, int] = {}
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        with NexusClient(daemon.socket, timeout_s=120) as api:
            for name in ("e2e-lr-a", "e2e-lr-b"):
                api.create_vm(name=name, mem_mib=256)
                pids[name] = api.start_vm(name)["pid"]
            api.call_tool("e2e-lr-a", "run_command", {"command": ["sh", "-c", TICKER]})
            wait_until(lambda: _ticks(api, "e2e-lr-a") >= 3, 10, "the guest's writer to run")
            before = _ticks(api, "e2e-lr-a")

        # 1. SIGKILL: nothing is torn down; the next nexusd adopts both VMs as they are.
        daemon.proc.kill()
        daemon.proc.wait()
        time.sleep(1.0)  # the writer goes on with nobody watching
        daemon = restartable_daemon(restart_base)
        with NexusClient(daemon.socket, timeout_s=120) as api:
            took = _ready_within(api, list(pids), 10)
            print(f"both VMs ready {took:.2f}s after nexusd answered")
            assert {n: api.get_vm(n)["pid"] for n in pids} == pids
            assert _ticks(api, "e2e-lr-a") > before + 3  # it kept writing while nexusd was dead
            out = api.call_tool("e2e-lr-b", "run_command", {"command": ["echo", "still here"]})
            assert out["structuredContent"]["stdout"] == "still here\n"
            reasons = [h["reason"] for h in api.vm_history("e2e-lr-a")]
            assert f"nexusd restarted; re-attaching to VMM pid {pids['e2e-lr-a']}" in reasons

            # An adopted VM stops gracefully: the guest powers off and QEMU exits 0 (not killed at the timeout).
            assert api.stop_vm("e2e-lr-b")["state"] == "stopped"
            assert api.vm_history("e2e-lr-b")[-1]["reason"] == "powered off (VMM exit status 0)"
        assert reap(pids["e2e-lr-b"]) == 0

        # 2. SIGTERM: nexusd exits at once, says what it left running, and the next one adopts it again.
        assert daemon.stop() == 0
        assert "left 1 VM(s) running for the next nexusd: e2e-lr-a" in daemon.log_text()
        daemon = restartable_daemon(restart_base)
        with NexusClient(daemon.socket, timeout_s=120) as api:
            _ready_within(api, ["e2e-lr-a"], 10)
            assert api.get_vm("e2e-lr-a")["pid"] == pids["e2e-lr-a"]
            before = _ticks(api, "e2e-lr-a")
            wait_until(lambda: _ticks(api, "e2e-lr-a") > before, 5, "the writer to go on")
            vm_id = api.get_vm("e2e-lr-a")["id"]
        assert daemon.stop() == 0

        # 3. The VMM dies while no nexusd runs, and its pid is then found running something else that carries the
        #    VM's runtime dir in its argv: that process is neither adopted nor killed; the VM is crashed.
        runtime = daemon.runtime_dir / "vms" / vm_id
        os.kill(pids["e2e-lr-a"], signal.SIGKILL)
        assert reap(pids["e2e-lr-a"]) == -signal.SIGKILL
        sleeper = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)", "-qmp", f"unix:{runtime}/qmp.sock"],
            start_new_session=True,
        )
        with sqlite3.connect(restart_base / "state" / "nexus.db") as db:
            db.execute("UPDATE vms SET pid = ? WHERE id = ?", (sleeper.pid, vm_id))
        daemon = restartable_daemon(restart_base)
        with NexusClient(daemon.socket, timeout_s=120) as api:
            after = api.get_vm("e2e-lr-a")
            assert (after["state"], after["pid"]) == ("crashed", None)
            assert api.vm_history("e2e-lr-a")[-1]["reason"].startswith("VMM exited while nexusd was down")
            assert sleeper.poll() is None  # a recycled pid is nobody's to kill
            assert not runtime.exists()  # nothing of the dead VMM is left
            for name in pids:
                api.remove_vm(name, force=True)
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        for pid in pids.values():  # whatever a failed run left
            try:
                os.kill(pid, signal.SIGKILL)
                reap(pid, 5)
            except (ProcessLookupError, ChildProcessError, AssertionError):
                pass
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
