"""Value objects of the domain: VMs, their state history, images, kernels, drives and snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from nexus.domain.egress import EgressMode, HostPattern
from nexus.domain.network import PublishedPort
from nexus.domain.states import VmState


def utcnow() -> datetime:
    return datetime.now(UTC)


class Role(StrEnum):
    WORK = "work"
    PORTAL = "portal"
    SERVICE = "service"


class ExpiryAction(StrEnum):
    STOP = "stop"
    REMOVE = "rm"


@dataclass(frozen=True, slots=True)
class Lifetime:
    """When a VM ends or sleeps on its own: ``ttl_s`` after its creation it is stopped (or removed), and a ready VM
    that nothing used for ``idle_suspend_s`` (no tool call, command, file or process request) is suspended: its
    memory and drives are checkpointed and its VMM stopped, until the next use resumes it."""

    ttl_s: int | None = None
    on_expiry: ExpiryAction = ExpiryAction.STOP
    idle_suspend_s: int | None = None


@dataclass(frozen=True, slots=True)
class Vm:
    id: str
    name: str
    role: Role
    vcpus: int
    mem_mib: int
    image: str
    kernel: str
    state: VmState
    created_at: datetime
    updated_at: datetime
    tags: tuple[str, ...] = field(default=())
    pid: int | None = None  # the VMM process, while there is one
    vmm: str | None = None  # driver that runs it: qemu, firecracker
    accel: str | None = None  # kvm or tcg
    network: bool = True  # on the bridge with an address (leased at create), or no NIC at all
    created_by: str | None = None  # the portal VM that created it through its gateway (None: the host)
    egress: EgressMode = EgressMode.OPEN  # how it reaches the outside when it has a NIC
    lifetime: Lifetime = field(default=Lifetime())
    suspended: bool = False  # stopped by idle suspend: its next use resumes it from its suspend checkpoint
    pool: str | None = None  # the warm-pool template it was booted for, until claimed (hidden from users' lists)

    @property
    def expires_at(self) -> datetime | None:
        return None if self.lifetime.ttl_s is None else self.created_at + timedelta(seconds=self.lifetime.ttl_s)


@dataclass(frozen=True, slots=True)
class Image:
    """A bootable root filesystem (ext4 file) with the guest agent installed."""

    id: str
    name: str
    base: str
    path: Path
    size_mib: int
    sha256: str
    init_system: str
    agent_version: str
    built_at: datetime
    packages: tuple[str, ...] = ()  # Debian packages installed on top of the base (profiles expanded)
    origin: ImageOrigin | None = None  # the VM whose root drive it was saved from; None when built


@dataclass(frozen=True, slots=True)
class ImageOrigin:
    """Where an image saved from a VM came from (kept as text: the VM may be removed since)."""

    vm_id: str
    vm_name: str
    image: str  # the image that VM was created from


@dataclass(frozen=True, slots=True)
class Kernel:
    """A cached, bootable kernel. ``modules_dir`` is ``lib/modules/<version>`` with depmod's index files."""

    version: str
    flavour: str
    vmlinuz: Path
    config: Path
    modules_dir: Path
    sha256: str
    size_bytes: int
    pulled_at: datetime
    package_version: str = ""
    deb_sha256: str = ""
    vmlinux: Path | None = None  # the uncompressed ELF, when it could be unpacked (boots faster)

    @property
    def dir(self) -> Path:
        return self.vmlinuz.parent

    @property
    def boot_file(self) -> Path:
        """What to hand the VMM: the vmlinux when there is one, else the bzImage."""
        return self.vmlinux or self.vmlinuz


@dataclass(frozen=True, slots=True)
class FirecrackerBinary:
    """A Firecracker release on this host (downloaded and verified, or registered by path)."""

    version: str
    path: Path
    jailer: Path | None
    sha256: str
    source: str  # the tarball URL, or the local path it was registered from
    installed_at: datetime


@dataclass(frozen=True, slots=True)
class VmSpec:
    """What a caller asks for when creating a VM; unset fields come from settings."""

    name: str
    role: Role = Role.WORK
    vcpus: int | None = None
    mem_mib: int | None = None
    image: str | None = None
    kernel: str | None = None
    tags: tuple[str, ...] = ()
    network: bool | None = None  # None: nexusd's default (on unless its config turns networking off)
    publish: tuple[PublishedPort, ...] = ()
    created_by: str | None = None  # a portal creating it through its gateway
    egress: EgressMode | None = None  # None: the default_egress setting
    allow: tuple[HostPattern, ...] = ()  # hosts its egress proxy lets through
    lifetime: Lifetime = field(default=Lifetime())
    pool: str | None = None  # booted to wait in this warm pool


@dataclass(frozen=True, slots=True)
class VmFilter:
    role: Role | None = None
    state: VmState | None = None
    tags: tuple[str, ...] = ()
    include_pool: bool = False  # the warm pools' unclaimed VMs too (never shown to users)


@dataclass(frozen=True, slots=True)
class PoolTemplate:
    """A warm pool: nexusd keeps ``size`` VMs of this shape ready; a plain request for exactly this shape claims
    one instead of booting. Every field is resolved (no defaults left), so matching is plain equality."""

    name: str
    image: str
    kernel: str
    vcpus: int
    mem_mib: int
    network: bool
    egress: EgressMode
    size: int


@dataclass(frozen=True, slots=True)
class PoolStatus:
    template: PoolTemplate
    ready: int  # booted and waiting to be claimed
    booting: int  # on their way
    problem: str | None = None  # why its last boot failed, until one succeeds (the next waits, see services/pools)


@dataclass(frozen=True, slots=True)
class StateChange:
    vm_id: str
    from_state: VmState | None
    to_state: VmState
    reason: str
    at: datetime


class DriveKind(StrEnum):
    ROOT = "root"  # a VM's boot disk, made from its image; lives and dies with the VM
    DATA = "data"  # a named disk of its own; attached to at most one VM, survives it


@dataclass(frozen=True, slots=True)
class Drive:
    """A raw disk file in its own volume (a btrfs subvolume, or a directory elsewhere)."""

    id: str
    name: str
    kind: DriveKind
    size_mib: int
    created_at: datetime
    vm_id: str | None = None  # the VM it is attached to
    mount_path: str | None = None  # where the agent mounts a data drive at boot (None: not mounted)
    image: str | None = None  # the image it was made from


@dataclass(frozen=True, slots=True)
class SnapshotDrive:
    """One drive as a snapshot holds it."""

    drive_id: str
    drive_name: str
    kind: DriveKind
    mount_path: str | None


@dataclass(frozen=True, slots=True)
class SavedState:
    """What makes a snapshot a checkpoint: the running VM's memory and device state, saved by its VMM while the
    guest was paused for the drive copies, and what a VM must match to resume from it (same VMM, accelerator,
    kernel, vCPUs and memory). ``sha256`` covers the state file, so a damaged one is refused before anything
    changes."""

    vmm: str
    accel: str
    kernel: str
    vcpus: int
    mem_mib: int
    size_bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A point-in-time copy of every drive a VM had, taken together; a checkpoint when it also holds ``state``."""

    id: str
    vm_id: str
    name: str
    created_at: datetime
    drives: tuple[SnapshotDrive, ...] = ()
    state: SavedState | None = None
