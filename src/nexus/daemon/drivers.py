"""Choosing the VMM driver from the ``vmm`` setting and what this host has.

``vmm`` = ``qemu`` | ``firecracker`` | ``auto``. Firecracker needs its binary (nexusd.toml ``firecracker_binary``,
else ``firecracker`` on PATH, else the newest pulled one) and a KVM that runs ordinary guests; nexusd.toml's
``jailer_*`` keys make it run through the jailer. ``/dev/kvm`` opening is not enough (the dev/CI
machines have a ``kvm_pvm`` KVM that opens fine and cannot boot an ordinary kernel), so the evidence is the QEMU
driver's boot-probe cache (``accel.json``) for this host kernel:

* ``auto`` takes Firecracker only with the binary, an openable ``/dev/kvm`` and a probe that booted under KVM on
  this host kernel; otherwise QEMU, whose reason then also says why not Firecracker.
* ``firecracker`` refuses (no driver, with the reason) without the binary or ``/dev/kvm``, or when the probe cache
  says KVM cannot run guests here; with no probe result yet it trusts the explicit request.
* ``$NEXUS_FIRECRACKER_ASSUME_KVM=1`` skips the KVM checks: for a test double standing in for the binary (it
  boots nothing under KVM). The reason says so.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from pathlib import Path

from nexus.assets.firecracker import FirecrackerStore
from nexus.domain import Layout, NexusError, VmmDriver
from nexus.vmm.firecracker.argv import FIRECRACKER_BINARY
from nexus.vmm.firecracker.driver import FirecrackerDriver
from nexus.vmm.firecracker.jailer import JailerOptions
from nexus.vmm.qemu.accel import kvm_device_problem
from nexus.vmm.qemu.argv import QEMU_BINARY
from nexus.vmm.qemu.driver import QemuDriver
from nexus.vmm.qemu.hostclock import host_tsc_khz

__all__ = ["ASSUME_KVM_ENV", "choose_driver", "firecracker_binary", "kvm_runs_guests"]

log = logging.getLogger(__name__)

ASSUME_KVM_ENV = "NEXUS_FIRECRACKER_ASSUME_KVM"


def firecracker_binary(configured: Path | None = None, cache_dir: Path | None = None) -> tuple[str | None, str]:
    """The firecracker executable to run (None when there is none) and where it was found or why not: the
    configured path, else PATH, else the newest one ``nexusctl firecracker pull`` cached."""
    if configured is not None:
        if configured.is_file() and os.access(configured, os.X_OK):
            return str(configured), f"firecracker_binary = {configured}"
        return None, f"firecracker_binary = {configured} is not an executable file"
    found = shutil.which(FIRECRACKER_BINARY)
    if found is not None:
        return found, f"{found} on PATH"
    if cache_dir is not None:
        try:
            cached = FirecrackerStore(cache_dir).get()
        except NexusError:
            pass
        else:
            return str(cached.path), f"Firecracker {cached.version} from the cache"
    return (
        None,
        f"no {FIRECRACKER_BINARY} binary on PATH, pulled (nexusctl firecracker pull) or set as firecracker_binary "
        "in nexusd.toml",
    )


def kvm_runs_guests(accel_cache: Path, host_release: str | None = None) -> tuple[bool | None, str]:
    """What the QEMU boot probe found about KVM on this host kernel: True (a guest booted under KVM), False (it
    did not), None (no probe yet); with the probe's reason."""
    release = host_release or platform.release()
    try:
        cache = json.loads(accel_cache.read_text())
    except (OSError, ValueError):
        cache = {}
    verdict: tuple[bool | None, str] = (None, f"no KVM boot probe has run on host kernel {release} yet")
    if not isinstance(cache, dict):
        return verdict
    for key, entry in cache.items():
        if not isinstance(entry, dict) or not str(key).endswith(f";host={release}"):
            continue
        reason = str(entry.get("reason", ""))
        if entry.get("accel") == "kvm":
            return True, reason
        if entry.get("kvm_probed") is True:  # a KVM probe ran and did not boot (KVM absent is not a verdict)
            verdict = (False, reason)
    return verdict


def _firecracker(
    vmm: str, layout: Layout, configured: Path | None, jailer: JailerOptions | None
) -> tuple[FirecrackerDriver | None, str]:
    binary, where = firecracker_binary(configured, layout.cache_dir)
    if binary is None:
        return None, where
    if jailer is not None:
        if not (jailer.binary.is_file() and os.access(jailer.binary, os.X_OK)):
            return None, f"jailer_binary = {jailer.binary} is not an executable file"
        where += f", jailed as uid {jailer.uid} in {jailer.chroot_base}"
    if os.environ.get(ASSUME_KVM_ENV) == "1":
        reason = f"firecracker ({where}); KVM not checked: ${ASSUME_KVM_ENV}=1"
        return FirecrackerDriver(binary, reason, jailer), ""
    problem = kvm_device_problem()
    if problem is not None:
        return None, f"Firecracker needs KVM: {problem}"
    works, why = kvm_runs_guests(layout.cache_dir / "accel.json")
    if works is False:
        return None, f"KVM cannot run ordinary guests on this host ({why})"
    if works is None and vmm == "auto":
        return None, f"KVM is unproven on this host: {why}"
    evidence = why if works else "asked for explicitly; KVM not probed yet"
    return FirecrackerDriver(binary, f"firecracker with kvm ({where}; {evidence})", jailer), ""


def choose_driver(
    vmm: str, layout: Layout, firecracker_bin: Path | None = None, jailer: JailerOptions | None = None
) -> tuple[VmmDriver | None, str]:
    """The driver to use and, when there is none, why."""
    why_not_firecracker = ""
    if vmm in ("firecracker", "auto"):
        firecracker, why_not_firecracker = _firecracker(vmm, layout, firecracker_bin, jailer)
        if firecracker is not None:
            return firecracker, firecracker.reason
        if vmm == "firecracker":
            return None, f"the vmm setting asks for firecracker, which cannot run here: {why_not_firecracker}"
    if shutil.which(QEMU_BINARY) is None:
        return None, f"{QEMU_BINARY} not found (apt-get install qemu-system-x86)"
    try:
        tsc = host_tsc_khz()
    except NexusError as exc:
        return None, f"cannot run TCG guests safely: {exc.message}"
    log.info("host TSC %d kHz (from %s)", tsc.khz, tsc.source)
    note = f"not firecracker: {why_not_firecracker}" if why_not_firecracker else None
    if note is not None:
        log.info("%s", note)
    driver = QemuDriver(layout.cache_dir / "accel.json", tsc.khz, note=note)
    return driver, driver.reason
