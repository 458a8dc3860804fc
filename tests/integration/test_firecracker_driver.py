"""The Firecracker driver through a real nexusd, with the fake Firecracker standing in for the binary.

The fake serves the API (bodies validated against the v1.16.1 spec, ordering rules enforced) and, on
``InstanceStart``, runs a real nexus agent on the host behind a hybrid vsock muxer, so the whole path is real
except the kernel: nexusd → driver → API calls → GuestListener (control, guest-initiated) → hello → MCP over
``CONNECT 1025`` → tool call → ``SendCtrlAltDel`` → exit. The state dir is made here: a kernel whose files are
stubs (an ELF header where the vmlinux goes; the fake never reads further) and an image row whose file is
empty, so no apt or debootstrap runs; nexusd builds the stub kernel's initramfs with the host's busybox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from nexus.assets.firecracker import FirecrackerStore
from nexus.daemon import drivers
from nexus.daemon.drivers import (
    ASSUME_KVM_ENV,
    choose_driver,
    firecracker_binary,
    kvm_runs_guests,
)
from nexus.domain import DriverError, GuestPort, LaunchSpec, Layout, VmmGone, VmmRecord, VmProcess
from nexus.vmm.firecracker import FirecrackerDriver, JailerOptions
from tests.api_client import NexusClient
from tests.fakes.firecracker import FAULTS_ENV, write_fake_binary
from tests.fakes.firecracker_host import (
    FAULT,
    FIRECRACKER_SKIPS,
    KERNEL_VERSION,
    firecracker_daemon,
    processes_mentioning,
    stub_kernel,
)
from tests.helpers import wait_until

pytestmark = FIRECRACKER_SKIPS


@pytest.fixture
def base() -> Iterator[Path]:
    """A short base dir: the VM's vsock socket paths must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="nxfc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_lifecycle_through_nexusd(base: Path) -> None:
    daemon = firecracker_daemon(base)
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            driver = api.health()["driver"]
            assert driver["name"] == "firecracker"
            assert "NEXUS_FIRECRACKER_ASSUME_KVM" in driver["reason"]
            vm = api.create_vm(name="fc-one", mem_mib=256)
            runtime = daemon.runtime_dir / "vms" / vm["id"]

            ready = api.start_vm("fc-one")
            assert (ready["state"], ready["vmm"], ready["accel"]) == ("ready", "firecracker", "kvm")
            pid = ready["pid"]
            assert (runtime / "vsock.sock_1024").exists()  # the control listener, opened before boot

            result = api.call_tool("fc-one", "run_command", {"command": ["echo", "hello from the guest"]})
            assert result["structuredContent"]["stdout"] == "hello from the guest\n"

            assert api.pause_vm("fc-one")["state"] == "paused"
            assert api.resume_vm("fc-one")["state"] == "ready"

            # The vmm setting applies at once to the VMs started from now on; this one keeps its Firecracker.
            api.set_setting("vmm", "qemu")
            assert api.health()["driver"]["name"] in ("qemu", None)  # None: no QEMU on this host
            assert api.call_tool("fc-one", "run_command", {"command": ["true"]})["structuredContent"]["exit_code"] == 0

            stopped = api.stop_vm("fc-one")
            assert (stopped["state"], stopped["pid"]) == ("stopped", None)
            states = [h["to_state"] for h in api.vm_history("fc-one")]
            assert states == ["created", "starting", "ready", "paused", "ready", "stopping", "stopped"]
            assert "powered off (VMM exit status 0)" in api.vm_history("fc-one")[-1]["reason"]
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), 5, "the fake firecracker to be reaped")
            assert not runtime.exists()
            assert processes_mentioning(str(runtime)) == []
            console = (daemon.state_dir / "vms" / vm["id"] / "console.log").read_text()
            assert "nexus.transport=vsock" in console and "vmlinux" in console

            # Started again (with Firecracker, chosen again), then killed: crashed, and the fake's agent goes with it.
            api.set_setting("vmm", "firecracker")
            assert api.health()["driver"]["name"] == "firecracker"
            assert api.start_vm("fc-one")["vmm"] == "firecracker"
            pid = api.get_vm("fc-one")["pid"]
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: api.get_vm("fc-one")["state"] == "crashed", 10, "crashed")
            assert "signal 9" in api.vm_history("fc-one")[-1]["reason"]
            wait_until(lambda: processes_mentioning(str(runtime)) == [], 5, "no process left for the VM")
            assert not runtime.exists()
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


JAILED_UID = 64123  # no passwd entry needed: the jailer only calls setuid/setgid


def test_jailed_lifecycle_through_nexusd(base: Path) -> None:
    """The jailer path: the fake jailer builds the chroot and drops to an unprivileged uid, so every file the driver
    forgot to link into the chroot or hand to that uid fails here as it would for real."""
    base.chmod(0o711)  # the fake jailer reaches the chroot through its parents (the real one pivots into it)
    daemon = firecracker_daemon(base, jailer_uid=JAILED_UID)
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            assert f"jailed as uid {JAILED_UID}" in api.health()["driver"]["reason"]
            vm = api.create_vm(name="fc-jailed")
            ready = api.start_vm("fc-jailed")
            assert ready["state"] == "ready"
            status = Path(f"/proc/{ready['pid']}/status").read_text()
            assert f"Uid:\t{JAILED_UID}\t" in status  # the VMM itself runs unprivileged
            chroot = base / "jail" / "firecracker" / vm["id"]
            drive = next(d for d in api.list_drives() if d["name"] == "fc-jailed.root")
            root_drive = daemon.state_dir / "drives" / drive["id"] / "disk.img"
            assert (chroot / "root" / "root.img").samefile(root_drive)  # a hard link, not a copy
            assert (chroot / "root" / "vmlinux").exists() and (chroot / "root" / "initrd.img").exists()
            assert root_drive.stat().st_uid == JAILED_UID
            assert (chroot / "root" / "vsock.sock_1024").stat().st_uid == JAILED_UID

            result = api.call_tool("fc-jailed", "run_command", {"command": ["id", "-u"]})
            assert result["structuredContent"]["stdout"] == f"{JAILED_UID}\n"
            fc = [r for r in daemon.log_text().splitlines() if "firecracker pid" in r]
            assert fc and f"jailed as uid {JAILED_UID}" in fc[-1]

            assert api.stop_vm("fc-jailed")["state"] == "stopped"
            assert not chroot.exists()  # links and Firecracker's copy gone ...
            assert root_drive.exists()  # ... the drive itself kept

            pid = api.start_vm("fc-jailed")["pid"]  # a second boot builds the chroot anew
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: api.get_vm("fc-jailed")["state"] == "crashed", 10, "crashed")
            wait_until(lambda: not chroot.exists(), 5, "the chroot of the crashed VM to be removed")
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def _checkpoint_restore_fork(
    api: NexusClient, daemon_state: Path, runtime_dir: Callable[[str], Path], name: str
) -> list[int]:
    """Checkpoint ``name`` (running), restore it (a new Firecracker loads the snapshot) and fork it (another VM's
    Firecracker loads it, with that VM's own drive and sockets); both answer tool calls. Returns every pid seen."""
    vm = api.get_vm(name)
    first = vm["pid"]
    snap = api.request("POST", f"/v1/vms/{name}/checkpoints", json={"name": "c1"})
    assert snap["state"]["vmm"] == "firecracker" and snap["state"]["size_bytes"] >= 256 << 20
    state_dir = daemon_state / "snapshots" / snap["id"] / "vmm"
    assert sorted(p.name for p in state_dir.iterdir()) == ["firecracker.mem", "firecracker.vmstate"]
    assert api.get_vm(name)["state"] == "ready"  # resumed once its drives were copied
    assert api.call_tool(name, "run_command", {"command": ["true"]})["structuredContent"]["exit_code"] == 0

    restored = api.request("POST", f"/v1/vms/{name}/snapshots/c1/restore")
    assert restored["state"] == "ready" and restored["pid"] != first
    assert "restoring checkpoint c1" in [h["reason"] for h in api.vm_history(name)][-2]
    result = api.call_tool(name, "run_command", {"command": ["echo", "back"]})
    assert result["structuredContent"]["stdout"] == "back\n"

    fork = api.request("POST", f"/v1/vms/{name}/fork", json={"name": f"{name}-f", "checkpoint": "c1"})
    assert fork["state"] == "ready" and fork["pid"] not in (first, restored["pid"])
    result = api.call_tool(fork["name"], "run_command", {"command": ["echo", "fork"]})
    assert result["structuredContent"]["stdout"] == "fork\n"
    assert api.get_vm(name)["state"] == "ready"  # the parent runs on
    drives = {d["name"]: d["id"] for d in api.list_drives()}
    fork_drive = daemon_state / "drives" / drives[f"{fork['name']}.root"] / "disk.img"
    assert (runtime_dir(fork["id"]) / "root.img").samefile(fork_drive)  # under the name the snapshot holds
    assert not (runtime_dir(fork["id"]) / "root.img").samefile(runtime_dir(vm["id"]) / "root.img")
    return [first, restored["pid"], fork["pid"]]


def test_checkpoint_restore_and_fork_through_nexusd(base: Path) -> None:
    """The stand-in validates ``PUT /snapshot/create`` and ``/snapshot/load`` (with ``network_overrides`` absent:
    no network here, and ``vsock_override``, which it has as v1.16.1 does) against the spec, writes and reads the
    files, and a new agent dials the new Firecracker's listener; nexusd asks it to say hello."""
    daemon = firecracker_daemon(base)
    pids: list[int] = []
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            vm = api.create_vm(name="fc-ck", mem_mib=256)
            api.start_vm("fc-ck")
            pids = _checkpoint_restore_fork(api, daemon.state_dir, lambda i: daemon.runtime_dir / "vms" / i, "fc-ck")
            console = (daemon.state_dir / "vms" / vm["id"] / "console.log").read_text()
            assert "restored from firecracker.vmstate" not in console  # a direct Firecracker gets absolute paths
            assert "restored from /" in console  # (each launch starts the console log anew)
            for name in ("fc-ck", "fc-ck-f"):
                assert api.stop_vm(name)["state"] == "stopped"
        for pid in pids:
            wait_until(partial(_gone, pid), 5, "every Firecracker to be reaped")
        assert processes_mentioning(str(daemon.runtime_dir / "vms")) == []
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_jailed_checkpoint_restore_and_fork_through_nexusd(base: Path) -> None:
    """Jailed: the snapshot is written as the jailed uid into files made for it in the chroot, moved out to the
    checkpoint (root's), and hard-linked into each new chroot to be loaded."""
    base.chmod(0o711)
    daemon = firecracker_daemon(base, jailer_uid=JAILED_UID)
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            api.create_vm(name="fc-jck", mem_mib=256)
            api.start_vm("fc-jck")
            jail = base / "jail" / "firecracker"
            _checkpoint_restore_fork(api, daemon.state_dir, lambda i: jail / i / "root", "fc-jck")
            snapshots = list((daemon.state_dir / "snapshots").glob("*/vmm/firecracker.mem"))
            assert snapshots and all(p.stat().st_uid == 0 for p in snapshots)
            for name in ("fc-jck", "fc-jck-f"):
                assert api.stop_vm(name)["state"] == "stopped"
            assert list(jail.iterdir()) == []
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_a_refused_snapshot_load_fails_the_restore_and_leaves_nothing(base: Path) -> None:
    faults = [{"method": "PUT", "path": "/snapshot/load", "fault_message": FAULT}]
    daemon = firecracker_daemon(base, {FAULTS_ENV: json.dumps(faults)})
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            vm = api.create_vm(name="fc-bad")
            api.start_vm("fc-bad")
            api.request("POST", "/v1/vms/fc-bad/checkpoints", json={"name": "c1"})
            with pytest.raises(Exception, match="fake fault injected"):
                api.request("POST", "/v1/vms/fc-bad/snapshots/c1/restore")
            assert api.get_vm("fc-bad")["state"] == "failed"
            runtime = daemon.runtime_dir / "vms" / vm["id"]
            wait_until(lambda: processes_mentioning(str(runtime)) == [], 5, "no process left for the VM")
            assert not runtime.exists()
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_jailed_vm_is_adopted_by_the_next_daemon(base: Path) -> None:
    """nexusd killed hard: its jailed Firecracker runs on; the next nexusd proves the pid is that VM's VMM (start
    time, and the ``--id=`` the jailer gave it, since a jailed argv names no runtime dir), listens for the agent
    again (as the jailed uid), and the VM is ready with the same pid; a stop then powers it off gracefully."""
    base.chmod(0o711)
    daemon = firecracker_daemon(base, jailer_uid=JAILED_UID)
    pid = 0
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            vm = api.create_vm(name="fc-adopt")
            pid = api.start_vm("fc-adopt")["pid"]
        daemon.proc.kill()  # the daemon dies; its VM keeps running
        daemon.proc.wait()
        assert Path(f"/proc/{pid}").exists()
        chroot = base / "jail" / "firecracker" / vm["id"]
        daemon = firecracker_daemon(base, jailer_uid=JAILED_UID)
        with NexusClient(daemon.socket, timeout_s=60) as api:
            wait_until(lambda: api.get_vm("fc-adopt")["state"] == "ready", 20, "the adopted VM to be ready")
            assert api.get_vm("fc-adopt")["pid"] == pid
            reasons = [h["reason"] for h in api.vm_history("fc-adopt")]
            assert f"nexusd restarted; re-attaching to VMM pid {pid}" in reasons
            assert (chroot / "root" / "vsock.sock_1024").stat().st_uid == JAILED_UID
            result = api.call_tool("fc-adopt", "run_command", {"command": ["id", "-u"]})
            assert result["structuredContent"]["stdout"] == f"{JAILED_UID}\n"
            stopped = api.stop_vm("fc-adopt")
            assert stopped["state"] == "stopped"
            assert "powered off" in api.vm_history("fc-adopt")[-1]["reason"]
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 5, "the VMM to be gone")
        assert not chroot.exists()
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_sigterm_leaves_vms_running_and_a_vmm_dead_meanwhile_is_crashed(base: Path) -> None:
    daemon = firecracker_daemon(base, stop_vms_on_exit=False)
    pid = 0
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            vm = api.create_vm(name="fc-left")
            pid = api.start_vm("fc-left")["pid"]
        assert daemon.stop() == 0
        assert "left 1 VM(s) running for the next nexusd: fc-left" in daemon.log_text()
        assert Path(f"/proc/{pid}").exists() and not _zombie(pid)
        runtime = daemon.runtime_dir / "vms" / vm["id"]
        assert runtime.exists()  # its sockets are the next nexusd's way back in
        os.kill(pid, signal.SIGKILL)  # dies while no nexusd watches
        wait_until(lambda: _zombie(pid) or not Path(f"/proc/{pid}").exists(), 5, "the VMM to die")
        daemon = firecracker_daemon(base, stop_vms_on_exit=False)
        with NexusClient(daemon.socket, timeout_s=60) as api:
            after = api.get_vm("fc-left")
            assert (after["state"], after["pid"]) == ("crashed", None)
            reason = api.vm_history("fc-left")[-1]["reason"]
            assert reason.startswith("VMM exited while nexusd was down"), reason
        assert not runtime.exists()
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def _present(*paths: str | Path) -> bool:
    return all(Path(p).exists() for p in paths)


def _zombie(pid: int) -> bool:
    """Exited, and not reaped by its parent (here the orphaned VMM's new parent reaps nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_instance_start_fault_fails_the_vm(base: Path) -> None:
    faults = [{"method": "PUT", "path": "/actions", "fault_message": FAULT, "action_type": "InstanceStart"}]
    daemon = firecracker_daemon(base, {FAULTS_ENV: json.dumps(faults)})
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            vm = api.create_vm(name="fc-fault")
            with pytest.raises(DriverError) as caught:
                api.start_vm("fc-fault")
            assert FAULT in caught.value.message
            after = api.get_vm("fc-fault")
            assert (after["state"], after["pid"]) == ("failed", None)
            assert FAULT in api.vm_history("fc-fault")[-1]["reason"]
            runtime = daemon.runtime_dir / "vms" / vm["id"]
            assert not runtime.exists()
            assert processes_mentioning(str(runtime)) == []
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_driver_kill_leaves_no_guest_behind(base: Path) -> None:
    """Without nexusd: launch, see the agent up, kill; the fake and its agent are gone, the dir removed."""
    kernel = stub_kernel(base / "kernels") / "vmlinux"
    (base / "root.ext4").write_bytes(b"")
    spec = LaunchSpec(
        vm_id="abc123",
        name="direct",
        vcpus=1,
        mem_mib=128,
        kernel=kernel,
        kernel_version=KERNEL_VERSION,
        initrd=kernel,
        root_drive=base / "root.ext4",
        console_log=base / "console.log",
        runtime_dir=base / "run" / "abc123",
        cmdline_extra=("quiet",),
    )

    async def hello(process: VmProcess) -> None:
        reader, writer = await process.connect(GuestPort.CONTROL)
        first = b""
        while not first.strip():
            first = await asyncio.wait_for(reader.readline(), 10)
        assert b"nexus/hello" in first
        writer.close()

    async def scenario() -> None:
        records: list[VmmRecord] = []
        process = await FirecrackerDriver(str(write_fake_binary(base))).launch(spec, records.append)
        try:
            assert records == [process.record] and records[0].start_time > 0
            await hello(process)
            agents = processes_mentioning(str(spec.runtime_dir / "vsock.sock"))
            assert len(agents) == 1  # the agent (the fake names only the API socket)
            await process.detach()  # as nexusd does on exit: the VMM runs on, its files stay
            assert _present(f"/proc/{process.pid}", spec.runtime_dir / "api.sock")

            other = FirecrackerDriver("firecracker")  # adoption needs no binary: the record says where it all is
            with pytest.raises(VmmGone, match="another process"):
                await other.adopt("abc123", "direct", replace(records[0], start_time=records[0].start_time + 1))
            with pytest.raises(VmmGone, match="does not run this VM"):
                await other.adopt(
                    "ffffff", "direct", replace(records[0], detail={**records[0].detail, "runtime_dir": "/x"})
                )
            process = await other.adopt("abc123", "direct", records[0])
            await hello(process)  # the agent redialled the new listener and said hello again
        finally:
            assert (await process.kill()).code in (-signal.SIGKILL, None)
        wait_until(lambda: processes_mentioning(str(spec.runtime_dir)) == [], 5, "the agent to die")
        assert not spec.runtime_dir.exists()

    asyncio.run(scenario())


def test_not_elf_kernel_is_refused(base: Path) -> None:
    bzimage = base / "vmlinuz"
    bzimage.write_bytes(b"MZ")
    spec = LaunchSpec("abc124", "bz", 1, 128, bzimage, "x", bzimage, bzimage, base / "c.log", base / "run" / "x")

    async def scenario() -> None:
        with pytest.raises(DriverError, match="ELF vmlinux"):
            await FirecrackerDriver(str(write_fake_binary(base))).launch(spec, lambda _: None)

    asyncio.run(scenario())
    assert not (base / "run" / "x").exists()


# --- driver choice (nexus.daemon.drivers) ----------------------------------------------------------------------


def _accel_cache(path: Path, host: str, accel: str, reason: str, kvm_probed: bool = True) -> Path:
    entry = {"accel": accel, "reason": reason, "probed_at": "2026-01-01T00:00:00+00:00", "kvm_probed": kvm_probed}
    path.write_text(json.dumps({f"qemu=7.2;kernel=6.1.0-1-cloud-amd64;host={host}": entry}))
    return path


def test_kvm_evidence_from_the_probe_cache(tmp_path: Path) -> None:
    cache = tmp_path / "accel.json"
    assert kvm_runs_guests(cache, "6.1.0")[0] is None
    _accel_cache(cache, "6.1.0", "kvm", "KVM: a probe guest reached its init in 0.40 s (kvm_intel)")
    assert kvm_runs_guests(cache, "6.1.0") == (True, "KVM: a probe guest reached its init in 0.40 s (kvm_intel)")
    assert kvm_runs_guests(cache, "6.2.0")[0] is None  # another host kernel proves nothing
    _accel_cache(cache, "6.1.0", "tcg", "TCG: /dev/kvm is there (kvm_pvm) but cannot run this guest: slow")
    assert kvm_runs_guests(cache, "6.1.0")[0] is False
    _accel_cache(cache, "6.1.0", "tcg", "TCG: KVM unusable: /dev/kvm does not exist", kvm_probed=False)
    assert kvm_runs_guests(cache, "6.1.0")[0] is None  # not a verdict on KVM's speed


def test_driver_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = Layout(state_dir=tmp_path / "state", runtime_dir=tmp_path / "run")
    path = os.environ.get("PATH", "")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv(ASSUME_KVM_ENV, raising=False)

    driver, reason = choose_driver("firecracker", layout)
    assert driver is None
    assert "asks for firecracker" in reason and "no firecracker binary on PATH, pulled" in reason

    pulled = tmp_path / "pulled-firecracker"  # what `nexusctl firecracker pull --path` registers
    pulled.write_text("#!/bin/sh\necho 'Firecracker v1.16.1'\n")
    pulled.chmod(0o755)
    FirecrackerStore(layout.cache_dir).add_local(pulled)
    assert firecracker_binary(None, layout.cache_dir)[1] == "Firecracker 1.16.1 from the cache"
    FirecrackerStore(layout.cache_dir).remove("1.16.1")
    assert "is not an executable file" in choose_driver("firecracker", layout, tmp_path / "missing")[1]

    fake = write_fake_binary(tmp_path)
    monkeypatch.setenv(ASSUME_KVM_ENV, "1")
    driver, reason = choose_driver("auto", layout, fake)
    assert driver is not None and driver.name == "firecracker" and driver.reason == reason
    jailer = JailerOptions(tmp_path / "no-jailer", uid=1000, gid=1000)
    driver, reason = choose_driver("firecracker", layout, fake, jailer)
    assert driver is None and "jailer_binary" in reason and "is not an executable file" in reason
    driver, reason = choose_driver("firecracker", layout, fake, replace(jailer, binary=fake))
    assert driver is not None and "jailed as uid 1000" in reason
    monkeypatch.delenv(ASSUME_KVM_ENV)

    monkeypatch.setattr(drivers, "kvm_device_problem", lambda: None)  # as on a host where /dev/kvm opens
    layout.cache_dir.mkdir(parents=True, exist_ok=True)
    _accel_cache(layout.cache_dir / "accel.json", platform.release(), "tcg", "TCG: /dev/kvm is there (kvm_pvm): slow")
    driver, reason = choose_driver("firecracker", layout, fake)
    assert driver is None and "KVM cannot run ordinary guests" in reason
    monkeypatch.setenv("PATH", path)
    if shutil.which("qemu-system-x86_64") is not None:
        driver, reason = choose_driver("auto", layout, fake)  # falls back to QEMU and says why not Firecracker
        assert driver is not None and driver.name == "qemu"
        assert "not firecracker: KVM cannot run ordinary guests" in driver.reason
