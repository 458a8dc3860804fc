"""The initramfs /init script text, the archive layout, and finding a static busybox."""

from __future__ import annotations

import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from nexus.images.busybox import find_static_busybox, is_static_binary, is_static_elf
from nexus.images.cpio import parse_newc
from nexus.images.initramfs import APPLETS, initramfs_entries
from nexus.images.initscript import PROBE_MARKER, module_file, render_init
from nexus.images.kmods import KernelModule

MODULES = (
    KernelModule("virtio", "kernel/drivers/virtio/virtio.ko"),
    KernelModule("virtio_mmio", "kernel/drivers/virtio/virtio_mmio.ko"),
    KernelModule("virtio_rng", "kernel/drivers/char/hw_random/virtio-rng.ko"),
)


def script() -> str:
    return render_init(MODULES, required=["virtio_mmio"])


def test_modules_loaded_in_order_with_cmdline_params() -> None:
    text = script()
    lines = [line for line in text.splitlines() if line.startswith("load ")]
    assert [line.split()[1] for line in lines] == ["virtio", "virtio_mmio", "virtio_rng"]
    assert lines[1].startswith("load virtio_mmio /lib/modules/virtio_mmio.ko virtio-mmio ||")
    assert 'fail "cannot load kernel module virtio_mmio"' in lines[1]
    assert "warning" in lines[0] and "fail" not in lines[0]


def test_root_mount_and_switch_root() -> None:
    text = script()
    assert "root=/dev/vda" in text and "rootfstype=ext4" in text and "init=/sbin/init" in text
    assert 'exec switch_root /newroot "$init"' in text
    assert 'mount --move "/$fs" "/newroot/$fs"' in text


def test_failures_power_off_with_diagnostics() -> None:
    text = script()
    fail = text[text.index("fail() {") : text.index("}", text.index("fail() {"))]
    assert "ls /dev" in fail and "dmesg | tail" in fail and "poweroff -f" in fail
    assert "did not appear within" in text


def test_probe_mode() -> None:
    text = script()
    assert f'echo "{PROBE_MARKER}"' in text
    assert "nexus.probe|nexus.probe=*)" in text


def test_rootwait_is_configurable() -> None:
    assert "rootwait=3\n" in render_init(MODULES, [], rootwait_s=3)


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
def test_script_is_valid_busybox_sh(tmp_path: Path) -> None:
    path = tmp_path / "init"
    path.write_text(script())
    subprocess.run(["busybox", "sh", "-n", str(path)], check=True)


def test_archive_layout() -> None:
    entries = initramfs_entries("#!/bin/sh\n", b"\x7fELF-busybox", [(module_file(MODULES[0]), b"ko")])
    by_name = {e.name: e for e in entries}
    assert by_name["init"].mode & 0o111 and by_name["init"].data == b"#!/bin/sh\n"
    assert stat.S_ISCHR(by_name["dev/console"].mode)
    assert by_name["lib/modules/virtio.ko"].data == b"ko"
    for applet in APPLETS:
        assert by_name[f"bin/{applet}"].is_symlink and by_name[f"bin/{applet}"].data == b"busybox"
    names = [e.name for e in entries]
    for entry in entries:  # parents come first
        parent = entry.name.rsplit("/", 1)[0]
        if "/" in entry.name:
            assert names.index(parent) < names.index(entry.name)


def test_layout_survives_serialisation() -> None:
    from nexus.images.cpio import newc_archive

    entries = initramfs_entries("#!/bin/sh\n", b"bb", [])
    assert parse_newc(newc_archive(entries)) == entries


def elf_header(interp: bool) -> bytes:
    """A minimal 64-bit ELF header with two program headers (PT_LOAD and maybe PT_INTERP)."""
    phoff, phentsize = 64, 56
    types = [1, 3] if interp else [1, 1]
    head = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    head += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, len(types), 0, 0, 0)
    return head + b"".join(struct.pack("<I", t) + bytes(phentsize - 4) for t in types)


def test_static_elf_detection() -> None:
    assert is_static_elf(elf_header(interp=False))
    assert not is_static_elf(elf_header(interp=True))
    assert not is_static_elf(b"#!/bin/sh\n" + bytes(100))
    assert not is_static_elf(elf_header(interp=False)[:60])


def test_real_binaries(tmp_path: Path) -> None:
    assert not is_static_binary(Path("/bin/ls"))  # dynamically linked everywhere we run
    assert not is_static_binary(tmp_path / "missing")


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="busybox-static not installed")
def test_finds_host_static_busybox() -> None:
    found = find_static_busybox()
    assert is_static_binary(found)


def test_guest_network_from_the_kernel_argument() -> None:
    text = script()
    assert "nexus.ip=*) netconf=" in text
    assert '[ -n "$netconf" ] && net "$netconf"' in text
    net = text[text.index("net() {") :]
    assert "/sys/class/net" in net and "/sys/class/net/*" not in net  # globbing is off in /init
    assert 'ip addr add "$addr" dev "$dev"' in net and 'ip route add default via "$gw"' in net
    assert text.index('net "$netconf"') < text.index("switch_root /newroot")  # before the real init runs
    assert "ip" in APPLETS


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
def test_net_function_parses_the_argument(tmp_path: Path) -> None:
    """Run the script's net() with stub ip/ls/cat that record what they are asked."""
    text = script()
    func = text[text.index("net() {") : text.index("\n}\n", text.index("net() {")) + 3]
    sysfs = tmp_path / "eth9"
    sysfs.mkdir()
    (sysfs / "address").write_text("02:aa:bb:cc:dd:ee\n")
    probe = tmp_path / "probe.sh"
    probe.write_text(
        f"{func}\n"
        f"ls() {{ echo eth9; }}\n"
        f'cat() {{ busybox cat "{tmp_path}/${{1#/sys/class/net/}}"; }}\n'
        'ip() { echo "ip $*"; }\n'
        "usleep() { :; }\n"
        'net "10.77.0.7/24,10.77.0.1,02:aa:bb:cc:dd:ee"\n'
    )
    out = subprocess.run(["busybox", "sh", str(probe)], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "ip link set eth9 up",
        "ip addr add 10.77.0.7/24 dev eth9",
        "ip route add default via 10.77.0.1 dev eth9",
    ]
