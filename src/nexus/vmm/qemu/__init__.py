"""The QEMU driver's pieces: argv builder (``-M microvm``), accelerator choice (KVM or TCG) and host clock."""

from __future__ import annotations

from nexus.vmm.qemu.accel import AccelChoice, ProbeResult, choose_accel
from nexus.vmm.qemu.argv import Accel, NetIface, QemuLaunch, SerialPort, kernel_cmdline, qemu_argv
from nexus.vmm.qemu.hostclock import TscRate, host_tsc_khz

__all__ = [
    "Accel",
    "AccelChoice",
    "NetIface",
    "ProbeResult",
    "QemuLaunch",
    "SerialPort",
    "TscRate",
    "choose_accel",
    "host_tsc_khz",
    "kernel_cmdline",
    "qemu_argv",
]
