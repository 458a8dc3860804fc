"""Reading the host TSC rate from kernel messages and /proc/cpuinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.domain.errors import Unavailable
from nexus.vmm.qemu import hostclock
from nexus.vmm.qemu.hostclock import parse_cpuinfo, parse_kmsg

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2300.000
flags\t\t: fpu tsc constant_tsc
processor\t: 1
cpu MHz\t\t: 1200.500
"""


def test_cpuinfo_first_cpu() -> None:
    assert parse_cpuinfo(CPUINFO) == 2300000
    assert parse_cpuinfo("cpu MHz : 2399.998\n") == 2399998
    assert parse_cpuinfo("cpu MHz : 3000\n") == 3000000
    assert parse_cpuinfo("no such line") is None


def test_kmsg_prefers_refined_calibration() -> None:
    text = (
        "6,1,0,-;tsc: Detected 2294.608 MHz processor\n"
        "6,90,1,-;tsc: Refined TSC clocksource calibration: 2294.687 MHz\n"
    )
    assert parse_kmsg(text) == 2294687
    assert parse_kmsg("6,1,0,-;tsc: Detected 2300.000 MHz processor\n") == 2300000
    assert parse_kmsg("nothing about clocks") is None


def test_host_rate_falls_back_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs, cpuinfo = tmp_path / "tsc_freq_khz", tmp_path / "cpuinfo"
    monkeypatch.setattr(hostclock, "SYSFS_TSC", sysfs)
    monkeypatch.setattr(hostclock, "CPUINFO", cpuinfo)
    monkeypatch.setattr(hostclock, "_read_kmsg", lambda: "")
    with pytest.raises(Unavailable):
        hostclock.host_tsc_khz()
    cpuinfo.write_text(CPUINFO)
    assert hostclock.host_tsc_khz() == hostclock.TscRate(2300000, "cpuinfo")
    monkeypatch.setattr(hostclock, "_read_kmsg", lambda: "tsc: Detected 2400.000 MHz processor")
    assert hostclock.host_tsc_khz() == hostclock.TscRate(2400000, "kmsg")
    sysfs.write_text("2399987\n")
    assert hostclock.host_tsc_khz() == hostclock.TscRate(2399987, "sysfs")


def test_this_host_has_a_rate() -> None:
    rate = hostclock.host_tsc_khz()
    assert 100_000 < rate.khz < 10_000_000
