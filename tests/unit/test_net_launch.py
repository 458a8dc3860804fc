"""The network part of a launch: both drivers turn LaunchSpec.net into a NIC on the TAP and the guest argument."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from nexus.domain import LaunchSpec, NetLease
from nexus.vmm.firecracker.config import preboot_requests
from nexus.vmm.firecracker.driver import RuntimeFiles, microvm_config
from nexus.vmm.qemu.argv import Accel
from nexus.vmm.qemu.driver import QemuDriver
from tests.fakes.firecracker_spec import SpecValidator, spec_validator

LEASE = NetLease(
    "a1b2c3d4e5f6", IPv4Address("10.77.0.5"), IPv4Network("10.77.0.0/24"), "nx0123456789abc", "02:11:22:33:44:55"
)


def launch(tmp: Path, net: NetLease | None) -> LaunchSpec:
    return LaunchSpec(
        vm_id="a1b2c3d4e5f6",
        name="web",
        vcpus=1,
        mem_mib=256,
        kernel=tmp / "vmlinux",
        kernel_version="6.1",
        initrd=tmp / "initrd",
        root_drive=tmp / "root.img",
        console_log=tmp / "console.log",
        runtime_dir=tmp / "run",
        cmdline_extra=("quiet2",),
        net=net,
    )


def test_kernel_args() -> None:
    spec = launch(Path("/x"), LEASE)
    assert spec.kernel_args == ("quiet2", "nexus.ip=10.77.0.5/24,10.77.0.1,02:11:22:33:44:55")
    assert launch(Path("/x"), None).kernel_args == ("quiet2",)


def test_qemu_nic_on_the_tap(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path, 2_000_000)
    argv = driver.launch_argv(launch(tmp_path, LEASE), Accel.TCG)
    assert argv[argv.index("-netdev") + 1] == "tap,id=net0,ifname=nx0123456789abc,script=no,downscript=no"
    assert "virtio-net-device,netdev=net0,mac=02:11:22:33:44:55" in argv
    assert argv[argv.index("-append") + 1].endswith("quiet2 nexus.ip=10.77.0.5/24,10.77.0.1,02:11:22:33:44:55")
    plain = driver.launch_argv(launch(tmp_path, None), Accel.TCG)
    assert "-netdev" not in plain and "nexus.ip" not in " ".join(plain)


@pytest.fixture(scope="module")
def closed_spec() -> SpecValidator:
    return spec_validator(closed=True)


def test_firecracker_interface_validates_against_the_spec(tmp_path: Path, closed_spec: SpecValidator) -> None:
    config = microvm_config(launch(tmp_path, LEASE), RuntimeFiles.direct(tmp_path / "run"))
    assert "nexus.ip=10.77.0.5/24,10.77.0.1,02:11:22:33:44:55" in config.boot.boot_args
    nets = [r for r in preboot_requests(config) if r.path.startswith("/network-interfaces/")]
    assert len(nets) == 1 and nets[0].body == {
        "iface_id": "eth0",
        "host_dev_name": "nx0123456789abc",
        "guest_mac": "02:11:22:33:44:55",
    }
    definition = closed_spec.body_definition("PUT", "/network-interfaces/{iface_id}")
    assert definition is not None and closed_spec.errors(definition, nets[0].body) == []
    assert microvm_config(launch(tmp_path, None), RuntimeFiles.direct(tmp_path / "run")).network == ()
