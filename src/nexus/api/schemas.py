"""Request and response bodies of the REST API (pydantic), and their conversion from domain objects.

Request models forbid unknown fields: a typo is an error, not a silently ignored option.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nexus.domain import Drive, DriveKind, Image, Kernel, NetInfo, Role, Snapshot, StateChange, Vm, VmState
from nexus.services import CleanupReport, Setting


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VmCreate(Strict):
    name: str = Field(description="unique name: ^[a-z0-9][a-z0-9-]{0,62}$")
    role: Role = Role.WORK
    vcpus: int | None = Field(default=None, description="1..32; default from settings")
    mem_mib: int | None = Field(default=None, description="64..65536; default from settings")
    image: str | None = None
    kernel: str | None = None
    tags: list[str] = Field(default_factory=list)
    network: bool | None = Field(default=None, description="false: no NIC; default: nexusd's (on unless disabled)")
    publish: list[str] = Field(default_factory=list, description="HOSTPORT:GUESTPORT[/tcp|udp], DNAT to the VM")


class NetOut(BaseModel):
    address: str
    gateway: str
    prefix_len: int
    mac: str
    tap: str
    ports: list[str] = Field(description="published ports, HOSTPORT:GUESTPORT/PROTOCOL")

    @classmethod
    def of(cls, info: NetInfo) -> NetOut:
        return cls(
            address=str(info.address),
            gateway=str(info.gateway),
            prefix_len=info.prefix_len,
            mac=info.mac,
            tap=info.tap,
            ports=[str(p) for p in info.ports],
        )


class VmOut(BaseModel):
    id: str
    name: str
    role: Role
    vcpus: int
    mem_mib: int
    image: str
    kernel: str
    state: VmState
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    pid: int | None = Field(description="the VMM process while there is one")
    vmm: str | None
    accel: str | None
    network: NetOut | None = Field(description="its address and published ports; null without a NIC")

    @classmethod
    def of(cls, vm: Vm, net: NetInfo | None) -> VmOut:
        return cls(
            id=vm.id,
            name=vm.name,
            role=vm.role,
            vcpus=vm.vcpus,
            mem_mib=vm.mem_mib,
            image=vm.image,
            kernel=vm.kernel,
            state=vm.state,
            tags=list(vm.tags),
            created_at=vm.created_at,
            updated_at=vm.updated_at,
            pid=vm.pid,
            vmm=vm.vmm,
            accel=vm.accel,
            network=NetOut.of(net) if net is not None else None,
        )


class StateChangeOut(BaseModel):
    from_state: VmState | None
    to_state: VmState
    reason: str
    at: datetime

    @classmethod
    def of(cls, change: StateChange) -> StateChangeOut:
        return cls(from_state=change.from_state, to_state=change.to_state, reason=change.reason, at=change.at)


class LogsOut(BaseModel):
    vm_id: str
    lines: list[str]


class TagsIn(Strict):
    tags: list[str] = Field(min_length=1)


class SettingOut(BaseModel):
    key: str
    value: Any
    default: Any
    description: str

    @classmethod
    def of(cls, setting: Setting) -> SettingOut:
        return cls(key=setting.key, value=setting.value, default=setting.default, description=setting.description)


class SettingIn(Strict):
    value: Any


class DriverOut(BaseModel):
    name: str | None
    reason: str


class StorageOut(BaseModel):
    name: str = Field(description="btrfs, reflink or copy")
    reason: str


class EgressOut(BaseModel):
    enabled: bool  # VMs get a NIC by default
    egress: bool  # networked VMs have a way out of this host
    reason: str


class HealthOut(BaseModel):
    status: str
    version: str
    vms: int
    driver: DriverOut
    storage: StorageOut
    network: EgressOut


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class ExecIn(Strict):
    command: str | list[str] = Field(description="a string run by /bin/sh -c, or an argv run without a shell")
    cwd: str | None = None
    env: dict[str, str] | None = None
    stdin: str | None = None
    timeout_s: float = Field(default=600.0, gt=0, le=86400)


class KernelPullIn(Strict):
    version: str | None = Field(
        default=None, description="version (6.1.0-28-cloud-amd64) or flavour; default: newest cloud-amd64"
    )


class KernelOut(BaseModel):
    version: str
    flavour: str
    sha256: str
    size_bytes: int
    pulled_at: datetime
    path: str

    @classmethod
    def of(cls, kernel: Kernel) -> KernelOut:
        return cls(
            version=kernel.version,
            flavour=kernel.flavour,
            sha256=kernel.sha256,
            size_bytes=kernel.size_bytes,
            pulled_at=kernel.pulled_at,
            path=str(kernel.vmlinuz),
        )


class ImageBuildIn(Strict):
    name: str | None = Field(default=None, description="default: the base's name (debian-bookworm) or file stem")
    base: str = Field(default="debian-bookworm", description="debian-bookworm, a rootfs tarball path, or a URL")
    sha256: str | None = Field(default=None, description="required for a tarball or URL base")
    size_mib: int = 1024


class ImageOut(BaseModel):
    id: str
    name: str
    base: str
    path: str
    size_mib: int
    sha256: str
    init_system: str
    agent_version: str
    built_at: datetime

    @classmethod
    def of(cls, image: Image) -> ImageOut:
        return cls(
            id=image.id,
            name=image.name,
            base=image.base,
            path=str(image.path),
            size_mib=image.size_mib,
            sha256=image.sha256,
            init_system=image.init_system,
            agent_version=image.agent_version,
            built_at=image.built_at,
        )


class WriteOut(BaseModel):
    path: str
    size: int


class CleanupOut(BaseModel):
    links: list[str] = Field(description="TAPs and bridges removed")
    table: bool = Field(description="the nftables table was removed")
    leases_dropped: int = Field(description="leases of an older subnet, renewed at the VM's next start")

    @classmethod
    def of(cls, report: CleanupReport) -> CleanupOut:
        return cls(links=list(report.links), table=report.table, leases_dropped=report.leases_dropped)


class SetupFirewallOut(BaseModel):
    done: list[str]


class DriveCreate(Strict):
    name: str = Field(description="unique name: ^[a-z0-9][a-z0-9-]{0,62}$")
    image: str | None = Field(default=None, description="copy this image (give image or size_mib)")
    size_mib: int | None = Field(default=None, description="an empty ext4 drive of this size, 16..1048576")


class DriveAttach(Strict):
    vm: str = Field(description="VM name or id (the VM must be stopped)")
    mount: str | None = Field(default=None, description="where the agent mounts it at boot, e.g. /data")


class DriveResize(Strict):
    size_mib: int = Field(description="the new size; drives only grow")


class DriveOut(BaseModel):
    id: str
    name: str
    kind: DriveKind
    size_mib: int
    vm_id: str | None
    mount_path: str | None
    image: str | None
    created_at: datetime

    @classmethod
    def of(cls, drive: Drive) -> DriveOut:
        return cls(
            id=drive.id,
            name=drive.name,
            kind=drive.kind,
            size_mib=drive.size_mib,
            vm_id=drive.vm_id,
            mount_path=drive.mount_path,
            image=drive.image,
            created_at=drive.created_at,
        )


class SnapshotCreate(Strict):
    name: str | None = Field(default=None, description="default: snap-<UTC time>")


class SnapshotDriveOut(BaseModel):
    drive_id: str
    drive_name: str
    kind: DriveKind
    mount_path: str | None


class SnapshotOut(BaseModel):
    id: str
    vm_id: str
    name: str
    created_at: datetime
    drives: list[SnapshotDriveOut]

    @classmethod
    def of(cls, snapshot: Snapshot) -> SnapshotOut:
        return cls(
            id=snapshot.id,
            vm_id=snapshot.vm_id,
            name=snapshot.name,
            created_at=snapshot.created_at,
            drives=[
                SnapshotDriveOut(drive_id=d.drive_id, drive_name=d.drive_name, kind=d.kind, mount_path=d.mount_path)
                for d in snapshot.drives
            ],
        )


class VmClone(Strict):
    name: str = Field(description="the new VM's name")
    snapshot: str | None = Field(default=None, description="clone this snapshot instead of the current drives")
