"""Choosing the VMM driver from the ``vmm`` setting and what this host has."""

from __future__ import annotations

import logging
import shutil

from nexus.domain import Layout, NexusError, VmmDriver
from nexus.vmm.qemu.argv import QEMU_BINARY
from nexus.vmm.qemu.driver import QemuDriver
from nexus.vmm.qemu.hostclock import host_tsc_khz

log = logging.getLogger(__name__)


def choose_driver(vmm: str, layout: Layout) -> tuple[VmmDriver | None, str]:
    """The driver to use and, when there is none, why."""
    if vmm == "firecracker":
        return None, "the vmm setting asks for firecracker, and this nexusd has no Firecracker driver yet"
    if shutil.which(QEMU_BINARY) is None:
        return None, f"{QEMU_BINARY} not found (apt-get install qemu-system-x86)"
    try:
        tsc = host_tsc_khz()
    except NexusError as exc:
        return None, f"cannot run TCG guests safely: {exc.message}"
    log.info("host TSC %d kHz (from %s)", tsc.khz, tsc.source)
    driver = QemuDriver(layout.cache_dir / "accel.json", tsc.khz)
    return driver, driver.reason
