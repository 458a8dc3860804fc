"""Build the qemu-system-x86_64 argv (and the guest kernel command line) for one ``-M microvm`` guest.

Pure: a :class:`QemuLaunch` in, a ``list[str]`` out; nothing is probed or started here (see
:mod:`nexus.vmm.qemu.accel` for choosing KVM or TCG and :mod:`nexus.vmm.qemu.hostclock` for the TSC rate).

Choices (measured on QEMU 7.2 with the Debian cloud kernel):
- machine ``microvm`` with ACPI on (the default; the kernel finds the virtio-mmio transports and the power
  button through ACPI, and QEMU's ``system_powerdown`` becomes an ACPI power-button event), no option ROMs,
  no PIT/PIC (the kernel uses the local APIC timer and the TSC), an RTC (guest wall-clock), and the ISA
  serial port as ``ttyS0`` so early boot messages reach the console log.
- TCG: ``-cpu Nehalem-v1,+rdrand`` (x86-64-v2: SSE4.2, POPCNT; every feature emulated, so no "TCG doesn't
  support" warnings) boots ~0.3 s faster than ``max`` (LA57, AVX2, ... cost the kernel and glibc time). RDRAND
  matters: without it the kernel's RNG is not ready until ~3.5 s into a TCG boot and the first read of
  /dev/urandom (every Python start does one) waits for it, ~1.2 s; with it the RNG is ready at once. MTTCG
  (``thread=multi``) when there is more than one vCPU. The kernel gets ``tsc_early_khz=<host kHz>`` (its own
  calibration against emulated timers is unreliable under TCG) and ``tsc=reliable`` (no TSC watchdog: with
  several vCPUs its false alarms hang ~1 boot in 8, and even with one vCPU it was seen to declare the TSC
  unstable against late jiffies and fall back to the jiffies clocksource), plus two speed-only flags:
  ``mitigations=off`` (TCG does not speculate the way the mitigations guard against) and
  ``cryptomgr.notests`` (the crypto self-tests take ~0.8 s of a TCG boot).
- ``pci=off`` always: microvm has no PCI bus, probing for one only costs time.
- KVM: ``-cpu host``.
- ``-no-reboot``: a guest reboot or panic (``panic=-1``) ends the QEMU process instead of looping.
- Data drives: one ``-drive ...,if=none`` + ``virtio-blk-device`` each after the root drive, with the drive id as
  the virtio-blk ``serial`` (the agent finds its disks by serial, not by the order the guest kernel names them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from nexus.domain.errors import Invalid
from nexus.domain.ports import DataDrive

QEMU_BINARY = "qemu-system-x86_64"
MACHINE = "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=on,acpi=on"
TCG_CPU = "Nehalem-v1,+rdrand"
KVM_CPU = "host"
ROOT_DEVICE = "/dev/vda"
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_SERIAL_RE = re.compile(r"^[A-Za-z0-9_]{1,20}$")  # virtio-blk ids are 20 bytes


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True, slots=True)
class SerialPort:
    """A virtio-serial port the guest sees by ``name``, backed by a listening Unix socket on the host."""

    name: str
    socket: Path


@dataclass(frozen=True, slots=True)
class NetIface:
    """A TAP device (created beforehand by the caller) attached as virtio-net."""

    tap: str
    mac: str


@dataclass(frozen=True, slots=True)
class QemuLaunch:
    """Everything one QEMU process needs. Paths are host paths; sockets are created by QEMU (server=on)."""

    kernel: Path
    initrd: Path
    root_drive: Path
    qmp_socket: Path
    console_log: Path
    accel: Accel = Accel.TCG
    vcpus: int = 1
    mem_mib: int = 512
    ports: tuple[SerialPort, ...] = ()
    tsc_khz: int | None = None  # host TSC rate; required under TCG
    root_format: str = "raw"
    root_readonly: bool = False
    net: NetIface | None = None
    pidfile: Path | None = None
    init: str | None = None  # guest init (the initramfs switch_roots to it); None = /sbin/init
    quiet: bool = True
    cmdline_extra: tuple[str, ...] = ()
    name: str | None = None
    cpu: str | None = None  # override the per-accelerator default
    data_drives: tuple[DataDrive, ...] = ()
    binary: str = QEMU_BINARY
    incoming: bool = False  # wait for a saved state (QMP migrate-incoming) instead of booting the kernel
    extra_args: tuple[str, ...] = field(default=())


def escape_opt(value: str) -> str:
    """Escape a value for QEMU's ``key=value,...`` option syntax (a comma is written twice)."""
    return value.replace(",", ",,")


def _check(spec: QemuLaunch) -> None:
    if not 1 <= spec.vcpus <= 64:
        raise Invalid(f"vcpus must be 1..64, got {spec.vcpus}")
    if spec.mem_mib < 64:
        raise Invalid(f"mem_mib must be at least 64, got {spec.mem_mib}")
    if spec.accel is Accel.TCG and (spec.tsc_khz is None or spec.tsc_khz <= 0):
        raise Invalid("a TCG guest needs the host TSC rate (tsc_khz) or its boot may hang")
    if spec.net is not None and not _MAC_RE.match(spec.net.mac):
        raise Invalid(f"bad MAC address {spec.net.mac!r}: want six lower-case hex pairs like 52:54:00:12:34:56")
    serials = [drive.drive_id for drive in spec.data_drives]
    for serial in serials:
        if not _SERIAL_RE.match(serial):
            raise Invalid(f"drive id {serial!r} must be 1-20 letters, digits or underscores (the virtio-blk serial)")
    if len(set(serials)) != len(serials):
        raise Invalid(f"drive ids must be unique, got {serials}")
    names = [port.name for port in spec.ports]
    if len(set(names)) != len(names):
        raise Invalid(f"virtio-serial port names must be unique, got {names}")
    for text in (*names, *spec.cmdline_extra, spec.init or ""):
        if any(ch.isspace() or ch == '"' for ch in text):
            raise Invalid(f"{text!r} must not contain whitespace or quotes")


def kernel_cmdline(spec: QemuLaunch) -> str:
    """The guest kernel command line for ``spec``."""
    args = ["console=ttyS0", f"root={ROOT_DEVICE}", "ro" if spec.root_readonly else "rw", "panic=-1", "pci=off"]
    if spec.quiet:
        args.append("quiet")
    if spec.accel is Accel.TCG:
        args += [f"tsc_early_khz={spec.tsc_khz}", "tsc=reliable", "mitigations=off", "cryptomgr.notests"]
    if spec.init:
        args.append(f"init={spec.init}")
    args += spec.cmdline_extra
    return " ".join(args)


def qemu_argv(spec: QemuLaunch) -> list[str]:
    """The complete argv (argv[0] is the QEMU binary). Raises Invalid for an impossible spec."""
    _check(spec)
    if spec.accel is Accel.TCG:
        accel = "tcg,thread=multi" if spec.vcpus > 1 else "tcg,thread=single"
        cpu = spec.cpu or TCG_CPU
    else:
        accel, cpu = "kvm", spec.cpu or KVM_CPU
    argv = [spec.binary]
    if spec.name:
        argv += ["-name", f"guest={escape_opt(spec.name)},process=qemu-{escape_opt(spec.name)}"]
    argv += [
        "-M",
        MACHINE,
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-smp",
        str(spec.vcpus),
        "-m",
        f"{spec.mem_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(spec.initrd),
        "-append",
        kernel_cmdline(spec),
        "-chardev",
        f"file,id=console,path={escape_opt(str(spec.console_log))}",
        "-serial",
        "chardev:console",
        "-chardev",
        f"socket,id=qmp,path={escape_opt(str(spec.qmp_socket))},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
    ]
    drive = f"id=root,file={escape_opt(str(spec.root_drive))},format={spec.root_format},if=none,discard=unmap"
    if spec.root_readonly:
        drive += ",readonly=on"
    argv += ["-drive", drive, "-device", "virtio-blk-device,drive=root"]
    for data in spec.data_drives:
        drive = f"id=d{data.drive_id},file={escape_opt(str(data.path))},format=raw,if=none,discard=unmap"
        if data.read_only:
            drive += ",readonly=on"
        argv += ["-drive", drive, "-device", f"virtio-blk-device,drive=d{data.drive_id},serial={data.drive_id}"]
    if spec.ports:
        argv += ["-device", "virtio-serial-device,id=vser0"]
        for index, port in enumerate(spec.ports):
            argv += [
                "-chardev",
                f"socket,id=port{index},path={escape_opt(str(port.socket))},server=on,wait=off",
                "-device",
                f"virtserialport,bus=vser0.0,chardev=port{index},name={escape_opt(port.name)}",
            ]
    if spec.net is not None:
        argv += [
            "-netdev",
            f"tap,id=net0,ifname={escape_opt(spec.net.tap)},script=no,downscript=no",
            "-device",
            f"virtio-net-device,netdev=net0,mac={spec.net.mac}",
        ]
    if spec.pidfile is not None:
        argv += ["-pidfile", str(spec.pidfile)]
    if spec.incoming:
        argv += ["-incoming", "defer"]
    return argv + list(spec.extra_args)
