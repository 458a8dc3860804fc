"""Choose KVM or TCG: KVM only when it can really run the guest, otherwise TCG. Probe once, cache, say why.

Why a boot probe: ``/dev/kvm`` can exist and open fine and still be useless. On the dev/CI machines it is
provided by ``kvm_pvm`` (a KVM backend for guests built for PVM, with no hardware virtualisation): QEMU starts,
the guest gets its vCPU, and an ordinary kernel crawls - after 20 s it is still decompressing itself, a few
hundred times slower than TCG, with no error anywhere. So the probe boots the real kernel with the real
initramfs and ``nexus.probe`` on its command line (the initramfs /init then only prints :data:`PROBE_MARKER` and
powers off) and KVM wins only when the marker shows up within ``timeout_s``. A working KVM gets there in well
under a second; TCG needs ~2-3 s for the same trip, so a KVM slower than the timeout is no use anyway.

The result is cached in a JSON file keyed by QEMU version, guest kernel version and host kernel release, so the
probe (a few seconds at most) runs once per combination. The decision logic is pure and unit-tested; only
:func:`run_probe`, :func:`qemu_version` and :func:`choose_accel` touch the system.
"""

from __future__ import annotations

import json
import os
import platform
import re
import selectors
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nexus.domain.errors import Unavailable
from nexus.vmm.qemu.argv import KVM_CPU, MACHINE, QEMU_BINARY, TCG_CPU, Accel

PROBE_MARKER = "NEXUS-PROBE-OK"  # printed by the initramfs /init (nexus.images.initscript) under nexus.probe
PROBE_ARG = "nexus.probe"
DEFAULT_PROBE_TIMEOUT_S = 10.0
KVM_DEVICE = Path("/dev/kvm")
SYS_MODULES = Path("/sys/module")
_KVM_BACKENDS = ("kvm_intel", "kvm_amd", "kvm_pvm")
_VERSION_RE = re.compile(r"QEMU emulator version (\S+)")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    elapsed_s: float
    detail: str  # what happened, for the reason shown to people


@dataclass(frozen=True, slots=True)
class AccelChoice:
    accel: Accel
    reason: str
    key: str
    probed_at: str  # ISO time of the probe (or of the decision when no probe was needed)
    kvm_probed: bool = False  # a KVM boot probe ran (so TCG means KVM failed, not that it was absent)


def kvm_device_problem(device: Path = KVM_DEVICE) -> str | None:
    """Why ``device`` cannot be used at all (missing, no permission), or None when it can be opened."""
    if not device.exists():
        return f"{device} does not exist (no KVM in this kernel, or nested virtualisation is off)"
    if not os.access(device, os.R_OK | os.W_OK):
        return f"{device} is not readable and writable by this user (uid {os.geteuid()})"
    return None


def kvm_backend(sys_modules: Path = SYS_MODULES) -> str:
    """Which KVM backend module is loaded (kvm_intel, kvm_amd, kvm_pvm), or "unknown"."""
    loaded = [name for name in _KVM_BACKENDS if (sys_modules / name).exists()]
    return ",".join(loaded) or "unknown"


def cache_key(qemu: str, kernel_version: str, host_release: str) -> str:
    return f"qemu={qemu};kernel={kernel_version};host={host_release}"


def decide(device_problem: str | None, probe: ProbeResult | None, backend: str) -> tuple[Accel, str]:
    """The accelerator and the reason, from what was found. ``probe`` is None when it was not run."""
    if device_problem is not None:
        return Accel.TCG, f"TCG: KVM unusable: {device_problem}"
    if probe is None:
        return Accel.TCG, "TCG: KVM was not probed"
    if probe.ok:
        return Accel.KVM, f"KVM: a probe guest reached its init in {probe.elapsed_s:.2f} s ({backend})"
    hint = " (kvm_pvm runs only PVM-enabled guest kernels)" if "kvm_pvm" in backend else ""
    return Accel.TCG, f"TCG: /dev/kvm is there ({backend}) but cannot run this guest{hint}: {probe.detail}"


def probe_argv(
    binary: str, kernel: Path, initrd: Path, accel: Accel = Accel.KVM, tsc_khz: int | None = None
) -> list[str]:
    """QEMU booting ``kernel`` + ``initrd`` in probe mode, console on stdout, nothing else attached.

    ``accel`` is KVM for the real probe; TCG (with the host ``tsc_khz``) lets tests check the probe itself.
    """
    append = f"console=ttyS0 panic=-1 pci=off quiet {PROBE_ARG}"
    if accel is Accel.TCG:
        accel_arg, cpu = "tcg", TCG_CPU
        append += f" tsc_early_khz={tsc_khz} tsc=reliable" if tsc_khz else ""
    else:
        accel_arg, cpu = "kvm", KVM_CPU
    return [
        binary,
        "-M",
        MACHINE,
        "-accel",
        accel_arg,
        "-cpu",
        cpu,
        "-smp",
        "1",
        "-m",
        "256M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        append,
        "-serial",
        "stdio",
    ]


def run_probe(argv: list[str], timeout_s: float = DEFAULT_PROBE_TIMEOUT_S) -> ProbeResult:
    """Run the probe VM until the marker appears, it exits, or ``timeout_s`` passes; it is always stopped."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        return ProbeResult(False, 0.0, f"cannot start {argv[0]}: {exc}")
    output = b""
    try:
        if proc.stdout is None:
            return ProbeResult(False, 0.0, "no console pipe")
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        while PROBE_MARKER.encode() not in output:
            left = timeout_s - (time.monotonic() - start)
            if left <= 0:
                return ProbeResult(False, timeout_s, f"no sign of the guest's init within {timeout_s:.0f} s")
            if not selector.select(timeout=left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait()
                tail = output.decode(errors="replace").strip().splitlines()[-3:]
                return ProbeResult(
                    False,
                    time.monotonic() - start,
                    f"QEMU exited with {proc.returncode}: {' | '.join(tail) or 'no output'}",
                )
            output += chunk
        return ProbeResult(True, time.monotonic() - start, "marker seen")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def qemu_version(binary: str = QEMU_BINARY) -> str:
    try:
        done = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"cannot run {binary}: {exc}") from exc
    match = _VERSION_RE.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise Unavailable(f"{binary} -version did not say which QEMU it is: {done.stdout.strip()!r}")
    return match[1]


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def choose_accel(
    cache_file: Path,
    kernel: Path,
    initrd: Path,
    kernel_version: str,
    *,
    binary: str = QEMU_BINARY,
    timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
    refresh: bool = False,
) -> AccelChoice:
    """KVM or TCG for this host, QEMU and kernel: from the cache, else by probing (and caching the result)."""
    key = cache_key(qemu_version(binary), kernel_version, platform.release())
    cache = _read_cache(cache_file)
    cached = cache.get(key)
    if cached and not refresh:
        try:
            probed = cached.get("kvm_probed") is True
            return AccelChoice(Accel(cached["accel"]), cached["reason"], key, cached["probed_at"], probed)
        except (KeyError, ValueError):
            pass
    problem = kvm_device_problem()
    result = None if problem else run_probe(probe_argv(binary, kernel, initrd), timeout_s)
    accel, reason = decide(problem, result, kvm_backend())
    choice = AccelChoice(accel, reason, key, datetime.now(UTC).isoformat(timespec="seconds"), result is not None)
    cache[key] = {
        "accel": choice.accel.value,
        "reason": choice.reason,
        "probed_at": choice.probed_at,
        "kvm_probed": choice.kvm_probed,
    }
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.tmp")
    tmp.write_text(json.dumps(cache, indent=2) + "\n")
    os.replace(tmp, cache_file)
    return choice
