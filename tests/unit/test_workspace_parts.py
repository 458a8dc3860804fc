"""Pure parts of workspaces: data drives in the QEMU argv and the Firecracker config (checked against the v1.16.1
spec), the nexus.mounts kernel argument, mount path rules, finding a disk by serial, ext4 argv, btrfs ioctl numbers."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from nexus.agent.drives import find_disk
from nexus.domain import DataDrive, Invalid, LaunchSpec
from nexus.protocol import decode_mounts, encode_mounts
from nexus.services.drives import check_mount_path, root_drive_name
from nexus.vmm.firecracker.config import ROOT_DRIVE_ID, data_drive, preboot_requests
from nexus.vmm.firecracker.driver import RuntimeFiles, microvm_config
from nexus.vmm.qemu.argv import QemuLaunch, qemu_argv
from nexus.workspaces import btrfs
from nexus.workspaces.ext4 import mkfs_argv, resize_argv
from tests.fakes.firecracker_spec import spec_validator

DRIVES = (DataDrive("a1b2c3d4e5f6", Path("/s/drives/a1b2c3d4e5f6/disk.img")), DataDrive("ro", Path("/x,y"), True))


def _qemu(**kw: object) -> list[str]:
    base: dict[str, object] = {
        "kernel": Path("/k"),
        "initrd": Path("/i"),
        "root_drive": Path("/r.img"),
        "qmp_socket": Path("/q.sock"),
        "console_log": Path("/c.log"),
        "tsc_khz": 1000,
    }
    return qemu_argv(QemuLaunch(**{**base, **kw}))  # type: ignore[arg-type]


def test_qemu_data_drives_follow_the_root_with_their_id_as_serial() -> None:
    argv = _qemu(data_drives=DRIVES)
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device" and "virtio-blk" in argv[i + 1]]
    assert drives[0].startswith("id=root,")
    assert drives[1] == "id=da1b2c3d4e5f6,file=/s/drives/a1b2c3d4e5f6/disk.img,format=raw,if=none,discard=unmap"
    assert drives[2] == "id=dro,file=/x,,y,format=raw,if=none,discard=unmap,readonly=on"
    assert devices == [
        "virtio-blk-device,drive=root",
        "virtio-blk-device,drive=da1b2c3d4e5f6,serial=a1b2c3d4e5f6",
        "virtio-blk-device,drive=dro,serial=ro",
    ]


@pytest.mark.parametrize("bad", ["", "x" * 21, "a-b", "a,b", "a b"])
def test_qemu_refuses_drive_ids_that_are_no_serial(bad: str) -> None:
    with pytest.raises(Invalid, match="drive id"):
        _qemu(data_drives=(DataDrive(bad, Path("/d")),))


def test_qemu_refuses_duplicate_drive_ids() -> None:
    with pytest.raises(Invalid, match="unique"):
        _qemu(data_drives=(DataDrive("a", Path("/1")), DataDrive("a", Path("/2"))))


def test_firecracker_data_drives_validate_against_the_spec(tmp_path: Path) -> None:
    closed = spec_validator(closed=True)
    launch = LaunchSpec(
        vm_id="v",
        name="v",
        vcpus=1,
        mem_mib=256,
        kernel=Path("/k/vmlinux"),
        kernel_version="6.1",
        initrd=Path("/k/initrd"),
        root_drive=Path("/s/root.img"),
        console_log=tmp_path / "console.log",
        runtime_dir=tmp_path,
        cmdline_extra=(encode_mounts([("a1b2c3d4e5f6", "/data")]),),
        data_drives=DRIVES,
    )
    cfg = microvm_config(launch, RuntimeFiles.direct(tmp_path))
    assert [(d.drive_id, d.is_root_device, d.read_only) for d in cfg.drives] == [
        ("root", True, False),
        ("a1b2c3d4e5f6", False, False),
        ("ro", False, True),
    ]
    assert "nexus.mounts=a1b2c3d4e5f6:/data" in cfg.boot.boot_args.split()
    drive_requests = [r for r in preboot_requests(cfg) if r.path.startswith("/drives/")]
    assert [r.path for r in drive_requests] == ["/drives/root", "/drives/a1b2c3d4e5f6", "/drives/ro"]
    definition = closed.body_definition("PUT", "/drives/{drive_id}")
    assert definition is not None
    for request in drive_requests:
        assert closed.errors(definition, request.body) == [], request


def test_firecracker_data_drive_cannot_take_the_root_id() -> None:
    with pytest.raises(Invalid, match="root"):
        data_drive(ROOT_DRIVE_ID, PurePosixPath("/d"))


def test_mounts_argument_round_trip() -> None:
    arg = encode_mounts([("a1", "/data"), ("b2", "/srv/cache")])
    assert arg == "nexus.mounts=a1:/data,b2:/srv/cache"
    assert decode_mounts(arg.partition("=")[2]) == [("a1", "/data"), ("b2", "/srv/cache")]
    assert encode_mounts([]) == "nexus.mounts="
    assert decode_mounts("") == []
    assert decode_mounts("a1:/ok,broken,:/x,b:relative") == [("a1", "/ok")]


@pytest.mark.parametrize("good", ["/data", "/srv/cache-1", "/home/agent/work_dir", "/mnt/v1.2"])
def test_mount_paths_accepted(good: str) -> None:
    assert check_mount_path(good) == good


@pytest.mark.parametrize("bad", ["data", "/", "/a b", "/a,b", "/a:b", "/a/../etc", "/proc", "/etc", "/data/", ""])
def test_mount_paths_refused(bad: str) -> None:
    with pytest.raises(Invalid):
        check_mount_path(bad)


def test_root_drive_names_cannot_collide_with_user_names() -> None:
    from nexus.domain.validation import check_name

    with pytest.raises(Invalid):
        check_name(root_drive_name("web"))


def test_find_disk_by_serial(tmp_path: Path) -> None:
    for name, serial in (("vda", ""), ("vdb", "a1b2c3d4e5f6\n"), ("loop0", None)):
        (tmp_path / name).mkdir()
        if serial is not None:
            (tmp_path / name / "serial").write_text(serial)
    assert find_disk("a1b2c3d4e5f6", tmp_path) == "/dev/vdb"
    assert find_disk("nope", tmp_path) is None
    assert find_disk("x", tmp_path / "missing") is None


def test_ext4_argv() -> None:
    argv = mkfs_argv(Path("/d/disk.img"))
    assert argv[0] == "mke2fs" and argv[-1] == "/d/disk.img"
    assert argv[argv.index("-t") + 1] == "ext4"
    assert resize_argv(Path("/d/disk.img")) == ["resize2fs", "-f", "/d/disk.img"]


def test_btrfs_ioctl_numbers_match_linux_headers() -> None:
    # _IOW(0x94, nr, struct of 4096 bytes) and _IOR/_IOW(0x94, nr, __u64), as include/uapi/linux/btrfs.h defines them.
    assert btrfs.IOC_SUBVOL_CREATE == 0x5000940E
    assert btrfs.IOC_SNAP_DESTROY == 0x5000940F
    assert btrfs.IOC_SNAP_CREATE_V2 == 0x50009417
    assert btrfs.IOC_SUBVOL_GETFLAGS == 0x80089419
    assert btrfs.IOC_SUBVOL_SETFLAGS == 0x4008941A
