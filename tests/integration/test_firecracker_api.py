"""The Firecracker API client against the fake Firecracker (spec-validated bodies, Firecracker's ordering rules)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path, PurePosixPath

import pytest

from nexus.domain import DriverError, ExitStatus, VmmRecord
from nexus.vmm.firecracker import (
    BootSource,
    Drive,
    FirecrackerApi,
    FirecrackerProcess,
    Logger,
    MachineConfig,
    Metrics,
    MicroVmConfig,
    NetworkInterface,
    RuntimeFiles,
    SnapshotFiles,
    SnapshotLoad,
    Vsock,
    boot_args,
    preboot_requests,
    restore_requests,
    root_drive,
)
from nexus.vmm.firecracker.driver import Listeners
from tests.fakes.firecracker_api import (
    CREATE_RUNNING,
    LOAD_AFTER_CONFIG,
    NO_KERNEL,
    NOT_AFTER_START,
    NOT_BEFORE_START,
    FakeFirecracker,
    FirecrackerModel,
)
from tests.fakes.firecracker_spec import spec_validator

pytestmark = pytest.mark.anyio
P = PurePosixPath


class Rig:
    def __init__(self, fake: FakeFirecracker, api: FirecrackerApi) -> None:
        self.fake = fake
        self.model = fake.model
        self.api = api


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    validator = spec_validator(closed=True)
    with tempfile.TemporaryDirectory(prefix="nx-fc-") as short:  # AF_UNIX paths are limited to 108 bytes
        sock = Path(short) / "api.sock"
        model = FirecrackerModel(validator, instance_id="vm-1")
        async with FakeFirecracker(sock, model) as fake, FirecrackerApi(sock, timeout_s=2) as api:
            yield Rig(fake, api)


def config(*, network: bool = True) -> MicroVmConfig:
    return MicroVmConfig(
        machine=MachineConfig(2, 256),
        boot=BootSource(P("/vmlinux"), boot_args(), P("/initrd.img")),
        drives=(root_drive(P("/root.ext4")), Drive("base", P("/base.img"), read_only=True)),
        network=(NetworkInterface("eth0", "tap0", "06:00:0a:00:00:02"),) if network else (),
        vsock=Vsock(3, P("/v.sock")),
        logger=Logger(P("/fc.log")),
        metrics=Metrics(P("/fc.metrics")),
    )


async def preboot(api: FirecrackerApi, cfg: MicroVmConfig) -> None:
    assert cfg.logger is not None and cfg.metrics is not None and cfg.vsock is not None
    await api.put_logger(cfg.logger)
    await api.put_metrics(cfg.metrics)
    await api.put_machine_config(cfg.machine)
    await api.put_boot_source(cfg.boot)
    for drive in cfg.drives:
        await api.put_drive(drive)
    for iface in cfg.network:
        await api.put_network_interface(iface)
    await api.put_vsock(cfg.vsock)


async def test_full_preboot_sequence_then_start(rig: Rig) -> None:
    info = await rig.api.describe_instance()
    assert (info.app_name, info.id, info.state) == ("Firecracker", "vm-1", "Not started")
    assert await rig.api.get_machine_config() == MachineConfig(1, 128)  # Firecracker's defaults

    cfg = config()
    await preboot(rig.api, cfg)
    await rig.api.instance_start()

    assert (await rig.api.describe_instance()).state == "Running"
    assert await rig.api.get_machine_config() == MachineConfig(2, 256)
    expected = [f"{r.method} {r.path}" for r in preboot_requests(cfg)] + ["PUT /actions"]
    assert [c for c in rig.model.calls() if not c.startswith("GET")] == expected
    assert all(r.status == 204 for r in rig.model.requests if r.method != "GET")
    assert rig.model.drives["root"] == {
        "drive_id": "root",
        "path_on_host": "/root.ext4",
        "is_root_device": True,
        "is_read_only": False,
    }
    assert rig.model.bodies("PUT", "/actions") == [{"action_type": "InstanceStart"}]
    assert rig.model.vsock == {"guest_cid": 3, "uds_path": "/v.sock"}


async def test_preboot_requests_can_be_sent_as_prepared(rig: Rig) -> None:
    for request in preboot_requests(config(network=False)):
        await rig.api.send(request)
    await rig.api.instance_start()
    assert rig.model.network_interfaces == {}
    assert rig.model.state == "Running"


async def test_pause_resume_and_ctrl_alt_del(rig: Rig) -> None:
    await preboot(rig.api, config())
    await rig.api.instance_start()
    await rig.api.pause()
    assert (await rig.api.describe_instance()).state == "Paused"
    await rig.api.resume()
    assert (await rig.api.describe_instance()).state == "Running"
    await rig.api.send_ctrl_alt_del()
    assert rig.model.ctrl_alt_del_count == 1
    assert rig.model.bodies("PATCH", "/vm") == [{"state": "Paused"}, {"state": "Resumed"}]


async def test_preboot_resources_are_refused_after_start(rig: Rig) -> None:
    cfg = config()
    await preboot(rig.api, cfg)
    await rig.api.instance_start()
    attempts: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("PUT /machine-config", lambda: rig.api.put_machine_config(cfg.machine)),
        ("PUT /boot-source", lambda: rig.api.put_boot_source(cfg.boot)),
        ("PUT /drives/root", lambda: rig.api.put_drive(cfg.drives[0])),
        ("PUT /network-interfaces/eth0", lambda: rig.api.put_network_interface(cfg.network[0])),
        ("PUT /vsock", lambda: rig.api.put_vsock(Vsock(4, P("/v2.sock")))),
        ("PUT /logger", lambda: rig.api.put_logger(Logger(P("/other.log")))),
        ("PUT /metrics", lambda: rig.api.put_metrics(Metrics(P("/other.metrics")))),
        ("PUT /actions", rig.api.instance_start),
    ]
    for what, attempt in attempts:
        with pytest.raises(DriverError) as info:
            await attempt()
        assert info.value.message == f"Firecracker refused {what}: {NOT_AFTER_START}"
    assert rig.model.vsock == {"guest_cid": 3, "uds_path": "/v.sock"}  # unchanged


async def test_start_needs_a_boot_source(rig: Rig) -> None:
    await rig.api.put_machine_config(MachineConfig(1, 128))
    with pytest.raises(DriverError, match=f"refused PUT /actions: {NO_KERNEL}"):
        await rig.api.instance_start()
    assert rig.model.state == "Not started"


async def test_post_boot_operations_are_refused_before_start(rig: Rig) -> None:
    for op in (rig.api.pause, rig.api.resume, rig.api.send_ctrl_alt_del):
        with pytest.raises(DriverError) as info:
            await op()
        assert info.value.message.endswith(NOT_BEFORE_START)
    assert [r.status for r in rig.model.requests] == [400, 400, 400]


async def test_injected_start_fault_surfaces_verbatim(rig: Rig) -> None:
    fault = 'Start microvm error: Cannot load kernel due to invalid memory configuration or invalid kernel image: "x"'
    rig.model.fail_instance_start(fault)
    await preboot(rig.api, config())
    with pytest.raises(DriverError) as info:
        await rig.api.instance_start()
    assert info.value.message == f"Firecracker refused PUT /actions: {fault}"
    assert rig.model.requests[-1].fault_message == fault
    await rig.api.instance_start()  # the fault was for one call only
    assert rig.model.state == "Running"


async def test_invalid_bodies_are_rejected_by_the_fake(rig: Rig) -> None:
    with pytest.raises(DriverError, match=r"refused PUT /machine-config: .*'2' is not of type 'integer'"):
        await rig.api.call("PUT", "/machine-config", {"vcpu_count": "2", "mem_size_mib": 256})
    with pytest.raises(DriverError, match="'kernel_image_path' is a required property"):
        await rig.api.call("PUT", "/boot-source", {"boot_args": "console=ttyS0"})
    with pytest.raises(DriverError, match="Additional properties are not allowed"):
        await rig.api.call("PUT", "/metrics", {"metrics_path": "/m", "flush_interval_s": 5})
    with pytest.raises(DriverError, match="does not match the id from the body"):
        await rig.api.call("PUT", "/drives/root", {"drive_id": "other", "is_root_device": True})
    with pytest.raises(DriverError, match="alphanumeric characters and underscores"):
        await rig.api.call("PUT", "/drives/bad-id", {"drive_id": "bad-id", "is_root_device": True})
    with pytest.raises(DriverError, match="Invalid request method and/or path: PUT /nope"):
        await rig.api.call("PUT", "/nope", {})
    assert rig.model.machine_config["vcpu_count"] == 1  # nothing was applied
    assert rig.model.drives == {}
    assert rig.model.requests[0].body == {"vcpu_count": "2", "mem_size_mib": 256}


async def test_metrics_cannot_be_initialised_twice(rig: Rig) -> None:
    await rig.api.put_metrics(Metrics(P("/m")))
    with pytest.raises(DriverError, match="Reinitialization of metrics not allowed"):
        await rig.api.put_metrics(Metrics(P("/m2")))


async def test_unreachable_socket_is_a_driver_error(tmp_path: Path) -> None:
    async with FirecrackerApi(tmp_path / "missing.sock", timeout_s=1) as api:
        with pytest.raises(DriverError, match="cannot reach the Firecracker API"):
            await api.describe_instance()


SNAP = SnapshotFiles(P("/c/firecracker.vmstate"), P("/c/firecracker.mem"))


async def test_snapshot_create_only_while_paused(rig: Rig) -> None:
    with pytest.raises(DriverError, match=NOT_BEFORE_START):
        await rig.api.create_snapshot(SNAP, timeout_s=2)
    await preboot(rig.api, config())
    await rig.api.instance_start()
    with pytest.raises(DriverError, match=CREATE_RUNNING):
        await rig.api.create_snapshot(SNAP, timeout_s=2)
    await rig.api.pause()
    await rig.api.create_snapshot(SNAP, timeout_s=2)
    assert rig.model.bodies("PUT", "/snapshot/create")[-1] == {
        "snapshot_type": "Full",
        "snapshot_path": "/c/firecracker.vmstate",
        "mem_file_path": "/c/firecracker.mem",
    }
    with pytest.raises(DriverError, match="Diff snapshots are not allowed"):
        await rig.api.call(
            "PUT", "/snapshot/create", {"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}
        )


async def test_snapshot_load_only_into_a_fresh_process(rig: Rig) -> None:
    """Logger and metrics may come first, nothing else; the load leaves it running (``resume_vm``) and every
    pre-boot resource refused."""
    cfg = config()
    load = SnapshotLoad(SNAP, network_overrides=cfg.network, vsock_override=P("/v2.sock"))
    for request in restore_requests(cfg, load):
        await rig.api.send(request)
    assert (await rig.api.describe_instance()).state == "Running"
    assert rig.model.bodies("PUT", "/snapshot/load")[-1]["vsock_override"] == {"uds_path": "/v2.sock"}
    with pytest.raises(DriverError, match=NOT_AFTER_START):
        await rig.api.put_machine_config(cfg.machine)
    with pytest.raises(DriverError, match=NOT_AFTER_START):
        await rig.api.load_snapshot(load, timeout_s=2)


async def test_snapshot_load_refusals(rig: Rig) -> None:
    with pytest.raises(DriverError, match="Exactly one of mem_file_path or mem_backend"):
        await rig.api.call("PUT", "/snapshot/load", {"snapshot_path": "s"})
    with pytest.raises(DriverError, match=r"deserializing.*SnapshotLoadParams"):  # not in the spec: refused
        await rig.api.call("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_file_path": "m", "huge": 1})
    await rig.api.put_machine_config(MachineConfig(1, 128))
    with pytest.raises(DriverError, match=LOAD_AFTER_CONFIG):
        await rig.api.load_snapshot(SnapshotLoad(SNAP), timeout_s=2)
    assert (await rig.api.describe_instance()).state == "Not started"


async def test_a_firecracker_given_absolute_paths_refuses_to_checkpoint(rig: Rig, tmp_path: Path) -> None:
    """An older nexusd gave a direct Firecracker absolute paths: its snapshot would name that VM's own drives, so a
    fork would open them. It is refused before the guest is even paused."""
    await preboot(rig.api, config())
    await rig.api.instance_start()
    exited: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
    old = RuntimeFiles(tmp_path, tmp_path, PurePosixPath(tmp_path))
    record = VmmRecord(pid=os.getpid(), start_time=0, driver="firecracker", accel="kvm")
    process = FirecrackerProcess(record, exited, old, rig.api, Listeners(old.vsock_socket, gateway=False))
    with pytest.raises(DriverError, match="started by an older nexusd"):
        await process.checkpoint(tmp_path / "ckpt")
    assert (await rig.api.describe_instance()).state == "Running"
    exited.set_result(ExitStatus(0))
    await process.wait()
