"""The jailer argv, the direct firecracker argv, the chroot layout and placing files into the chroot."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path, PurePosixPath

import pytest

from nexus.domain import DriverError, Invalid, LaunchSpec
from nexus.vmm.firecracker import (
    BootSource,
    Drive,
    FirecrackerDriver,
    JailerLaunch,
    JailerOptions,
    LogLevel,
    Placement,
    boot_args,
    cgroup_dirs,
    chroot_layout,
    firecracker_argv,
    jailer_argv,
    microvm_config,
    place_files,
    plan_chroot,
    plan_links,
    root_drive,
)

BASE = Path("/srv/jailer")
EXEC = Path("/opt/fc/firecracker-v1.16.1")


def launch(**kw: object) -> JailerLaunch:
    args: dict[str, object] = {"vm_id": "vm-1", "exec_file": EXEC, "uid": 1234, "gid": 1235, "chroot_base": BASE}
    args.update(kw)
    return JailerLaunch(**args)  # type: ignore[arg-type]


def test_jailer_argv_minimal() -> None:
    assert jailer_argv(launch()) == [
        "jailer",
        "--id",
        "vm-1",
        "--exec-file",
        str(EXEC),
        "--uid",
        "1234",
        "--gid",
        "1235",
        "--chroot-base-dir",
        str(BASE),
        "--",
        "--api-sock",
        "/run/firecracker.socket",
    ]


def test_jailer_argv_all_options() -> None:
    argv = jailer_argv(
        launch(
            netns="nx-vm-1",
            cgroups=(("cpu.max", "50000 100000"), ("memory.max", "536870912")),
            parent_cgroup="nexus",
            new_pid_ns=True,
            daemonize=True,
            level=LogLevel.DEBUG,
            jailer_binary=Path("/opt/fc/jailer"),
        )
    )
    assert argv[0] == "/opt/fc/jailer"
    sep = argv.index("--")
    jailer, firecracker = argv[1:sep], argv[sep + 1 :]
    assert jailer[jailer.index("--netns") + 1] == "/var/run/netns/nx-vm-1"
    assert jailer[jailer.index("--cgroup-version") + 1] == "2"
    cgroups = [jailer[i + 1] for i, a in enumerate(jailer) if a == "--cgroup"]
    assert cgroups == ["cpu.max=50000 100000", "memory.max=536870912"]  # one argv element each, spaces kept
    assert jailer[jailer.index("--parent-cgroup") + 1] == "nexus"
    assert jailer[-2:] == ["--new-pid-ns", "--daemonize"]
    assert firecracker == ["--api-sock", "/run/firecracker.socket", "--level", "Debug"]
    assert "--id" not in firecracker  # the jailer passes --id to firecracker itself


def test_no_cgroup_version_without_cgroups() -> None:
    assert "--cgroup-version" not in jailer_argv(launch(netns="n1"))


@pytest.mark.parametrize(
    "kw",
    [
        {"vm_id": "bad id"},
        {"vm_id": "x" * 65},
        {"vm_id": "under_score"},
        {"uid": -1},
        {"netns": "/var/run/netns/x"},
        {"netns": ".."},
        {"cgroups": (("cpu", "1"),)},
        {"cgroups": (("cpu.max=1", "1"),)},
        {"cgroup_version": 3},
        {"api_sock": PurePosixPath("run/fc.sock")},
    ],
)
def test_jailer_launch_refuses_bad_values(kw: dict[str, object]) -> None:
    with pytest.raises(Invalid):
        launch(**kw)


def test_firecracker_argv() -> None:
    assert firecracker_argv(api_sock=Path("/run/nexus/vm-1/fc.sock"), vm_id="vm-1") == [
        "firecracker",
        "--api-sock",
        "/run/nexus/vm-1/fc.sock",
        "--id",
        "vm-1",
    ]
    argv = firecracker_argv(api_sock=Path("/s"), vm_id="a", binary=Path("/opt/fc/firecracker"), level=LogLevel.WARNING)
    assert argv == ["/opt/fc/firecracker", "--api-sock", "/s", "--id", "a", "--level", "Warning"]
    with pytest.raises(Invalid):
        firecracker_argv(api_sock=Path("/s"), vm_id="")


def test_chroot_layout_paths() -> None:
    layout = chroot_layout(BASE, EXEC, "vm-1")
    assert layout.root == Path("/srv/jailer/firecracker-v1.16.1/vm-1/root")
    assert layout.api_socket == layout.root / "run" / "firecracker.socket"
    assert layout.host_path("/v.sock") == layout.root / "v.sock"
    with pytest.raises(Invalid):
        layout.host_path("relative")
    with pytest.raises(Invalid):
        layout.host_path("/../escape")


def test_plan_rewrites_boot_and_drives_to_chroot_paths() -> None:
    layout = chroot_layout(BASE, EXEC, "vm-1")
    boot = BootSource(Path("/cache/k/vmlinux-6.1"), boot_args(), Path("/cache/k/initramfs.cpio.gz"))
    drives = [root_drive(Path("/state/vms/1/root.ext4")), Drive("base", Path("/images/base.img"), read_only=True)]
    plan = plan_chroot(layout, boot, drives)
    assert plan.boot == BootSource(PurePosixPath("/vmlinux"), boot.boot_args, PurePosixPath("/initrd.img"))
    assert [(d.drive_id, str(d.path), d.read_only) for d in plan.drives] == [
        ("root", "/root.ext4", False),
        ("base", "/data0.img", True),
    ]
    assert [(str(f.source), f.target, f.writable) for f in plan.files] == [
        ("/cache/k/vmlinux-6.1", layout.root / "vmlinux", False),
        ("/cache/k/initramfs.cpio.gz", layout.root / "initrd.img", False),
        ("/state/vms/1/root.ext4", layout.root / "root.ext4", True),
        ("/images/base.img", layout.root / "data0.img", False),
    ]


def test_plan_without_initrd_and_name_clash() -> None:
    layout = chroot_layout(BASE, EXEC, "vm-1")
    plan = plan_chroot(layout, BootSource(Path("/k/vmlinux"), "console=ttyS0"), [])
    assert plan.boot.initrd is None
    assert len(plan.files) == 1
    with pytest.raises(Invalid):
        plan_chroot(
            layout, BootSource(Path("/k/vmlinux"), ""), [root_drive(Path("/a.ext4")), root_drive(Path("/b.ext4"))]
        )


def _sources(tmp_path: Path) -> tuple[BootSource, list[Drive]]:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("vmlinux", "initrd", "root.ext4", "base.img"):
        (src / name).write_bytes(name.encode())
    boot = BootSource(src / "vmlinux", boot_args(), src / "initrd")
    return boot, [root_drive(src / "root.ext4"), Drive("base", src / "base.img", read_only=True)]


def test_place_files_hard_links(tmp_path: Path) -> None:
    boot, drives = _sources(tmp_path)
    plan = plan_chroot(chroot_layout(tmp_path / "jail", EXEC, "vm-1"), boot, drives)
    done = place_files(plan.files)
    assert [p for _, p in done] == [Placement.LINKED] * 4
    for f in plan.files:
        assert os.path.samefile(f.source, f.target)
    assert (plan.layout.root / "root.ext4").read_bytes() == b"root.ext4"
    # again: already in place
    assert [p for _, p in place_files(plan.files)] == [Placement.PRESENT] * 4


def test_place_files_copies_across_filesystems(tmp_path: Path) -> None:
    boot, drives = _sources(tmp_path)
    plan = plan_chroot(chroot_layout(tmp_path / "jail", EXEC, "vm-1"), boot, drives[1:])

    def exdev(_src: Path, _dst: Path) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    done = place_files(plan.files, link=exdev)
    assert [p for _, p in done] == [Placement.COPIED] * 3
    for f in plan.files:
        assert f.target.read_bytes() == f.source.read_bytes()
        assert not os.path.samefile(f.source, f.target)


def test_place_files_refuses_to_copy_a_writable_drive(tmp_path: Path) -> None:
    boot, drives = _sources(tmp_path)
    plan = plan_chroot(chroot_layout(tmp_path / "jail", EXEC, "vm-1"), boot, drives[:1])

    def exdev(_src: Path, _dst: Path) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    with pytest.raises(DriverError, match="different filesystems"):
        place_files(plan.files, link=exdev)
    done = place_files(plan.files, link=exdev, copy_writable=True)
    assert done[-1][1] is Placement.COPIED


def test_place_files_replaces_a_stale_target_and_reports_errors(tmp_path: Path) -> None:
    boot, drives = _sources(tmp_path)
    plan = plan_chroot(chroot_layout(tmp_path / "jail", EXEC, "vm-1"), boot, drives)
    plan.layout.root.mkdir(parents=True)
    (plan.layout.root / "vmlinux").write_bytes(b"stale")
    place_files(plan.files)
    assert (plan.layout.root / "vmlinux").read_bytes() == b"vmlinux"
    missing = plan_chroot(plan.layout, BootSource(tmp_path / "nope", ""), [])
    with pytest.raises(DriverError, match="cannot place"):
        place_files(missing.files)


def test_place_files_across_a_real_filesystem_boundary(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm on another filesystem than tmp_path")
    boot, _ = _sources(tmp_path)
    jail = shm / f"nexus-test-jail-{os.getpid()}"
    try:
        plan = plan_chroot(chroot_layout(jail, EXEC, "vm-1"), boot, [])
        assert [p for _, p in place_files(plan.files)] == [Placement.COPIED] * 2
    finally:
        shutil.rmtree(jail, ignore_errors=True)


def _spec(tmp: Path) -> LaunchSpec:
    return LaunchSpec(
        vm_id="0123abcd",
        name="jailed",
        vcpus=2,
        mem_mib=256,
        kernel=tmp / "cache" / "vmlinux",
        kernel_version="6.1.0-1-cloud-amd64",
        initrd=tmp / "cache" / "initrd.img",
        root_drive=tmp / "vms" / "0123abcd" / "root.img",
        console_log=tmp / "vms" / "0123abcd" / "console.log",
        runtime_dir=tmp / "run" / "0123abcd",
    )


def test_jailed_driver_argv_and_in_chroot_config(tmp_path: Path) -> None:
    jailer = JailerOptions(Path("/usr/bin/jailer"), uid=123, gid=100, chroot_base=Path("/srv/jail"))
    driver = FirecrackerDriver("/usr/bin/firecracker", jailer=jailer)
    spec = _spec(tmp_path)
    assert driver.launch_argv(spec) == [
        "/usr/bin/jailer",
        "--id",
        "0123abcd",
        "--exec-file",
        "/usr/bin/firecracker",
        "--uid",
        "123",
        "--gid",
        "100",
        "--chroot-base-dir",
        "/srv/jail",
        "--",
        "--api-sock",
        "/api.sock",
    ]
    files = driver.runtime_files(spec)
    assert files.api_socket == Path("/srv/jail/firecracker/0123abcd/root/api.sock")
    assert files.stderr_file == spec.runtime_dir / "firecracker.stderr"  # nexusd's own file stays outside
    config = microvm_config(spec, files)
    assert config.vsock is not None and str(config.vsock.uds_path) == "/vsock.sock"
    assert config.logger is not None and str(config.logger.log_path) == "/firecracker.log"
    layout = driver.chroot("0123abcd")
    assert layout is not None and layout.instance_dir == Path("/srv/jail/firecracker/0123abcd")


def test_direct_driver_names_its_files_relative_to_the_runtime_dir(tmp_path: Path) -> None:
    """Run directly, Firecracker works in the runtime dir and is given names relative to it (the same for every VM,
    as a jailed one's in-chroot names are), so a snapshot names the files of whichever VM loads it."""
    driver = FirecrackerDriver("/usr/bin/firecracker")
    spec = _spec(tmp_path)
    files = driver.runtime_files(spec)
    assert driver.chroot("0123abcd") is None
    assert driver.launch_argv(spec)[:3] == ["/usr/bin/firecracker", "--api-sock", str(spec.runtime_dir / "api.sock")]
    config = microvm_config(spec, files)
    assert config.vsock is not None and str(config.vsock.uds_path) == "vsock.sock"
    assert config.logger is not None and str(config.logger.log_path) == "firecracker.log"
    assert files.vsock_socket == spec.runtime_dir / "vsock.sock"  # where nexusd finds it
    drives = [root_drive(Path("/state/r.ext4")), Drive("d1", Path("/state/d1.ext4")), Drive("d2", Path("/x/d2.img"))]
    links, named = plan_links(spec.runtime_dir, drives)
    assert [str(d.path) for d in named] == ["root.ext4", "data0.ext4", "data1.img"]
    assert [(f.source, f.target) for f in links] == [
        (Path("/state/r.ext4"), spec.runtime_dir / "root.ext4"),
        (Path("/state/d1.ext4"), spec.runtime_dir / "data0.ext4"),
        (Path("/x/d2.img"), spec.runtime_dir / "data1.img"),
    ]


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"uid": 0}, "run Firecracker as root"),
        ({"gid": -1}, "must not be negative"),
        ({"chroot_base": Path("jail")}, "absolute path"),
    ],
)
def test_jailer_options_refuse_bad_values(kw: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"binary": Path("/usr/bin/jailer"), "uid": 123, "gid": 100}
    args.update(kw)
    with pytest.raises(Invalid, match=needle):
        JailerOptions(**args)  # type: ignore[arg-type]


def test_jailer_refuses_an_exec_file_without_firecracker_in_its_name() -> None:
    with pytest.raises(Invalid, match="whose name contains"):
        launch(exec_file=Path("/usr/bin/fc"))


MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_jailed_driver_passes_cgroups_and_a_pid_namespace(tmp_path: Path) -> None:
    jailer = JailerOptions(
        Path("/usr/bin/jailer"), 123, 100, cgroup_version=1, cgroups=(("cpu.shares", "512"),), new_pid_ns=True
    )
    argv = FirecrackerDriver("/usr/bin/firecracker", jailer=jailer).launch_argv(_spec(tmp_path))
    options = argv[argv.index("--chroot-base-dir") + 2 : argv.index("--")]
    # The parent cgroup is named even though it is the jailer's default, so the driver knows which dirs to remove.
    expected = ["--cgroup-version", "1", "--cgroup", "cpu.shares=512", "--parent-cgroup", "firecracker"]
    assert options == [*expected, "--new-pid-ns"]


def test_cgroup_dirs_follow_the_hosts_hierarchy() -> None:
    cg = (("cpu.shares", "512"), ("cpuacct.usage", "0"), ("memory.limit_in_bytes", "1G"))
    v1 = launch(cgroup_version=1, cgroups=cg, parent_cgroup="nexus")
    assert cgroup_dirs(v1, MOUNTS) == (
        Path("/sys/fs/cgroup/cpu,cpuacct/nexus/vm-1"),  # one hierarchy for two controllers: one dir
        Path("/sys/fs/cgroup/memory/nexus/vm-1"),
    )
    v2 = launch(cgroups=(("memory.max", "1G"),))
    assert cgroup_dirs(v2, MOUNTS) == (Path("/sys/fs/cgroup/unified") / EXEC.name / "vm-1",)
    assert cgroup_dirs(launch(), MOUNTS) == ()  # no cgroups asked: the jailer makes none
    with pytest.raises(Invalid, match="no cgroup v1 hierarchy has the pids controller"):
        cgroup_dirs(launch(cgroup_version=1, cgroups=(("pids.max", "10"),)), MOUNTS)
    with pytest.raises(Invalid, match="no cgroup2 mount"):
        cgroup_dirs(v2, MOUNTS.replace("cgroup2", "tmpfs"))
