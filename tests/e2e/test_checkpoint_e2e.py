"""Checkpoints of a real QEMU VM: memory and drives saved while it runs, restored running.

A Python counter server in the guest counts on across a checkpoint, keeps counting, and after a restore answers
with the checkpoint's count again (and counts on from there): the process, its open socket and the file it
appends to all came back as they were. The restored guest's clock is set right at once and its host name is its
VM's. A checkpoint with a damaged state file, or restored onto a VM whose memory changed, is refused and leaves the
VM as it was.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.api_client import NexusClient
from tests.e2e.conftest import STATE, nexusctl, nexusctl_json
from tests.helpers import Daemon, wait_until

pytestmark = pytest.mark.vm

VM = "e2e-ckpt"
COUNTER = """
import http.server, threading, time
count = 0
def tick():
    global count
    while True:
        count += 1
        with open('/root/ticks', 'a') as f:
            f.write(f'{count}\\n')
        time.sleep(0.1)
threading.Thread(target=tick, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(count).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', 8000), H).serve_forever()
"""
ASK = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000').read().decode())"


def _sh(daemon: Daemon, script: str) -> str:
    return nexusctl(daemon, "vm", "exec", "-s", VM, "--", script).stdout.decode().strip()


def _count(daemon: Daemon) -> int:
    return int(nexusctl(daemon, "vm", "exec", VM, "--", "python3", "-c", ASK).stdout)


def _history(api: NexusClient) -> list[str]:
    return [h["reason"] for h in api.vm_history(VM)]


def test_checkpoint_restore_carries_processes_on(e2e_daemon: Daemon, api: NexusClient) -> None:
    nexusctl_json(e2e_daemon, "vm", "run", VM, "--mem", "512")
    try:
        assert _sh(e2e_daemon, "hostname") == VM  # every guest is named after its VM
        _sh(
            e2e_daemon,
            f"cat > /root/counter.py <<'EOF'\n{COUNTER}\nEOF\n"
            "nohup python3 /root/counter.py > /root/counter.log 2>&1 &",
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                first = _count(e2e_daemon)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "the counter server did not come up"
                time.sleep(0.5)
        snap: dict[str, Any] = nexusctl_json(e2e_daemon, "vm", "checkpoint", VM, "--name", "c1")
        assert snap["state"]["mem_mib"] == 512 and snap["state"]["size_bytes"] > 0
        after_checkpoint = _count(e2e_daemon)  # the checkpoint's count is between `first` and this
        assert after_checkpoint >= first
        time.sleep(3)  # more work after the checkpoint
        later = _count(e2e_daemon)
        assert later > after_checkpoint + 10

        restored = nexusctl_json(e2e_daemon, "vm", "restore", VM, "c1")
        assert restored["state"] == "ready"
        again = _count(e2e_daemon)
        # Back to the checkpoint's count (plus what it counted since the restore), not on from `later`.
        assert first <= again < later, (first, again, later)
        time.sleep(1)
        assert _count(e2e_daemon) > again  # and it keeps counting
        # The file it appends to is the checkpoint's too (drives restored with the memory): line N holds count N.
        # Had the drive kept the lines written after the checkpoint, the counts would start over part way down.
        lines, last = _sh(e2e_daemon, "awk 'END { print NR, $0 }' /root/ticks").split()
        assert lines == last and int(last) >= first, (lines, last)
        skew = float(_sh(e2e_daemon, "date +%s.%N")) - time.time()
        assert abs(skew) < 3, f"the restored guest's clock is {skew:.1f} s off"
        reasons = _history(api)
        assert "checkpoint c1" in reasons and "checkpoint c1 taken" in reasons
        assert "restoring checkpoint c1" in reasons

        # A damaged state file: refused before anything changes, the VM runs on.
        pid = api.get_vm(VM)["pid"]
        state_file = next((STATE / "snapshots" / snap["id"] / "vmm").iterdir())
        original = state_file.read_bytes()
        try:
            state_file.write_bytes(original[:-4096] + b"\0" * 4096)
            refused = nexusctl(e2e_daemon, "vm", "restore", VM, "c1", check=False)
            assert refused.returncode == 5 and b"damaged" in refused.stderr
            vm = api.get_vm(VM)
            assert (vm["state"], vm["pid"]) == ("ready", pid)
        finally:
            state_file.write_bytes(original)

        refused = nexusctl(e2e_daemon, "vm", "restore", VM, "nonexistent", check=False)
        assert refused.returncode != 0 and b"nonexistent" in refused.stderr

        # A stopped VM is restored running too, its clock set right although the checkpoint is older by now.
        nexusctl(e2e_daemon, "vm", "stop", VM)
        saved_at = datetime.fromisoformat(snap["created_at"]).timestamp()
        time.sleep(max(0.0, saved_at + 12 - time.time()))
        assert nexusctl_json(e2e_daemon, "vm", "restore", VM, "c1")["state"] == "ready"
        assert first <= _count(e2e_daemon) < later
        skew = float(_sh(e2e_daemon, "date +%s.%N")) - time.time()
        assert abs(skew) < 3, f"the restored guest's clock is {skew:.1f} s off"
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", VM, check=False)
    assert not (STATE / "snapshots" / snap["id"]).exists()  # its checkpoints went with it, memory and all


def test_checkpoint_of_a_stopped_vm_is_refused(e2e_daemon: Daemon) -> None:
    nexusctl(e2e_daemon, "vm", "create", "e2e-ckpt-off")
    try:
        refused = nexusctl(e2e_daemon, "vm", "checkpoint", "e2e-ckpt-off", check=False)
        assert refused.returncode == 5 and b"only a running VM" in refused.stderr
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "e2e-ckpt-off", check=False)


def test_fork_runs_beside_its_parent_with_an_identity_of_its_own(e2e_daemon: Daemon, api: NexusClient) -> None:
    parent, child = "e2e-fork-a", "e2e-fork-b"
    nexusctl_json(e2e_daemon, "vm", "run", parent, "--mem", "512")
    try:

        def sh(vm: str, script: str) -> str:
            return nexusctl(e2e_daemon, "vm", "exec", "-s", vm, "--", script).stdout.decode().strip()

        sh(parent, "echo before > /root/shared; sleep 600 > /dev/null 2>&1 & echo $! > /root/sleeper")
        parent_id = sh(parent, "cat /etc/machine-id")
        forked = nexusctl_json(e2e_daemon, "vm", "fork", parent, child)
        assert forked["state"] == "ready" and forked["name"] == child
        assert api.get_vm(parent)["state"] == "ready"  # the parent ran on
        assert [s["name"] for s in api.list_snapshots(parent)] == []  # the checkpoint taken for it is gone

        assert sh(child, "hostname") == child and sh(parent, "hostname") == parent
        assert sh(child, "cat /etc/machine-id") != parent_id
        # The process running at the fork runs in both, and the file written before it is in both.
        assert sh(child, "kill -0 $(cat /root/sleeper) && cat /root/shared") == "before"
        assert sh(parent, "kill -0 $(cat /root/sleeper) && cat /root/shared") == "before"
        # After it, each writes its own.
        sh(child, "echo child > /root/only-child")
        sh(parent, "echo parent > /root/only-parent")
        assert sh(parent, "ls /root/only-child 2>&1 || true").endswith("No such file or directory")
        assert sh(child, "ls /root/only-parent 2>&1 || true").endswith("No such file or directory")
        reasons = [h["reason"] for h in api.vm_history(child)]
        assert any(r.startswith(f"forked from {parent} at checkpoint fork-{child}") for r in reasons)
        refused = nexusctl(e2e_daemon, "vm", "fork", parent, child, check=False)
        assert refused.returncode != 0 and b"already exists" in refused.stderr
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", child, check=False)
        nexusctl(e2e_daemon, "vm", "rm", "--force", parent, check=False)


def test_idle_suspend_frees_the_vmm_and_the_next_use_resumes_it_and_ttl_expires(
    e2e_daemon: Daemon, api: NexusClient
) -> None:
    idle, short = "e2e-idle", "e2e-ttl"
    try:
        created = nexusctl_json(e2e_daemon, "vm", "create", short, "--ttl", "30s")
        assert created["lifetime"]["ttl_s"] == 30 and created["lifetime"]["expires_at"] is not None
        nexusctl(e2e_daemon, "vm", "start", short)
        vm = nexusctl_json(e2e_daemon, "vm", "run", idle, "--idle-suspend", "8s")
        pid = vm["pid"]
        nexusctl(e2e_daemon, "vm", "exec", "-s", idle, "--", "echo kept > /root/mark; sleep 900 & echo $! > /root/pid")

        suspended = wait_until(
            lambda: (v := api.get_vm(idle))["lifetime"]["suspended"] and v, 60, "the idle VM to be suspended"
        )
        assert (suspended["state"], suspended["pid"]) == ("stopped", None)
        assert not Path(f"/proc/{pid}").exists()  # its VMM is gone, and its memory with it
        assert any(h["reason"].startswith("suspended: unused for 8s") for h in api.vm_history(idle))

        # The next use resumes it where it was: the file and the process are there.
        out = nexusctl(
            e2e_daemon, "vm", "exec", "-s", idle, "--", "cat /root/mark; kill -0 $(cat /root/pid) && echo alive"
        )
        assert out.stdout.decode().split() == ["kept", "alive"]
        woken = api.get_vm(idle)
        assert woken["state"] == "ready" and not woken["lifetime"]["suspended"]
        assert "resumed from idle suspend" in [h["reason"] for h in api.vm_history(idle)]
        assert [s["name"] for s in api.list_snapshots(idle)] == []  # the suspend checkpoint went once used

        expires = datetime.fromisoformat(created["lifetime"]["expires_at"]).timestamp()
        stopped = wait_until(
            lambda: api.get_vm(short)["state"] == "stopped", max(5.0, expires - time.time() + 10), "the TTL"
        )
        assert stopped and time.time() >= expires - 1  # on time: not before it expired, and within the wait
        assert any(h["reason"].startswith("expired: its ttl of 30s") for h in api.vm_history(short))
        refused = nexusctl(e2e_daemon, "vm", "start", short, check=False)
        assert refused.returncode == 5 and b"expired" in refused.stderr
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", idle, check=False)
        nexusctl(e2e_daemon, "vm", "rm", "--force", short, check=False)
