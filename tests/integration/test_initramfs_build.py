"""Build the initramfs for the real kernel, check what is inside, and boot it under TCG (marked ``vm``)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nexus.assets import Kernel, KernelStore
from nexus.images import initramfs
from nexus.images.cpio import parse_newc
from nexus.images.initramfs import ensure_initramfs
from nexus.vmm.qemu.accel import PROBE_MARKER, choose_accel, probe_argv, run_probe
from nexus.vmm.qemu.argv import MACHINE, TCG_CPU, Accel
from nexus.vmm.qemu.hostclock import host_tsc_khz

CACHE = Path(os.environ.get("NEXUS_TEST_CACHE", "/var/tmp/nexus-test-cache"))

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or not Path("/bin/busybox").exists(),
    reason="needs apt and busybox-static",
)
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86")


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    return KernelStore(CACHE).pull()


@pytest.fixture(scope="session")
def initrd(kernel: Kernel) -> initramfs.Initramfs:
    return ensure_initramfs(kernel)


def test_contents(initrd: initramfs.Initramfs) -> None:
    entries = {e.name: e for e in parse_newc(gzip.decompress(initrd.path.read_bytes()))}
    assert entries["init"].data.startswith(b"#!/bin/sh")
    assert entries["bin/busybox"].data[:4] == b"\x7fELF"
    assert "dev/console" in entries
    for module in ("virtio_mmio", "virtio_blk", "virtio_console"):
        assert module in initrd.modules
        assert entries[f"lib/modules/{module}.ko"].data[:4] == b"\x7fELF"  # stored uncompressed
    order = list(initrd.modules)
    assert order.index("virtio") < order.index("virtio_mmio") < order.index("virtio_blk")


def test_cached_until_its_inputs_change(
    kernel: Kernel, initrd: initramfs.Initramfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    mtime = initrd.path.stat().st_mtime_ns
    assert ensure_initramfs(kernel) == initrd and initrd.path.stat().st_mtime_ns == mtime
    monkeypatch.setattr(initramfs, "BUILDER_VERSION", initramfs.BUILDER_VERSION + "-test")
    rebuilt = ensure_initramfs(kernel)
    assert rebuilt.build_key != initrd.build_key
    monkeypatch.undo()
    assert ensure_initramfs(kernel).build_key == initrd.build_key


@pytest.mark.vm
@needs_qemu
def test_probe_boot_under_tcg(kernel: Kernel, initrd: initramfs.Initramfs) -> None:
    argv = probe_argv("qemu-system-x86_64", kernel.boot_file, initrd.path, Accel.TCG, host_tsc_khz().khz)
    result = run_probe(argv, timeout_s=60)
    assert result.ok, result.detail


@pytest.mark.vm
@needs_qemu
def test_missing_root_device_powers_off_with_a_reason(kernel: Kernel, initrd: initramfs.Initramfs) -> None:
    append = (
        f"console=ttyS0 panic=-1 pci=off quiet tsc_early_khz={host_tsc_khz().khz} tsc=reliable "
        "root=/dev/vdz nexus.rootwait=1"
    )
    argv = [
        "qemu-system-x86_64",
        "-M",
        MACHINE,
        "-accel",
        "tcg",
        "-cpu",
        TCG_CPU,
        "-m",
        "256M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(kernel.boot_file),
        "-initrd",
        str(initrd.path),
        "-append",
        append,
        "-serial",
        "stdio",
    ]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, timeout=90, check=False)
    console = done.stdout.decode(errors="replace")
    assert "root device /dev/vdz did not appear within 1s" in console
    assert "/dev holds:" in console and "powering off" in console
    assert done.returncode == 0 and time.monotonic() - start < 60
    assert PROBE_MARKER not in console


@pytest.mark.vm
@needs_qemu
def test_accel_choice_on_this_host(kernel: Kernel, initrd: initramfs.Initramfs, tmp_path: Path) -> None:
    """The real decision: probes KVM when /dev/kvm exists (up to its timeout), then answers from the cache."""
    cache = tmp_path / "accel.json"
    start = time.monotonic()
    first = choose_accel(cache, kernel.boot_file, initrd.path, kernel.version, timeout_s=10)
    assert time.monotonic() - start < 30
    assert first.reason.startswith(first.accel.value.upper())
    if not Path("/dev/kvm").exists():
        assert first.accel is Accel.TCG
    start = time.monotonic()
    assert choose_accel(cache, kernel.boot_file, initrd.path, kernel.version) == first
    assert time.monotonic() - start < 2
