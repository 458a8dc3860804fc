"""Booting real VMs under QEMU (TCG here) through nexusd and working inside them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.api_client import NexusClient
from tests.e2e.conftest import nexusctl, nexusctl_json
from tests.helpers import Daemon, wait_until

pytestmark = pytest.mark.vm


def _states(api: NexusClient, name: str) -> list[tuple[str, str]]:
    return [(h["to_state"], h["reason"]) for h in api.vm_history(name)]


def _gone(pid: int) -> bool:
    """No process (not even a zombie) with this pid."""
    return not Path(f"/proc/{pid}").exists()


def test_run_exec_copy_stop(e2e_daemon: Daemon, api: NexusClient, tmp_path: Path) -> None:
    vm = nexusctl_json(e2e_daemon, "vm", "run", "e2e-main", "--mem", "512")
    try:
        assert vm["state"] == "ready"
        assert (vm["vmm"], vm["accel"]) == ("qemu", "tcg") or vm["accel"] == "kvm"
        assert isinstance(vm["pid"], int)

        uname = nexusctl(e2e_daemon, "vm", "exec", "e2e-main", "--", "uname", "-a")
        assert uname.stdout.startswith(b"Linux ")
        py = nexusctl(e2e_daemon, "vm", "exec", "e2e-main", "--", "python3", "-c", "print(sum(range(10)))")
        assert py.stdout == b"45\n"
        failing = nexusctl(e2e_daemon, "vm", "exec", "--shell", "e2e-main", "--", "echo oops >&2; exit 3", check=False)
        assert failing.returncode == 3
        assert failing.stderr == b"oops\n"

        # 10 MiB of random bytes in and out again, binary safe, in chunks.
        payload = os.urandom(10 * 1024 * 1024)
        src, back = tmp_path / "payload.bin", tmp_path / "back.bin"
        src.write_bytes(payload)
        nexusctl(e2e_daemon, "vm", "cp", str(src), "e2e-main:/root/payload.bin")
        inside = nexusctl(e2e_daemon, "vm", "exec", "e2e-main", "--", "sha256sum", "/root/payload.bin")
        assert inside.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()
        nexusctl(e2e_daemon, "vm", "cp", "e2e-main:/root/payload.bin", str(back))
        assert back.read_bytes() == payload

        assert nexusctl_json(e2e_daemon, "vm", "pause", "e2e-main")["state"] == "paused"
        refused = nexusctl(e2e_daemon, "vm", "exec", "e2e-main", "--", "true", check=False)
        assert refused.returncode == 5
        assert b"paused" in refused.stderr
        assert nexusctl_json(e2e_daemon, "vm", "resume", "e2e-main")["state"] == "ready"
        assert nexusctl(e2e_daemon, "vm", "exec", "e2e-main", "--", "echo", "resumed").stdout == b"resumed\n"

        logs = nexusctl_json(e2e_daemon, "vm", "logs", "e2e-main", "--tail", "200")
        assert any("Linux version" in line or "nexus" in line.lower() for line in logs["lines"])

        stopped = nexusctl_json(e2e_daemon, "vm", "stop", "e2e-main")
        assert stopped["state"] == "stopped"
        assert stopped["pid"] is None
        assert _gone(vm["pid"])
        states = [s for s, _ in _states(api, "e2e-main")]
        assert states == ["created", "starting", "ready", "paused", "ready", "stopping", "stopped"]
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", "e2e-main", check=False)


def test_vmm_killed_means_crashed(e2e_daemon: Daemon, api: NexusClient) -> None:
    vm = nexusctl_json(e2e_daemon, "vm", "run", "e2e-crash")
    try:
        os.kill(vm["pid"], signal.SIGKILL)
        wait_until(lambda: api.get_vm("e2e-crash")["state"] == "crashed", 2.0, "crashed within 2 s")
        reason = _states(api, "e2e-crash")[-1][1]
        assert "signal 9" in reason
        assert api.get_vm("e2e-crash")["pid"] is None
        assert _gone(vm["pid"])  # reaped: no zombie
        assert not (e2e_daemon.runtime_dir / "vms" / vm["id"]).exists()  # sockets released
        # A crashed VM starts again.
        assert nexusctl_json(e2e_daemon, "vm", "start", "e2e-crash")["state"] == "ready"
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", "e2e-crash", check=False)


def test_hung_agent_means_unreachable_and_stop_still_works(e2e_daemon: Daemon, api: NexusClient) -> None:
    nexusctl_json(e2e_daemon, "vm", "run", "e2e-hang")
    try:
        # Freeze the agent (the parent of the shell it runs) a moment after the command has returned.
        nexusctl(
            e2e_daemon, "vm", "exec", "--shell", "e2e-hang", "--", "p=$PPID; (sleep 1; kill -STOP $p) >/dev/null 2>&1 &"
        )
        wait_until(lambda: api.get_vm("e2e-hang")["state"] == "unreachable", 20, "unreachable")
        assert "no heartbeat" in _states(api, "e2e-hang")[-1][1]
        stopped = nexusctl_json(e2e_daemon, "vm", "stop", "e2e-hang")
        assert stopped["state"] == "stopped"
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", "e2e-hang", check=False)


def test_hung_agent_fails_calls_in_flight_and_comes_back(e2e_daemon: Daemon, api: NexusClient) -> None:
    """The agent freezes (SIGSTOP) for 12 s: a call in flight fails once heartbeats stop (not at its own timeout),
    the VM is unreachable, and after SIGCONT the heartbeats and a new MCP link make it ready and usable again."""
    nexusctl_json(e2e_daemon, "vm", "run", "e2e-hang")
    try:
        # Freeze the agent (the parent of the shell it runs) a moment after the command has returned; a process
        # of its own (not frozen) thaws it later.
        script = "p=$PPID; (sleep 1; kill -STOP $p; sleep 12; kill -CONT $p) >/dev/null 2>&1 &"
        nexusctl(e2e_daemon, "vm", "exec", "--shell", "e2e-hang", "--", script)
        started = time.monotonic()
        stuck = nexusctl(e2e_daemon, "vm", "exec", "e2e-hang", "--", "sleep", "60", check=False)
        assert stuck.returncode != 0
        assert b"unreachable" in stuck.stderr or b"not ready" in stuck.stderr, stuck.stderr
        assert time.monotonic() - started < 30  # failed when the agent went silent, not after the 60 s sleep
        assert any("no heartbeat" in reason for _, reason in _states(api, "e2e-hang"))

        def exec_works() -> bool:
            done = nexusctl(e2e_daemon, "vm", "exec", "e2e-hang", "--", "echo", "back", check=False)
            return done.returncode == 0 and done.stdout == b"back\n"

        wait_until(exec_works, 60, "exec to work once the agent is thawed", interval_s=1.0)
        assert api.get_vm("e2e-hang")["state"] == "ready"
        assert nexusctl_json(e2e_daemon, "vm", "stop", "e2e-hang")["state"] == "stopped"
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", "e2e-hang", check=False)


def test_agent_killed_is_respawned_and_usable_again(e2e_daemon: Daemon, api: NexusClient) -> None:
    nexusctl_json(e2e_daemon, "vm", "run", "e2e-respawn")
    try:
        nexusctl(
            e2e_daemon, "vm", "exec", "--shell", "e2e-respawn", "--", "p=$PPID; (sleep 1; kill -9 $p) >/dev/null 2>&1 &"
        )

        def exec_works() -> bool:
            done = nexusctl(e2e_daemon, "vm", "exec", "e2e-respawn", "--", "echo", "back", check=False)
            return done.returncode == 0 and done.stdout == b"back\n"

        wait_until(exec_works, 30, "exec to work with the respawned agent", interval_s=1.0)
        assert api.get_vm("e2e-respawn")["state"] == "ready"
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", "e2e-respawn", check=False)


def test_broken_kernel_fails_and_releases_everything(e2e_daemon: Daemon, api: NexusClient) -> None:
    good = api.list_kernels()[0]
    kernels_dir = Path(good["path"]).parent.parent
    broken_version = "0.0.0-1-broken-amd64"
    broken = kernels_dir / broken_version
    _copy_broken_kernel(Path(good["path"]).parent, broken, broken_version)
    try:
        api.create_vm(name="e2e-broken", kernel=broken_version)
        done = nexusctl(e2e_daemon, "vm", "start", "e2e-broken", check=False)
        assert done.returncode == 1
        assert b"did not become ready" in done.stderr or b"QEMU did not start" in done.stderr
        vm = api.get_vm("e2e-broken")
        assert vm["state"] == "failed"
        assert vm["pid"] is None
        assert not Path(e2e_daemon.runtime_dir / "vms" / vm["id"]).exists()
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", "e2e-broken", check=False)
        shutil.rmtree(broken, ignore_errors=True)


def _copy_broken_kernel(src: Path, dst: Path, version: str) -> None:
    """A kernel entry whose bzImage is cut in half: QEMU loads it, then it fails to decompress."""
    shutil.copytree(src, dst, symlinks=True)
    (dst / "vmlinux").unlink(missing_ok=True)
    image = dst / "vmlinuz"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    meta_path = dst / "kernel.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = version
    meta.pop("vmlinux", None)
    meta_path.write_text(json.dumps(meta))


def test_two_vms_at_once(e2e_daemon: Daemon, api: NexusClient) -> None:
    names = ["e2e-two-a", "e2e-two-b"]
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            nexusctl(e2e_daemon, "vm", "run", name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        for name in names:
            out = nexusctl(e2e_daemon, "vm", "exec", name, "--", "cat", "/etc/hostname").stdout
            assert out.strip()
        assert {v["name"] for v in api.list_vms(state="ready")} >= set(names)
        for name in names:
            assert nexusctl_json(e2e_daemon, "vm", "stop", name)["state"] == "stopped"
    finally:
        for name in names:
            nexusctl(e2e_daemon, "vm", "rm", "--force", name, check=False)
