"""The pure QEMU argv / kernel command line builder."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.domain.errors import Invalid
from nexus.vmm.qemu.argv import (
    KVM_CPU,
    TCG_CPU,
    Accel,
    NetIface,
    QemuLaunch,
    SerialPort,
    escape_opt,
    kernel_cmdline,
    qemu_argv,
)


def spec(**overrides: object) -> QemuLaunch:
    base: dict[str, object] = {
        "kernel": Path("/k/vmlinux"),
        "initrd": Path("/k/initrd.img"),
        "root_drive": Path("/vm/root.qcow2"),
        "qmp_socket": Path("/vm/qmp.sock"),
        "console_log": Path("/vm/console.log"),
        "tsc_khz": 2300000,
        "ports": (
            SerialPort("org.nexus.control", Path("/vm/control.sock")),
            SerialPort("org.nexus.mcp", Path("/vm/mcp.sock")),
        ),
    }
    base.update(overrides)
    return QemuLaunch(**base)  # type: ignore[arg-type]


def value_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def test_microvm_basics() -> None:
    argv = qemu_argv(spec())
    assert argv[0] == "qemu-system-x86_64"
    machine = value_after(argv, "-M")[0]
    assert machine.startswith("microvm,") and "acpi=on" in machine and "isa-serial=on" in machine
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert value_after(argv, "-display") == ["none"]
    assert value_after(argv, "-kernel") == ["/k/vmlinux"]
    assert value_after(argv, "-initrd") == ["/k/initrd.img"]
    assert value_after(argv, "-smp") == ["1"] and value_after(argv, "-m") == ["512M"]


def test_tcg_flags_only_under_tcg() -> None:
    tcg = qemu_argv(spec(accel=Accel.TCG))
    kvm = qemu_argv(spec(accel=Accel.KVM, tsc_khz=None))
    assert value_after(tcg, "-accel") == ["tcg,thread=single"] and value_after(tcg, "-cpu") == [TCG_CPU]
    assert value_after(kvm, "-accel") == ["kvm"] and value_after(kvm, "-cpu") == [KVM_CPU]
    tcg_line, kvm_line = value_after(tcg, "-append")[0].split(), value_after(kvm, "-append")[0].split()
    for arg in ("tsc_early_khz=2300000", "tsc=reliable", "mitigations=off", "cryptomgr.notests"):
        assert arg in tcg_line
        assert not any(word.startswith(arg.split("=")[0]) for word in kvm_line)


def test_multi_vcpu_tcg_uses_mttcg_and_tsc_reliable() -> None:
    argv = qemu_argv(spec(vcpus=2))
    assert value_after(argv, "-accel") == ["tcg,thread=multi"]
    assert value_after(argv, "-smp") == ["2"]
    assert "tsc=reliable" in value_after(argv, "-append")[0].split()


def test_tcg_without_tsc_rate_is_refused() -> None:
    with pytest.raises(Invalid, match="tsc_khz"):
        qemu_argv(spec(tsc_khz=None))


def test_cmdline_defaults_and_options() -> None:
    words = kernel_cmdline(spec()).split()
    assert words[:2] == ["console=ttyS0", "root=/dev/vda"]
    assert "rw" in words and "panic=-1" in words and "quiet" in words and "pci=off" in words
    words = kernel_cmdline(spec(root_readonly=True, quiet=False, init="/sbin/myinit", cmdline_extra=("a=b",))).split()
    assert "ro" in words and "rw" not in words and "quiet" not in words
    assert "init=/sbin/myinit" in words and words[-1] == "a=b"


def test_console_and_qmp_sockets() -> None:
    argv = qemu_argv(spec())
    chardevs = value_after(argv, "-chardev")
    assert "file,id=console,path=/vm/console.log" in chardevs
    assert value_after(argv, "-serial") == ["chardev:console"]
    assert "socket,id=qmp,path=/vm/qmp.sock,server=on,wait=off" in chardevs
    assert value_after(argv, "-mon") == ["chardev=qmp,mode=control"]


def test_root_drive_is_virtio_blk() -> None:
    argv = qemu_argv(spec(root_format="qcow2"))
    drive = value_after(argv, "-drive")[0]
    assert drive.startswith("id=root,file=/vm/root.qcow2,format=qcow2,if=none")
    assert "virtio-blk-device,drive=root" in value_after(argv, "-device")
    assert "readonly=on" in value_after(qemu_argv(spec(root_readonly=True)), "-drive")[0]


def test_serial_ports_by_name() -> None:
    argv = qemu_argv(spec())
    devices = value_after(argv, "-device")
    assert "virtio-serial-device,id=vser0" in devices
    assert "virtserialport,bus=vser0.0,chardev=port0,name=org.nexus.control" in devices
    assert "virtserialport,bus=vser0.0,chardev=port1,name=org.nexus.mcp" in devices
    chardevs = value_after(argv, "-chardev")
    assert "socket,id=port0,path=/vm/control.sock,server=on,wait=off" in chardevs
    assert "socket,id=port1,path=/vm/mcp.sock,server=on,wait=off" in chardevs


def test_no_ports_no_virtio_serial() -> None:
    assert not any("virtio-serial" in arg for arg in qemu_argv(spec(ports=())))


def test_duplicate_port_names_refused() -> None:
    ports = (SerialPort("a", Path("/1")), SerialPort("a", Path("/2")))
    with pytest.raises(Invalid, match="unique"):
        qemu_argv(spec(ports=ports))


def test_commas_in_paths_are_escaped() -> None:
    assert escape_opt("/a,b") == "/a,,b"
    argv = qemu_argv(spec(root_drive=Path("/v,m/root.img"), console_log=Path("/x,y/c.log")))
    assert "file=/v,,m/root.img" in value_after(argv, "-drive")[0]
    assert "file,id=console,path=/x,,y/c.log" in value_after(argv, "-chardev")


def test_network_and_pidfile() -> None:
    argv = qemu_argv(spec(net=NetIface("tap-nx1", "52:54:00:12:34:56"), pidfile=Path("/vm/qemu.pid")))
    assert value_after(argv, "-netdev") == ["tap,id=net0,ifname=tap-nx1,script=no,downscript=no"]
    assert "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56" in value_after(argv, "-device")
    assert value_after(argv, "-pidfile") == ["/vm/qemu.pid"]
    assert "-netdev" not in qemu_argv(spec())


def test_bad_values_refused() -> None:
    with pytest.raises(Invalid):
        qemu_argv(spec(net=NetIface("tap0", "52:54:00:12:34")))
    with pytest.raises(Invalid):
        qemu_argv(spec(vcpus=0))
    with pytest.raises(Invalid):
        qemu_argv(spec(mem_mib=16))
    with pytest.raises(Invalid):
        qemu_argv(spec(cmdline_extra=("two words",)))


def test_argv_is_pure_strings() -> None:
    argv = qemu_argv(spec(vcpus=2, name="vm1", extra_args=("-S",)))
    assert all(isinstance(arg, str) for arg in argv)
    assert argv[-1] == "-S"
    assert value_after(argv, "-name") == ["guest=vm1,process=qemu-vm1"]


def test_incoming_waits_for_a_saved_state_instead_of_booting() -> None:
    assert "-incoming" not in qemu_argv(spec())
    argv = qemu_argv(spec(incoming=True))
    assert argv[argv.index("-incoming") + 1] == "defer"  # the state comes later, over QMP, as a passed fd
