"""Request and response bodies (pydantic) for every edge, the REST API and the MCP tools alike (a VM, drive or snapshot
has one shape wherever it is shown), and their conversion from domain objects.

Request models forbid unknown fields: a typo is an error, not a silently ignored option. Their numbers and booleans
are strict (``"2"`` or ``true`` for a vCPU count is refused, not coerced), and names, tags and sizes carry the
domain's own pattern and range (``nexus.domain.validation``), so the OpenAPI schema states what the server enforces.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    model_validator,
)

from nexus.domain import (
    AgentToken,
    CleanupReport,
    Drive,
    DriveKind,
    ExpiryAction,
    FirecrackerBinary,
    Image,
    Invalid,
    Kernel,
    Lifetime,
    NetInfo,
    PoolStatus,
    PublishedPort,
    Role,
    Setting,
    Snapshot,
    StateChange,
    Vm,
    VmSpec,
    VmState,
)
from nexus.domain.audit import RETENTION_DAYS_RANGE, AuditEntry, Decision, Via
from nexus.domain.egress import (
    HEADER_RE,
    HOST_RE,
    SECRET_NAME_RE,
    EgressMode,
    HostPattern,
    check_header,
    check_secret_name,
    placeholder,
)
from nexus.domain.network import DNS_SERVERS_MAX, IFNAME_RE, SUBNET_PREFIX_RANGE
from nexus.domain.packages import MAX_PACKAGES, PACKAGE_RE, PROFILES, check_package, check_profile
from nexus.domain.policy import Limits, Management, Rule, RuleSpec, Selector
from nexus.domain.secrets import BindingRecord, SecretInfo, check_bound_host
from nexus.domain.settings import SETTINGS, VMM_CHOICES
from nexus.domain.validation import (
    DRIVE_SIZE_MIB_RANGE,
    FIRECRACKER_VERSION_RE,
    IDLE_SUSPEND_S_RANGE,
    IMAGE_SIZE_MIB_RANGE,
    KERNEL_REF_RE,
    MEM_MIB_RANGE,
    NAME_RE,
    POOL_SIZE_RANGE,
    TAG_RE,
    TTL_S_RANGE,
    VCPUS_RANGE,
    check_mem_mib,
    check_name,
    check_range,
    check_tag,
    check_vcpus,
)


class Strict(BaseModel):
    # Not ``strict=True`` for the whole model: that would refuse an enum's wire string ("work" for Role) too.
    model_config = ConfigDict(extra="forbid")


def _domain_check(check: Callable[[Any], object]) -> AfterValidator:
    """Enforce a field with the domain's own check, so a 422 says what the services would have said ("invalid name
    'X': use 1-63 lowercase letters...") rather than pydantic's generic words. The schema gets the same limits from
    the same constants through ``_documented``."""

    def run(value: Any) -> Any:
        try:
            check(value)
        except Invalid as exc:
            raise ValueError(exc.message) from exc
        return value

    return AfterValidator(run)


def _documented(**keywords: JsonValue) -> Any:
    """JSON-schema keywords (``pattern``, ``minimum``...) published for a field that ``_domain_check`` enforces."""
    return Field(json_schema_extra=dict(keywords))


def _sized(what: str, bounds: tuple[int, int]) -> Callable[[int], int]:
    return lambda value: check_range(what, value, bounds)


# Strict: JSON's "2", 2.0 or true is not an integer here (pydantic's lax mode would take all three).
Name = Annotated[str, _documented(pattern=NAME_RE.pattern), _domain_check(check_name)]
Tag = Annotated[str, _documented(pattern=TAG_RE.pattern), _domain_check(check_tag)]
Vcpus = Annotated[
    int, Field(strict=True), _documented(minimum=VCPUS_RANGE[0], maximum=VCPUS_RANGE[1]), _domain_check(check_vcpus)
]
TtlS = Annotated[int, Field(strict=True), _documented(minimum=TTL_S_RANGE[0], maximum=TTL_S_RANGE[1])]
IdleSuspendS = Annotated[
    int, Field(strict=True), _documented(minimum=IDLE_SUSPEND_S_RANGE[0], maximum=IDLE_SUSPEND_S_RANGE[1])
]
MemMib = Annotated[
    int,
    Field(strict=True),
    _documented(minimum=MEM_MIB_RANGE[0], maximum=MEM_MIB_RANGE[1]),
    _domain_check(check_mem_mib),
]
DriveSizeMib = Annotated[
    int,
    Field(strict=True),
    _documented(minimum=DRIVE_SIZE_MIB_RANGE[0], maximum=DRIVE_SIZE_MIB_RANGE[1]),
    _domain_check(_sized("size_mib", DRIVE_SIZE_MIB_RANGE)),
]
ImageSizeMib = Annotated[
    int,
    Field(strict=True),
    _documented(minimum=IMAGE_SIZE_MIB_RANGE[0], maximum=IMAGE_SIZE_MIB_RANGE[1]),
    _domain_check(_sized("size_mib", IMAGE_SIZE_MIB_RANGE)),
]
StrictBool = Annotated[bool, Field(strict=True)]
PoolSize = Annotated[
    int,
    Field(strict=True),
    _documented(minimum=POOL_SIZE_RANGE[0], maximum=POOL_SIZE_RANGE[1]),
    _domain_check(_sized("size", POOL_SIZE_RANGE)),
]
PackageName = Annotated[str, _documented(pattern=PACKAGE_RE.pattern), _domain_check(check_package)]
ProfileName = Annotated[str, _documented(enum=sorted(PROFILES)), _domain_check(check_profile)]
# No domain function checks these two up front (the asset stores parse them), so pydantic enforces the pattern.
KernelRef = Annotated[
    str, Field(pattern=KERNEL_REF_RE.pattern, description="6.1.0-56-cloud-amd64, 6.1.0-56 or cloud-amd64")
]
FirecrackerVersion = Annotated[str, Field(pattern=FIRECRACKER_VERSION_RE.pattern, description="a release: 1.16.1")]


class VmCreate(Strict):
    name: Name = Field(description="unique name")
    role: Role = Role.WORK
    vcpus: Vcpus | None = Field(default=None, description="default from settings")
    mem_mib: MemMib | None = Field(default=None, description="default from settings")
    image: str | None = None
    kernel: str | None = None
    tags: list[Tag] = Field(default_factory=list)
    network: StrictBool | None = Field(
        default=None, description="false: no NIC; default: nexusd's (on unless disabled)"
    )
    publish: list[str] = Field(default_factory=list, description="HOSTPORT:GUESTPORT[/tcp|udp], DNAT to the VM")
    egress: EgressMode | None = Field(
        default=None, description="open (NAT), none, or proxy (only allowed hosts via nexusd); default: default_egress"
    )
    allow: list[str] = Field(
        default_factory=list, description="hosts its egress proxy lets through: HOST or *.DOMAIN, optional :PORT[,PORT]"
    )
    ttl_s: TtlS | None = Field(default=None, description="seconds after its creation at which it expires")
    on_expiry: ExpiryAction = Field(default=ExpiryAction.STOP, description="stop it, or rm it, when it expires")
    idle_suspend_s: IdleSuspendS | None = Field(
        default=None,
        description="suspend it (checkpoint, stop) after this many seconds unused; its next use resumes it",
    )

    def spec(self) -> VmSpec:
        """The VM this asks for (Invalid for a malformed port or host pattern)."""
        return VmSpec(
            name=self.name,
            role=self.role,
            vcpus=self.vcpus,
            mem_mib=self.mem_mib,
            image=self.image,
            kernel=self.kernel,
            tags=tuple(self.tags),
            network=self.network,
            publish=tuple(PublishedPort.parse(p) for p in self.publish),
            egress=self.egress,
            allow=tuple(HostPattern.parse(p) for p in self.allow),
            lifetime=Lifetime(self.ttl_s, self.on_expiry, self.idle_suspend_s),
        )


class VmCreateOrClaim(VmCreate):
    """``POST /v1/vms``: a VM to create, or with ``claim`` to take from a warm pool when one matches."""

    claim: StrictBool = Field(
        default=False,
        description="take a ready VM from a warm pool whose template this request matches exactly (answered"
        " ready: renamed, tagged); else the VM is created as without it",
    )


class LifetimeOut(BaseModel):
    ttl_s: int | None
    on_expiry: ExpiryAction
    idle_suspend_s: int | None
    expires_at: datetime | None = Field(description="when it is stopped (or removed); null: never")
    suspended: bool = Field(description="suspended when idle: its next use (or a start) resumes it where it was")


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
    egress: EgressMode = Field(description="open (NAT), none, or proxy (only allowed hosts, via nexusd)")
    lifetime: LifetimeOut
    pool: str | None = Field(default=None, description="the warm pool it waits in, until claimed")

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
            egress=vm.egress,
            lifetime=LifetimeOut(
                ttl_s=vm.lifetime.ttl_s,
                on_expiry=vm.lifetime.on_expiry,
                idle_suspend_s=vm.lifetime.idle_suspend_s,
                expires_at=vm.expires_at,
                suspended=vm.suspended,
            ),
            pool=vm.pool,
        )


class VmEgressSet(Strict):
    mode: EgressMode | None = Field(default=None, description="open (NAT), none, or proxy; null: unchanged")
    allow: list[str] | None = Field(
        default=None, description="the proxy's allow-list, replaced whole (HOST or *.DOMAIN, :PORT[,PORT]); null: kept"
    )

    def patterns(self) -> tuple[HostPattern, ...] | None:
        return None if self.allow is None else tuple(dict.fromkeys(HostPattern.parse(p) for p in self.allow))


class VmEgressOut(BaseModel):
    vm: str
    mode: EgressMode
    allow: list[str] = Field(description="hosts the proxy lets through (mode proxy)")
    proxy: str | None = Field(description="the proxy's URL as the guest is told it (mode proxy, while running)")
    recent: list[AuditEntryOut] = Field(description="the proxy's latest decisions for this VM, newest first")


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
    tags: list[Tag] = Field(min_length=1)


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


def _setting_check(key: str) -> AfterValidator:
    return _domain_check(SETTINGS[key].check)


def _text_setting(key: str) -> Any:
    return Annotated[str, Field(pattern=r"\S", description="not blank"), _setting_check(key)]


def _int_setting(key: str, bounds: tuple[int, int]) -> Any:
    return Annotated[int, Field(strict=True), _documented(minimum=bounds[0], maximum=bounds[1]), _setting_check(key)]


_PREFIXES = "|".join(str(n) for n in range(SUBNET_PREFIX_RANGE[0], SUBNET_PREFIX_RANGE[1] + 1))
_IP = Annotated[str, Field(strict=True), _documented(anyOf=[{"format": "ipv4"}, {"format": "ipv6"}])]

# The value each setting takes, stated as the schema of its PUT body (routers.settings makes one route per key) and
# enforced by the setting's own check (domain.settings): what the schema cannot say (a private subnet, a name other
# than "." or "..") is still that check's 422. Every key of domain.settings.SETTINGS must be here (routers.settings
# fails at import otherwise).
SETTING_VALUES: dict[str, Any] = {
    "default_image": _text_setting("default_image"),
    "default_kernel": _text_setting("default_kernel"),
    "default_vcpus": _int_setting("default_vcpus", VCPUS_RANGE),
    "default_mem_mib": _int_setting("default_mem_mib", MEM_MIB_RANGE),
    "firecracker_version": _text_setting("firecracker_version"),
    "firecracker_base_url": _text_setting("firecracker_base_url"),
    "network_bridge": Annotated[str, Field(pattern=IFNAME_RE.pattern), _setting_check("network_bridge")],
    "network_subnet": Annotated[
        str,
        Field(pattern=rf"^[0-9]{{1,3}}(\.[0-9]{{1,3}}){{3}}/({_PREFIXES})$", description="a private IPv4 network"),
        _setting_check("network_subnet"),
    ],
    "dns_servers": Annotated[
        Literal["from-host"] | Annotated[list[_IP], Field(max_length=DNS_SERVERS_MAX)], _setting_check("dns_servers")
    ],
    "vmm": Annotated[str, _documented(enum=list(VMM_CHOICES)), _setting_check("vmm")],
    "default_egress": EgressMode,
    "audit_retention_days": _int_setting("audit_retention_days", RETENTION_DAYS_RANGE),
}


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


class PoolIn(Strict):
    size: PoolSize = Field(description="ready VMs to keep")
    image: str | None = Field(default=None, description="default from settings (resolved now)")
    vcpus: Vcpus | None = Field(default=None, description="default from settings (resolved now)")
    mem_mib: MemMib | None = Field(default=None, description="default from settings (resolved now)")
    network: StrictBool | None = Field(default=None, description="false: no NIC; default: nexusd's")
    egress: EgressMode | None = Field(default=None, description="default: default_egress (resolved now)")


class PoolOut(BaseModel):
    name: str
    image: str
    kernel: str
    vcpus: int
    mem_mib: int
    network: bool
    egress: EgressMode
    size: int = Field(description="ready VMs it keeps")
    ready: int = Field(description="booted and waiting to be claimed")
    booting: int = Field(description="on their way")
    problem: str | None = Field(description="why its last boot failed (the next one waits a while); null: none")

    @classmethod
    def of(cls, status: PoolStatus) -> PoolOut:
        t = status.template
        return cls(
            name=t.name,
            image=t.image,
            kernel=t.kernel,
            vcpus=t.vcpus,
            mem_mib=t.mem_mib,
            network=t.network,
            egress=t.egress,
            size=t.size,
            ready=status.ready,
            booting=status.booting,
            problem=status.problem,
        )


class HealthOut(BaseModel):
    status: str
    version: str
    vms: int
    driver: DriverOut
    storage: StorageOut
    network: EgressOut
    pools: list[PoolOut] = Field(default_factory=list, description="the warm pools: ready VMs of each, and its size")


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = Field(
        default=None, description="on a 5xx: nexusd's log line for this error carries the same id"
    )


class ErrorOut(BaseModel):
    error: ErrorDetail


class ExecIn(Strict):
    command: str | list[str] = Field(description="a string run by /bin/sh -c, or an argv run without a shell")
    cwd: str | None = None
    env: dict[str, str] | None = None
    stdin: str | None = None
    timeout_s: float = Field(default=600.0, strict=True, gt=0, le=86400)


class KernelPullIn(Strict):
    version: KernelRef | None = Field(
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
    name: Name | None = Field(
        default=None, description="default: the base's name (debian-bookworm) or file stem; the VM's name for from_vm"
    )
    base: str = Field(default="debian-bookworm", description="debian-bookworm, a rootfs tarball path, or a URL")
    sha256: str | None = Field(default=None, description="required for a tarball or URL base")
    size_mib: ImageSizeMib | None = Field(
        default=None, description="default: twice what the files take (free room as large), at least 1024"
    )
    packages: list[PackageName] = Field(
        default=[], max_length=MAX_PACKAGES, description="Debian packages to install (a debian-<suite> base only)"
    )
    profiles: list[ProfileName] = Field(default=[], description="documented package sets added to packages: dev")
    from_vm: str | None = Field(
        default=None,
        min_length=1,
        description="instead of building: save this stopped VM's root drive (name or id) as the image, with the "
        "current agent; then only name may be given besides",
    )

    @model_validator(mode="after")
    def _from_vm_alone(self) -> ImageBuildIn:
        if self.from_vm is not None:
            extra = sorted(self.model_fields_set - {"name", "from_vm"})
            if extra:
                raise ValueError(f"from_vm saves a VM's drive as it is: {', '.join(extra)} cannot go with it")
        return self


class ImageOriginOut(BaseModel):
    vm_id: str
    vm_name: str = Field(description="its name then (the VM may be removed or renamed since)")
    image: str = Field(description="the image that VM was created from")


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
    packages: list[str] = Field(description="Debian packages installed on top of the base (profiles expanded)")
    origin: ImageOriginOut | None = Field(description="the VM it was saved from (from_vm); null when built")

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
            packages=list(image.packages),
            origin=(ImageOriginOut(vm_id=o.vm_id, vm_name=o.vm_name, image=o.image) if (o := image.origin) else None),
        )


class WriteOut(BaseModel):
    path: str
    size: int


class ArchiveOut(BaseModel):
    """What a tar stream unpacked into a VM held."""

    path: str = Field(description="the guest path the upload named")
    files: int
    dirs: int
    symlinks: int
    hardlinks: int
    bytes: int = Field(description="file data unpacked")


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
    name: Name = Field(description="unique name")
    image: str | None = Field(default=None, description="copy this image (give image or size_mib)")
    size_mib: DriveSizeMib | None = Field(default=None, description="an empty ext4 drive of this size")


class DriveAttach(Strict):
    vm: str = Field(description="VM name or id (the VM must be stopped)")
    mount: str | None = Field(default=None, description="where the agent mounts it at boot, e.g. /data")


class DriveResize(Strict):
    size_mib: DriveSizeMib = Field(description="the new size; drives only grow")


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
    name: Name | None = Field(default=None, description="default: snap-<UTC time>")


class SnapshotDriveOut(BaseModel):
    drive_id: str
    drive_name: str
    kind: DriveKind
    mount_path: str | None


class SavedStateOut(BaseModel):
    """A checkpoint's saved memory and device state, and what a VM must match to resume from it."""

    vmm: str
    accel: str
    kernel: str
    vcpus: int
    mem_mib: int
    size_bytes: int
    sha256: str


class SnapshotOut(BaseModel):
    id: str
    vm_id: str
    name: str
    created_at: datetime
    drives: list[SnapshotDriveOut]
    state: SavedStateOut | None = Field(
        description="a checkpoint's saved memory (restore it running); null: drives only"
    )

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
            state=SavedStateOut(**dataclasses.asdict(snapshot.state)) if snapshot.state is not None else None,
        )


class VmFork(Strict):
    name: Name = Field(description="the new VM's name")
    checkpoint: str | None = Field(
        default=None, description="fork at this checkpoint (default: one taken now, and removed once the fork runs)"
    )


class VmClone(Strict):
    name: Name = Field(description="the new VM's name")
    snapshot: str | None = Field(default=None, description="clone this snapshot instead of the current drives")


class FirecrackerOut(BaseModel):
    version: str
    path: str
    jailer: str | None
    sha256: str
    source: str
    installed_at: datetime

    @classmethod
    def of(cls, b: FirecrackerBinary) -> FirecrackerOut:
        return cls(
            version=b.version,
            path=str(b.path),
            jailer=str(b.jailer) if b.jailer else None,
            sha256=b.sha256,
            source=b.source,
            installed_at=b.installed_at,
        )


class FirecrackerPullIn(Strict):
    version: FirecrackerVersion | None = Field(
        default=None, description="release like 1.16.1; default: the firecracker_version setting"
    )
    path: str | None = Field(
        default=None, description="register this binary on the host instead of downloading (Unix socket only)"
    )
    sha256: str | None = Field(
        default=None, description="sha256 of the release tarball; needed for a version nexus has no pinned sum of"
    )


class TokenCreate(Strict):
    vm: str = Field(description="the VM (name or id) whose MCP endpoint the token opens")
    expires: str | None = Field(default=None, description="lifetime such as 30m, 1h, 7d, 2w; default: until removed")


class TokenOut(BaseModel):
    id: str
    vm_id: str
    vm_name: str
    created_at: datetime
    expires_at: datetime | None = Field(description="null: valid until removed")
    last_used: datetime | None = Field(description="last request with it, to the minute")

    @classmethod
    def of(cls, token: AgentToken) -> TokenOut:
        return cls(
            id=token.id,
            vm_id=token.vm_id,
            vm_name=token.vm_name,
            created_at=token.created_at,
            expires_at=token.expires_at,
            last_used=token.last_used,
        )


class TokenCreated(TokenOut):
    token: str = Field(description="the bearer token; shown only in this answer (nexusd keeps its sha256)")


SQLITE_MAX_INT = (1 << 63) - 1  # a larger row id is no row's, and SQLite cannot even be asked about it


class PolicyCreate(Strict):
    portal: str = Field(description="the portals it applies to: a VM name, or tag:TAG")
    work: str = Field(description="the VMs they may use: a VM name, tag:TAG, or @created (those the portal created)")
    tools: list[str] = Field(default_factory=list, description="guest tools allowed on them; * for all")
    calls_per_minute: int | None = Field(default=None, ge=1, description="per portal; null: no limit")
    max_concurrent: int | None = Field(default=None, ge=1, description="calls at once per portal; null: no limit")
    max_result_bytes: int | None = Field(default=None, ge=1, description="a bigger result is refused; null: any")
    manage: bool = Field(default=False, description="may create VMs and manage the ones it created")
    max_vms: int | None = Field(default=None, ge=1, description="with manage: VMs it may have at once (default 1)")
    images: list[str] = Field(default_factory=list, description="with manage: images it may use; empty: any")
    max_vcpus: Vcpus | None = Field(default=None, description="with manage: vCPUs per VM; null: any")
    max_mem_mib: MemMib | None = Field(default=None, description="with manage: memory per VM; null: any")

    def spec(self) -> RuleSpec:
        """The rule this asks for (Invalid for a malformed selector)."""
        manage = None
        if self.manage:
            manage = Management(self.max_vms or 1, tuple(self.images), self.max_vcpus, self.max_mem_mib)
        return RuleSpec(
            portal=Selector.parse(self.portal, work=False),
            work=Selector.parse(self.work, work=True),
            tools=tuple(dict.fromkeys(self.tools)),
            limits=Limits(self.calls_per_minute, self.max_concurrent, self.max_result_bytes),
            manage=manage,
        )


class PolicyOut(BaseModel):
    id: int
    portal: str
    work: str
    tools: list[str]
    calls_per_minute: int | None
    max_concurrent: int | None
    max_result_bytes: int | None
    manage: bool
    max_vms: int | None
    images: list[str]
    max_vcpus: int | None
    max_mem_mib: int | None
    created_at: datetime

    @classmethod
    def of(cls, rule: Rule) -> PolicyOut:
        spec, manage = rule.spec, rule.spec.manage
        return cls(
            id=rule.id,
            portal=str(spec.portal),
            work=str(spec.work),
            tools=list(spec.tools),
            calls_per_minute=spec.limits.calls_per_minute,
            max_concurrent=spec.limits.max_concurrent,
            max_result_bytes=spec.limits.max_result_bytes,
            manage=manage is not None,
            max_vms=manage.max_vms if manage else None,
            images=list(manage.images) if manage else [],
            max_vcpus=manage.max_vcpus if manage else None,
            max_mem_mib=manage.max_mem_mib if manage else None,
            created_at=rule.created_at,
        )


SecretName = Annotated[
    str,
    _documented(pattern=SECRET_NAME_RE.pattern),
    _domain_check(check_secret_name),
    Field(description="also the environment variable that holds its placeholder in a bound VM"),
]
BoundHost = Annotated[
    str,
    _documented(pattern=HOST_RE.pattern),
    _domain_check(check_bound_host),
    Field(description="the one host (lowercase, no wildcard, no port) whose requests get the secret"),
]
HeaderName = Annotated[str, _documented(pattern=HEADER_RE.pattern), _domain_check(check_header)]


class BindingCreate(Strict):
    vm: str | None = Field(default=None, description="the VM (name or id) it applies to; or give tag")
    tag: Tag | None = Field(default=None, description="every VM with this tag; or give vm")
    host: BoundHost
    header: HeaderName | None = Field(default=None, description="the header that carries the value; or bearer")
    bearer: StrictBool = Field(default=False, description="send it as Authorization: Bearer <value>; or header")


class BindingOut(BaseModel):
    id: int
    secret: str
    vm_id: str | None
    vm_name: str | None
    tag: str | None
    host: str
    header: str
    bearer: bool
    created_at: datetime

    @classmethod
    def of(cls, record: BindingRecord) -> BindingOut:
        b = record.binding
        return cls(
            id=b.id,
            secret=b.secret,
            vm_id=b.vm_id,
            vm_name=record.vm_name,
            tag=b.tag,
            host=b.host,
            header=b.header,
            bearer=b.bearer,
            created_at=record.created_at,
        )


class SecretOut(BaseModel):
    """A secret without its value (no answer ever carries one)."""

    name: str
    size_bytes: int
    created_at: datetime
    updated_at: datetime
    usable: bool = Field(description="false: its value file is missing from the state dir; set it again")
    placeholder: str = Field(description="what a bound VM's environment holds instead of the value")
    bindings: list[BindingOut]

    @classmethod
    def of(cls, info: SecretInfo) -> SecretOut:
        meta = info.meta
        return cls(
            name=meta.name,
            size_bytes=meta.size_bytes,
            created_at=meta.created_at,
            updated_at=meta.updated_at,
            usable=info.usable,
            placeholder=placeholder(meta.name),
            bindings=[BindingOut.of(r) for r in info.bindings],
        )


# RFC 3339's date-time, which the schema's format names: pydantic alone would also take a number as Unix time.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        return datetime.fromisoformat(value.upper())
    if isinstance(value, datetime):
        return value
    raise ValueError(f"expected a time such as 2026-01-31T12:00:00Z (RFC 3339, with its zone), got {value!r}")


Rfc3339 = Annotated[datetime, BeforeValidator(_rfc3339)]


class AuditEntryOut(BaseModel):
    id: int
    at: datetime = Field(description="when the call began")
    caller: str = Field(description='"host" (Unix socket), "admin" (TCP admin token), "token:<id>", "vm:<name>"...')
    via: Via
    action: str = Field(description='a tool name, or a REST route such as "POST /v1/vms/{ref}/start"')
    target_id: str | None = Field(description="the VM acted on, when there is one")
    target: str | None = Field(description="its name then")
    decision: Decision
    rule: int | None = Field(description="the policy rule that decided; null: default or a host action")
    reason: str
    args_digest: str | None = Field(description="sha256 of the arguments (never their contents); null: none")
    args_bytes: int
    duration_ms: float
    result_bytes: int
    is_error: bool

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryOut:
        assert entry.id is not None  # entries are shown once stored
        return cls(
            id=entry.id,
            at=entry.at,
            caller=entry.caller,
            via=entry.via,
            action=entry.action,
            target_id=entry.target_id,
            target=entry.target,
            decision=entry.decision,
            rule=entry.rule,
            reason=entry.reason,
            args_digest=entry.args_digest,
            args_bytes=entry.args_bytes,
            duration_ms=entry.duration_ms,
            result_bytes=entry.result_bytes,
            is_error=entry.is_error,
        )


class AuditPage(BaseModel):
    entries: list[AuditEntryOut] = Field(description="newest first; oldest first when after= was given")
    next_before: int | None = Field(description="before= this for the next older page; null: nothing older")
    next_after: int | None = Field(
        description="after= this for what is newer than this page (null: an empty page and no after= given)"
    )


# -- MCP tool arguments: the REST bodies where a tool takes one, plus the VM (or drive) the route names -----------

VmRef = Annotated[str, Field(min_length=1, description="VM name or id")]
DriveRef = Annotated[str, Field(min_length=1, description="drive name or id")]
SnapshotName = Annotated[str, Field(min_length=1, description="snapshot name")]


class NoArgs(Strict):
    pass


class PortalCreateArgs(Strict):
    """A portal creating a work VM of its own through its gateway: no role, kernel, network, ports or tags of its
    choosing (tags could make it match another rule's selector or a tag-bound secret); its egress is the portal's."""

    name: Name = Field(description="unique name")
    vcpus: Vcpus | None = Field(default=None, description="default from settings")
    mem_mib: MemMib | None = Field(default=None, description="default from settings")
    image: str | None = Field(default=None, description="default from settings")
    start: bool = Field(default=True, description="boot it and return once it is ready")


class VmArgs(Strict):
    vm: VmRef


class VmListArgs(Strict):
    state: VmState | None = None
    role: Role | None = None
    tags: list[Tag] = Field(default_factory=list, description="only VMs with all of these tags")


class VmStartArgs(VmArgs):
    wait: StrictBool = Field(default=True, description="return once its agent is ready")


class VmRemoveArgs(VmArgs):
    force: StrictBool = Field(default=False, description="stop a running VM first")


class VmLogsArgs(VmArgs):
    tail: int = Field(default=100, strict=True, ge=1, description="lines from the end")


class VmExecArgs(ExecIn):
    vm: VmRef


class DriveArgs(Strict):
    drive: DriveRef


class DriveAttachArgs(DriveAttach):
    drive: DriveRef


class DriveResizeArgs(DriveResize):
    drive: DriveRef


class SnapshotCreateArgs(SnapshotCreate):
    vm: VmRef


class SnapshotArgs(VmArgs):
    snapshot: SnapshotName


class SnapshotRollbackArgs(SnapshotArgs):
    restart: StrictBool = Field(default=False, description="stop, roll back, start (else the VM must be stopped)")


class VmCloneArgs(VmClone):
    vm: VmRef


class VmForkArgs(VmFork):
    vm: VmRef


class WorkspaceRollbackArgs(Strict):
    name: SnapshotName


def describe_errors(errors: Iterable[Mapping[str, Any]], not_an_object: str = "arguments must be an object") -> str:
    """One line for pydantic's validation errors, as REST and MCP report them."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "value_error":  # a domain check's own message (``_domain_check``)
            where = ""  # it names the field and the value itself: "invalid name 'X': use ..."
            msg = str(err.get("ctx", {}).get("error", msg))
        elif err.get("type") in ("model_attributes_type", "dict_type") and not where:
            msg = not_an_object
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Mapping[str, Any]) -> M:
    """``data`` (MCP tool arguments) as ``model``; Invalid with the one-line message otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(describe_errors(exc.errors())) from exc


# -- background processes (the agent's process_* tools; its limits, checked equal in tests/unit/test_processes.py) --

PROCESS_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"
PROCESS_LOG_BYTES_RANGE = (64 * 1024, 256 * 1024 * 1024)
PROCESS_READY_TIMEOUT_MAX_S = 600.0
PROCESS_WAIT_MAX_S = 3600.0
PROCESS_OUTPUT_LIMIT_MAX = 512 * 1024
ProcessSignal = Literal["TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT"]


class ProcessStartIn(Strict):
    command: str | list[str] = Field(description="a string run by /bin/sh -c, or an argv run without a shell")
    name: str | None = Field(default=None, pattern=PROCESS_NAME_PATTERN, description="unique among running ones")
    cwd: str | None = None
    env: dict[str, str] | None = None
    ready_port: int | None = Field(default=None, strict=True, ge=1, le=65535, description="ready when it accepts")
    ready_log: str | None = Field(default=None, description="ready when a line of output matches (regex)")
    ready_timeout_s: float = Field(default=30.0, strict=True, gt=0, le=PROCESS_READY_TIMEOUT_MAX_S)
    max_log_bytes: int | None = Field(
        default=None, strict=True, ge=PROCESS_LOG_BYTES_RANGE[0], le=PROCESS_LOG_BYTES_RANGE[1]
    )


class ProcessOut(BaseModel):
    id: str
    name: str | None
    command: str | list[str]
    cwd: str
    pid: int | None
    state: Literal["running", "exited", "lost"]
    running: bool
    exit_code: int | None = Field(description="negative: killed by that signal")
    signal: str | None
    started_at: str
    ended_at: str | None
    output_bytes: int
    reason: str | None = Field(description="why nexus stopped it (a readiness check that failed)")
    ready_after_s: float | None = None
    timed_out: bool | None = Field(default=None, description="wait: it still runs")


class ProcessOutputOut(BaseModel):
    process: str
    text: str
    offset: int
    next_offset: int
    total_bytes: int
    dropped_bytes: int = Field(description="output rotated away (before the oldest byte kept)")
    running: bool
    state: Literal["running", "exited", "lost"]
    exit_code: int | None
    signal: str | None


class ProcessSignalIn(Strict):
    signal: ProcessSignal = "TERM"
