"""Every body the Firecracker builders produce validates against the v1.16.1 OpenAPI definitions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

import pytest

from nexus.domain import Invalid
from nexus.vmm.firecracker import (
    Action,
    BootSource,
    Drive,
    JsonBody,
    Logger,
    LogLevel,
    MachineConfig,
    Metrics,
    MicroVmConfig,
    NetworkInterface,
    SnapshotFiles,
    SnapshotLoad,
    VmRunState,
    Vsock,
    action_body,
    boot_args,
    boot_source_body,
    drive_body,
    logger_body,
    machine_config_body,
    metrics_body,
    network_interface_body,
    preboot_requests,
    restore_requests,
    root_drive,
    snapshot_create_body,
    snapshot_load_body,
    supports_vsock_override,
    vm_state_body,
    vsock_body,
)
from nexus.vmm.firecracker.config import machine_config_from_body
from tests.fakes.firecracker_spec import SpecValidator, spec_validator

P = PurePosixPath
ARGS = boot_args()
CASES: list[tuple[str, str, JsonBody]] = [
    ("machine-config 1 vCPU", "MachineConfiguration", machine_config_body(MachineConfig(1, 128))),
    ("machine-config 32 vCPUs", "MachineConfiguration", machine_config_body(MachineConfig(32, 8192))),
    ("boot-source with initrd", "BootSource", boot_source_body(BootSource(P("/k/vmlinux"), ARGS, P("/k/initrd")))),
    ("boot-source without initrd", "BootSource", boot_source_body(BootSource(P("/k/vmlinux"), ARGS))),
    ("root drive rw", "Drive", drive_body(root_drive(P("/d/root.ext4")))),
    ("root drive ro", "Drive", drive_body(root_drive(P("/d/root.ext4"), read_only=True))),
    ("data drive", "Drive", drive_body(Drive("data_1", P("/d/data.img")))),
    ("net with mac", "NetworkInterface", network_interface_body(NetworkInterface("eth0", "tap0", "06:00:AC:10:00:02"))),
    ("net without mac", "NetworkInterface", network_interface_body(NetworkInterface("eth0", "nx-tap-1"))),
    ("vsock", "Vsock", vsock_body(Vsock(3, P("/run/v.sock")))),
    ("vsock big cid", "Vsock", vsock_body(Vsock(2**32 - 1, P("/run/v.sock")))),
    ("logger", "Logger", logger_body(Logger(P("/l/fc.log")))),
    ("logger debug", "Logger", logger_body(Logger(P("/l/fc.log"), LogLevel.DEBUG, False, True))),
    ("metrics", "Metrics", metrics_body(Metrics(P("/l/metrics.fifo")))),
    *[(f"action {a.value}", "InstanceActionInfo", action_body(a)) for a in Action],
    *[(f"vm {s.value}", "Vm", vm_state_body(s)) for s in VmRunState],
    ("snapshot create", "SnapshotCreateParams", snapshot_create_body(SnapshotFiles(P("/s.vmstate"), P("m.mem")))),
    ("snapshot load", "SnapshotLoadParams", snapshot_load_body(SnapshotLoad(SnapshotFiles(P("s"), P("m"))))),
    (
        "snapshot load with overrides",
        "SnapshotLoadParams",
        snapshot_load_body(
            SnapshotLoad(
                SnapshotFiles(P("/s"), P("/m")),
                network_overrides=(NetworkInterface("eth0", "nx-tap-2", "06:00:AC:10:00:02"),),
                vsock_override=P("vsock.sock"),
                resume_vm=False,
            )
        ),
    ),
]


@pytest.fixture(scope="module")
def spec() -> SpecValidator:
    return spec_validator(closed=False)


@pytest.fixture(scope="module")
def closed_spec() -> SpecValidator:
    return spec_validator(closed=True)


@pytest.mark.parametrize(("definition", "body"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_body_validates_against_spec(
    spec: SpecValidator, closed_spec: SpecValidator, definition: str, body: JsonBody
) -> None:
    assert spec.errors(definition, body) == []
    # Firecracker refuses unknown fields (serde deny_unknown_fields) although the spec does not say so.
    assert closed_spec.errors(definition, body) == []


@pytest.mark.parametrize("with_network", [False, True])
@pytest.mark.parametrize("read_only", [False, True])
def test_preboot_requests_validate_against_operations(
    closed_spec: SpecValidator, with_network: bool, read_only: bool
) -> None:
    cfg = MicroVmConfig(
        machine=MachineConfig(2, 512),
        boot=BootSource(P("/k/vmlinux"), boot_args(read_only_root=read_only), None if read_only else P("/k/initrd")),
        drives=(root_drive(P("/d/root.ext4"), read_only=read_only), Drive("scratch", P("/d/s.img"))),
        network=(NetworkInterface("eth0", "tap0", "06:00:00:00:00:01"),) if with_network else (),
        vsock=Vsock(3, P("/run/v.sock")),
        logger=Logger(P("/l/log")),
        metrics=Metrics(P("/l/metrics")),
    )
    requests = preboot_requests(cfg)
    paths = [r.path for r in requests]
    assert paths[:4] == ["/logger", "/metrics", "/machine-config", "/boot-source"]
    assert ("/network-interfaces/eth0" in paths) is with_network
    assert paths[-1] == "/vsock"
    for request in requests:
        spec_path = "/drives/{drive_id}" if request.path.startswith("/drives/") else request.path
        if spec_path.startswith("/network-interfaces/"):
            spec_path = "/network-interfaces/{iface_id}"
        definition = closed_spec.body_definition(request.method, spec_path)
        assert definition is not None
        assert closed_spec.errors(definition, request.body) == [], request


@pytest.mark.parametrize(
    ("definition", "body", "needle"),
    [
        ("MachineConfiguration", {"vcpu_count": "2", "mem_size_mib": 256}, "is not of type 'integer'"),
        ("MachineConfiguration", {"vcpu_count": 2}, "'mem_size_mib' is a required property"),
        ("MachineConfiguration", {"vcpu_count": 33, "mem_size_mib": 256}, "maximum"),
        ("MachineConfiguration", {"vcpu_count": 2.0, "mem_size_mib": 256}, "is not of type 'integer'"),
        ("BootSource", {"boot_args": "x"}, "'kernel_image_path' is a required property"),
        ("Drive", {"drive_id": "root", "path_on_host": "/x", "is_root_device": "yes"}, "is not of type 'boolean'"),
        ("Vsock", {"guest_cid": 2, "uds_path": "/v"}, "minimum"),
        ("Logger", {"log_path": "/l", "level": "Verbose"}, "is not one of"),
        ("InstanceActionInfo", {"action_type": "Reboot"}, "is not one of"),
        ("Vm", {"state": "Running"}, "is not one of"),
    ],
)
def test_wrong_bodies_fail_validation(spec: SpecValidator, definition: str, body: object, needle: str) -> None:
    errors = spec.errors(definition, body)
    assert errors, f"{body} should not validate as {definition}"
    assert needle in "\n".join(errors)


def test_unknown_field_passes_the_spec_but_not_the_closed_spec(spec: SpecValidator, closed_spec: SpecValidator) -> None:
    body = {"vcpu_count": 2, "mem_size_mib": 256, "smt_enabled": False}
    assert spec.errors("MachineConfiguration", body) == []  # the spec sets no additionalProperties: false
    assert "Additional properties are not allowed" in "\n".join(closed_spec.errors("MachineConfiguration", body))


def test_builder_bodies_are_exact() -> None:
    assert machine_config_body(MachineConfig(2, 512)) == {"vcpu_count": 2, "mem_size_mib": 512, "smt": False}
    assert drive_body(root_drive(P("/r.ext4"), read_only=True)) == {
        "drive_id": "root",
        "path_on_host": "/r.ext4",
        "is_root_device": True,
        "is_read_only": True,
    }
    assert boot_source_body(BootSource(P("/vmlinux"), "console=ttyS0")) == {
        "kernel_image_path": "/vmlinux",
        "boot_args": "console=ttyS0",
    }
    assert network_interface_body(NetworkInterface("eth0", "tap0", "06:00:AC:10:00:02"))["guest_mac"] == (
        "06:00:ac:10:00:02"
    )
    assert action_body(Action.SEND_CTRL_ALT_DEL) == {"action_type": "SendCtrlAltDel"}
    assert vm_state_body(VmRunState.PAUSED) == {"state": "Paused"}
    assert machine_config_from_body({"vcpu_count": 2, "mem_size_mib": 512, "smt": False, "huge_pages": "None"}) == (
        MachineConfig(2, 512)
    )


def test_boot_args() -> None:
    assert boot_args() == "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw"
    assert boot_args(read_only_root=True, console=None, extra=["init=/sbin/init", "quiet"]) == (
        "reboot=k panic=1 pci=off root=/dev/vda ro init=/sbin/init quiet"
    )
    with pytest.raises(Invalid):
        boot_args(extra=["two words"])
    with pytest.raises(Invalid):
        boot_args(extra=["x" * 2100])


@pytest.mark.parametrize(
    "make",
    [
        lambda: MachineConfig(0, 128),
        lambda: MachineConfig(33, 128),
        lambda: MachineConfig(3, 128, smt=True),
        lambda: MachineConfig(1, 0),
        lambda: Vsock(2, P("/v")),
        lambda: Drive("root-1", P("/d")),
        lambda: Drive("root", P("")),
        lambda: NetworkInterface("eth0", "tap0", "not-a-mac"),
        lambda: NetworkInterface("eth0", "a-very-long-tap-name"),
        lambda: BootSource(P("/k"), "a\nb"),
        lambda: MicroVmConfig(MachineConfig(), BootSource(P("/k"), ""), (root_drive(P("/a")), root_drive(P("/b")))),
    ],
)
def test_invalid_values_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(Invalid):
        make()


def test_snapshot_bodies() -> None:
    files = SnapshotFiles(P("/c/firecracker.vmstate"), P("/c/firecracker.mem"))
    assert snapshot_create_body(files) == {
        "snapshot_type": "Full",
        "snapshot_path": "/c/firecracker.vmstate",
        "mem_file_path": "/c/firecracker.mem",
    }
    load = SnapshotLoad(files, (NetworkInterface("eth0", "tap9", "06:00:AC:10:00:02"),), P("vsock.sock"))
    assert snapshot_load_body(load) == {
        "snapshot_path": "/c/firecracker.vmstate",
        "mem_backend": {"backend_type": "File", "backend_path": "/c/firecracker.mem"},
        "resume_vm": True,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],  # the guest keeps its MAC
        "vsock_override": {"uds_path": "vsock.sock"},
    }
    assert set(snapshot_load_body(SnapshotLoad(files))) == {"snapshot_path", "mem_backend", "resume_vm"}
    with pytest.raises(Invalid):
        SnapshotFiles(P(""), P("/m"))


@pytest.mark.parametrize(
    ("version", "supported"),
    [("1.12.1", False), ("1.15.0", False), ("1.16.1", True), ("v1.16.0", True), ("2.0.0", True), ("dev", False)],
)
def test_vsock_override_only_where_the_version_has_it(version: str, supported: bool) -> None:
    assert supports_vsock_override(version) is supported


def test_a_restore_sends_only_logger_metrics_and_the_load() -> None:
    cfg = MicroVmConfig(
        machine=MachineConfig(2, 256),
        boot=BootSource(P("/k/vmlinux"), ARGS),
        drives=(root_drive(P("root.ext4")),),
        vsock=Vsock(3, P("vsock.sock")),
        logger=Logger(P("firecracker.log")),
        metrics=Metrics(P("metrics.json")),
    )
    load = SnapshotLoad(SnapshotFiles(P("/c/s"), P("/c/m")))
    requests = restore_requests(cfg, load)
    assert [(r.method, r.path) for r in requests] == [
        ("PUT", "/logger"),
        ("PUT", "/metrics"),
        ("PUT", "/snapshot/load"),
    ]
    assert requests[-1].body == snapshot_load_body(load)
