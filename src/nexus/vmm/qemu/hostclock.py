"""The host's TSC rate in kHz, which a TCG guest needs as ``tsc_early_khz``.

Under TCG the guest's ``rdtsc`` returns the host TSC, so the guest must be told the host TSC rate; its own
calibration against emulated timers is unreliable. Sources, best first:
1. ``/sys/devices/system/cpu/cpu0/tsc_freq_khz`` (exact; only some kernels export it),
2. the kernel's boot message ``tsc: Refined TSC clocksource calibration: N MHz`` or ``tsc: Detected N MHz``
   (read from ``/dev/kmsg`` when it is readable and still holds the boot messages),
3. ``cpu MHz`` of the first CPU in ``/proc/cpuinfo`` — equal to the TSC rate on CPUs with ``constant_tsc`` in a
   VM (as here: 2300.000 MHz both ways) but possibly the current scaled clock on bare metal.
The parsers are pure; :func:`host_tsc_khz` reads the files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from nexus.domain.errors import Unavailable

SYSFS_TSC = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
CPUINFO = Path("/proc/cpuinfo")
KMSG = Path("/dev/kmsg")

_REFINED_RE = re.compile(r"tsc: Refined TSC clocksource calibration: (\d+)\.(\d+) MHz")
_KMSG_DETECTED_RE = re.compile(r"tsc: Detected (\d+)\.(\d+) MHz")
_CPUINFO_RE = re.compile(r"^cpu MHz\s*:\s*(\d+)(?:\.(\d+))?\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class TscRate:
    khz: int
    source: str  # "sysfs", "kmsg" or "cpuinfo"


def _khz(mhz: str, fraction: str | None) -> int:
    return int(mhz) * 1000 + int(((fraction or "0") + "000")[:3])


def parse_kmsg(text: str) -> int | None:
    """kHz from kernel boot messages; the refined calibration wins over the first detection."""
    refined = _REFINED_RE.findall(text)
    detected = _KMSG_DETECTED_RE.findall(text)
    for found in (refined, detected):
        if found:
            return _khz(*found[-1])
    return None


def parse_cpuinfo(text: str) -> int | None:
    """kHz from the first ``cpu MHz`` line of /proc/cpuinfo."""
    match = _CPUINFO_RE.search(text)
    return _khz(match[1], match[2]) if match else None


def _read_kmsg() -> str:
    """Whatever /dev/kmsg holds now, without blocking (empty when unreadable)."""
    try:
        fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    chunks: list[str] = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE when records were overwritten; keep reading
                continue
            if not record:
                break
            chunks.append(record.decode(errors="replace"))
    finally:
        os.close(fd)
    return "".join(chunks)


def host_tsc_khz() -> TscRate:
    """The host TSC rate and where it came from; Unavailable when no source knows it."""
    try:
        return TscRate(int(SYSFS_TSC.read_text().strip()), "sysfs")
    except (OSError, ValueError):
        pass
    khz = parse_kmsg(_read_kmsg())
    if khz:
        return TscRate(khz, "kmsg")
    try:
        khz = parse_cpuinfo(CPUINFO.read_text())
    except OSError:
        khz = None
    if khz:
        return TscRate(khz, "cpuinfo")
    raise Unavailable("cannot tell the host TSC rate (no tsc_freq_khz, no tsc boot message, no cpu MHz)")
