"""KVM-or-TCG decision logic, the probe runner (against stand-in processes) and the cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nexus.images.initscript import PROBE_MARKER as INITRAMFS_MARKER
from nexus.vmm.qemu import accel
from nexus.vmm.qemu.accel import (
    PROBE_ARG,
    PROBE_MARKER,
    ProbeResult,
    cache_key,
    choose_accel,
    decide,
    kvm_backend,
    kvm_device_problem,
    probe_argv,
    run_probe,
)
from nexus.vmm.qemu.argv import Accel


def test_marker_matches_the_initramfs() -> None:
    assert PROBE_MARKER == INITRAMFS_MARKER


def test_missing_device_means_tcg() -> None:
    chosen, reason = decide("/dev/kvm does not exist", None, "unknown")
    assert chosen is Accel.TCG and "does not exist" in reason


def test_probe_success_means_kvm() -> None:
    chosen, reason = decide(None, ProbeResult(True, 0.42, "marker seen"), "kvm_intel")
    assert chosen is Accel.KVM and "0.42" in reason and "kvm_intel" in reason


def test_probe_failure_means_tcg_with_pvm_hint() -> None:
    chosen, reason = decide(None, ProbeResult(False, 10.0, "no sign of the guest's init within 10 s"), "kvm_pvm")
    assert chosen is Accel.TCG
    assert "PVM" in reason and "within 10 s" in reason


def test_not_probed_means_tcg() -> None:
    assert decide(None, None, "kvm_amd")[0] is Accel.TCG


def test_device_problem(tmp_path: Path) -> None:
    assert "does not exist" in (kvm_device_problem(tmp_path / "kvm") or "")
    device = tmp_path / "kvm"
    device.write_text("")
    assert kvm_device_problem(device) is None


def test_backend_from_sys_module(tmp_path: Path) -> None:
    assert kvm_backend(tmp_path) == "unknown"
    (tmp_path / "kvm_pvm").mkdir()
    assert kvm_backend(tmp_path) == "kvm_pvm"


def test_cache_key_names_all_parts() -> None:
    key = cache_key("7.2.22", "6.1.0-56-cloud-amd64", "6.18.44")
    assert "7.2.22" in key and "6.1.0-56-cloud-amd64" in key and "6.18.44" in key


def test_probe_argv() -> None:
    kvm = probe_argv("qemu", Path("/k"), Path("/i"))
    assert kvm[kvm.index("-accel") + 1] == "kvm" and kvm[kvm.index("-cpu") + 1] == "host"
    append = kvm[kvm.index("-append") + 1].split()
    assert PROBE_ARG in append and "console=ttyS0" in append and "panic=-1" in append
    assert kvm[kvm.index("-serial") + 1] == "stdio" and "-no-reboot" in kvm
    assert "-drive" not in kvm and "-device" not in kvm
    tcg = probe_argv("qemu", Path("/k"), Path("/i"), Accel.TCG, 2300000)
    assert tcg[tcg.index("-accel") + 1] == "tcg"
    assert "tsc_early_khz=2300000" in tcg[tcg.index("-append") + 1].split()


def fake(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def test_run_probe_sees_marker() -> None:
    result = run_probe(
        fake(f"import time; print('boot...'); print({PROBE_MARKER!r}, flush=True); time.sleep(30)"), timeout_s=10
    )
    assert result.ok and result.elapsed_s < 10


def test_run_probe_times_out_and_stops_the_process() -> None:
    result = run_probe(fake("import time; print('slow', flush=True); time.sleep(30)"), timeout_s=0.5)
    assert not result.ok and "within" in result.detail


def test_run_probe_reports_early_exit() -> None:
    result = run_probe(fake("import sys; print('failed to initialize kvm'); sys.exit(1)"), timeout_s=10)
    assert not result.ok and "exited with 1" in result.detail and "failed to initialize kvm" in result.detail


def test_run_probe_cannot_start() -> None:
    assert not run_probe(["/nonexistent/qemu"], timeout_s=1).ok


def test_choose_accel_probes_once_then_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def probe(argv: list[str], timeout_s: float) -> ProbeResult:
        calls.append(argv)
        return ProbeResult(False, timeout_s, "no sign of the guest's init within 3 s")

    monkeypatch.setattr(accel, "qemu_version", lambda binary="": "7.2.22")
    monkeypatch.setattr(accel, "kvm_device_problem", lambda: None)
    monkeypatch.setattr(accel, "kvm_backend", lambda: "kvm_pvm")
    monkeypatch.setattr(accel, "run_probe", probe)
    cache = tmp_path / "accel.json"
    first = choose_accel(cache, Path("/k"), Path("/i"), "6.1.0-56-cloud-amd64", timeout_s=3)
    second = choose_accel(cache, Path("/k"), Path("/i"), "6.1.0-56-cloud-amd64", timeout_s=3)
    assert first.accel is Accel.TCG and second == first and len(calls) == 1
    assert first.kvm_probed is True  # TCG because KVM failed its probe, not because it is absent
    assert json.loads(cache.read_text())[first.key] == {
        "accel": "tcg",
        "reason": first.reason,
        "probed_at": first.probed_at,
        "kvm_probed": True,
    }
    choose_accel(cache, Path("/k"), Path("/i"), "6.1.0-57-cloud-amd64", timeout_s=3)
    choose_accel(cache, Path("/k"), Path("/i"), "6.1.0-56-cloud-amd64", timeout_s=3, refresh=True)
    assert len(calls) == 3
    assert len(json.loads(cache.read_text())) == 2


def test_choose_accel_without_device_does_not_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "qemu_version", lambda binary="": "7.2.22")
    monkeypatch.setattr(accel, "kvm_device_problem", lambda: "/dev/kvm does not exist")
    monkeypatch.setattr(accel, "run_probe", lambda *a, **k: pytest.fail("probed without /dev/kvm"))
    choice = choose_accel(tmp_path / "a.json", Path("/k"), Path("/i"), "6.1.0-56-cloud-amd64")
    assert choice.accel is Accel.TCG and "does not exist" in choice.reason and choice.kvm_probed is False
