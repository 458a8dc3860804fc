"""Ports: what the services need from the outside world, as Protocols. Adapters implement them.

A VMM driver (QEMU, Firecracker) turns a ``LaunchSpec`` into a running ``VmProcess``; the rest of Nexus
talks to the process only through this port and cannot tell the drivers apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nexus.domain.egress import EgressMode, HostPattern
from nexus.domain.models import (
    Drive,
    FirecrackerBinary,
    Image,
    ImageOrigin,
    Kernel,
    PoolTemplate,
    Snapshot,
    StateChange,
    Vm,
    VmFilter,
)
from nexus.domain.network import GuestGuard, NetLease, OwnedLink, PortForward, PublishedPort
from nexus.domain.settings import SettingValue
from nexus.domain.states import VmState

if TYPE_CHECKING:
    import asyncio  # annotations only: importing asyncio costs the CLI ~15 ms


class GuestPort(StrEnum):
    """The streams between host and guest agent."""

    CONTROL = "control"  # hello, heartbeats, nexus/* requests
    MCP = "mcp"  # MCP JSON-RPC: the guest's tools
    GATEWAY = "gateway"  # a portal's way to nexusd: the MCP sessions of agents inside it (protocol.gateway)


NotificationHandler = Callable[[str, Any], None]
"""``(method, params)`` of a notification the agent sends on its own (hello, heartbeats)."""
ProgressHandler = Callable[[dict[str, Any]], None]
"""The params of each progress notification for one call."""


class GuestLink(Protocol):
    """One open JSON-RPC conversation with a guest agent's port, many calls in flight at once.

    Failures are domain errors, mapped once by the adapter: ``Unavailable`` when the link is closed, drops during
    the call (every call in flight fails at once) or gets no answer in time; ``Invalid`` when the agent refuses
    the params; ``GuestError`` for the agent's own error answer."""

    @property
    def closed(self) -> bool: ...

    @property
    def close_reason(self) -> str: ...

    async def wait_closed(self) -> None: ...

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = 30.0,
        on_progress: ProgressHandler | None = None,
    ) -> Any: ...

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None: ...

    async def close(self, reason: str = "closed") -> None: ...


@dataclass(frozen=True, slots=True)
class AgentLinks:
    """A ready VM's two open links to its agent: control (``nexus/*`` requests) and MCP (its tools)."""

    control: GuestLink
    mcp: GuestLink


class GuestConnector(Protocol):
    """Opens a ``GuestLink`` to ``port`` of the guest run by ``process``; ``Unavailable`` past ``timeout_s``."""

    async def __call__(
        self,
        process: VmProcess,
        port: GuestPort,
        vm_name: str,
        on_notification: NotificationHandler | None,
        timeout_s: float,
    ) -> GuestLink: ...


class GatewayHost(Protocol):
    """Serves what a portal's agent tunnels over its gateway link (``nexus.protocol.gateway``)."""

    async def serve(self, portal_id: str, link: GuestLink, inbox: asyncio.Queue[tuple[str, Any]]) -> None:
        """Serve the sessions whose messages arrive in ``inbox`` (``(method, params)`` of the link's notifications)
        until ``link`` closes; then end them all."""
        ...


@dataclass(frozen=True, slots=True)
class DataDrive:
    """A data drive as a driver attaches it: virtio-blk, its id as the device serial (QEMU ``serial=``,
    Firecracker's ``drive_id``, which it reports as the virtio-blk device id), so the agent finds it by
    ``/sys/block/vdX/serial`` and mounts it where ``nexus.mounts`` on the kernel command line says."""

    drive_id: str
    path: Path
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything a driver needs to boot one VM. Paths are on the host."""

    vm_id: str
    name: str
    vcpus: int
    mem_mib: int
    kernel: Path  # what the VMM boots (an ELF vmlinux where there is one, else the bzImage)
    kernel_version: str
    initrd: Path
    root_drive: Path  # the VM's own copy-on-write copy of its image
    console_log: Path
    runtime_dir: Path  # the driver's sockets and pid files; created by the driver
    cmdline_extra: tuple[str, ...] = ()
    data_drives: tuple[DataDrive, ...] = ()
    net: NetLease | None = None  # a virtio-net NIC on this lease's TAP (which exists already); None: no network
    gateway: bool = False  # a portal: its agent gets the gateway port (GuestPort.GATEWAY); no other VM has one
    resume_from: Path | None = None  # a checkpoint's VMM state dir: load it and run on from there instead of booting

    @property
    def kernel_args(self) -> tuple[str, ...]:
        """What the driver adds to the kernel command line: ``cmdline_extra`` and the guest's address."""
        return (*self.cmdline_extra, self.net.kernel_arg()) if self.net is not None else self.cmdline_extra


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a VMM process ended: ``code`` is its exit status, negative for the signal that killed it, None when
    nexusd could not learn it (a VMM adopted after a restart is not nexusd's child, and its parent may have reaped
    it first)."""

    code: int | None

    def __str__(self) -> str:
        if self.code is None:
            return "status unknown"
        return f"signal {-self.code}" if self.code < 0 else f"status {self.code}"


@dataclass(frozen=True, slots=True)
class VmmRecord:
    """What a launch leaves in the store so that a later nexusd can find the VMM again and prove it is the same
    process: its pid, its start time (clock ticks since boot, ``/proc/PID/stat`` field 22: a recycled pid has
    another), the driver that launched it, the accelerator, and the driver's own notes (where its sockets and
    chroot are, which a changed config must not move)."""

    pid: int
    start_time: int
    driver: str
    accel: str
    detail: Mapping[str, str] = field(default_factory=dict)


class VmmGone(Exception):
    """Adoption found no VMM to adopt: it exited while nexusd was down (``status``), or its pid now belongs to
    another process (which is left alone)."""

    def __init__(self, what: str, status: ExitStatus = ExitStatus(None)) -> None:
        super().__init__(what)
        self.what = what
        self.status = status


class VmProcess(Protocol):
    """One running VMM process, owned by whoever launched or adopted it."""

    @property
    def pid(self) -> int: ...

    @property
    def accel(self) -> str: ...

    @property
    def record(self) -> VmmRecord:
        """What to store so a later nexusd can adopt this VMM."""
        ...

    @property
    def exit_status(self) -> ExitStatus | None:
        """None while the VMM runs; how it ended once it has (and its resources are released)."""
        ...

    async def wait(self) -> ExitStatus:
        """Wait for the VMM to exit (reaping it when it is a child) and release what the driver held for it."""
        ...

    async def connect(self, port: GuestPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a byte stream to the guest agent's ``port``. Raises DriverError when it cannot."""
        ...

    async def shutdown(self, timeout_s: float) -> ExitStatus:
        """Ask the guest to power off; kill the VMM if it is still running after ``timeout_s``."""
        ...

    async def kill(self) -> ExitStatus:
        """Kill the VMM at once and wait for it."""
        ...

    async def pause(self) -> None:
        """Freeze the guest's vCPUs (memory and devices stay). Raises DriverError."""
        ...

    async def resume(self) -> None:
        """Let a paused guest run again. Raises DriverError."""
        ...

    async def checkpoint(self, directory: Path) -> None:
        """Pause the guest and save its memory and device state into ``directory`` (the driver's own files, which a
        launch with ``LaunchSpec.resume_from = directory`` loads). The guest stays paused, so its drives can be
        copied consistently with that state; ``resume`` lets it go on. Raises DriverError."""
        ...

    async def detach(self) -> None:
        """Let go of the VMM and leave it running (nexusd is exiting): close the driver's connections to it, keep
        its runtime dir. A later nexusd adopts it from ``record``."""
        ...


SpawnHook = Callable[[VmmRecord], None]
"""Called by a driver right after it spawned a VMM, before anything else can fail: the pid is on record then."""


class VmmDriver(Protocol):
    """A virtual machine monitor (QEMU, Firecracker)."""

    @property
    def name(self) -> str: ...

    @property
    def reason(self) -> str:
        """Why this driver and accelerator were chosen, for ``nexusctl status``."""
        ...

    async def launch(self, spec: LaunchSpec, on_spawn: SpawnHook) -> VmProcess:
        """Start the VMM for ``spec``; return once it runs (not once the guest is up). ``on_spawn`` gets the
        record as soon as the process exists; if it raises, the VMM is killed. Raises DriverError and leaves
        nothing behind when it cannot."""
        ...

    async def adopt(self, vm_id: str, name: str, record: VmmRecord) -> VmProcess:
        """Take over the VMM an earlier nexusd launched for ``vm_id`` after proving it is that process (pid, start
        time and command line). Raises VmmGone when it is not running, DriverError when it runs but cannot be
        reattached (``kill_vmm`` then ends it)."""
        ...

    def forget(self, vm_id: str, record: VmmRecord | None) -> None:
        """Remove what a VMM that is gone left behind (its runtime dir, a jailed Firecracker's chroot), for a VM
        whose VMM died while nexusd was down. A process handle does this itself when its VMM exits."""
        ...


class VmStore(Protocol):
    """Persistence of VMs, their tags and their state history."""

    def insert(self, vm: Vm, reason: str) -> None: ...
    def get(self, ref: str) -> Vm: ...
    def find(self, flt: VmFilter = ...) -> list[Vm]: ...
    def generation(self) -> int:
        """A number that changes whenever anything in the store changes: what was read under one value is still
        current while it holds (a serialised listing can be kept)."""
        ...

    def count(self) -> int: ...
    def set_state(self, vm_id: str, expected: VmState, new: VmState, reason: str) -> None: ...
    def set_runtime(self, vm_id: str, record: VmmRecord | None) -> None:
        """Record the VMM that runs the VM (None: clear it)."""
        ...

    def set_suspended(self, vm_id: str, suspended: bool) -> None: ...
    def runtime_record(self, vm_id: str) -> VmmRecord | None:
        """The recorded VMM; None when there is none or it was launched before VMMs were recorded in full."""
        ...

    def delete(self, vm_id: str) -> None: ...
    def add_tags(self, vm_id: str, tags: Iterable[str]) -> None: ...
    def remove_tags(self, vm_id: str, tags: Iterable[str]) -> None: ...
    def history(self, vm_id: str) -> list[StateChange]: ...
    def set_egress(self, vm_id: str, mode: EgressMode, allow: Iterable[HostPattern]) -> None: ...
    def allow_list(self, vm_id: str) -> tuple[HostPattern, ...]: ...
    def claim(self, vm_id: str, pool: str, name: str, root_drive: str, tags: Iterable[str], reason: str) -> bool:
        """Take a ready VM out of warm pool ``pool`` as ``name`` (its root drive, if made, as ``root_drive``), with
        ``tags`` added, atomically; False when it is no longer a ready VM of that pool. Conflict when ``name`` is
        taken."""
        ...


class PoolStore(Protocol):
    """Persistence of warm-pool templates."""

    def put(self, template: PoolTemplate) -> None: ...
    def get(self, name: str) -> PoolTemplate: ...
    def all(self) -> list[PoolTemplate]: ...
    def delete(self, name: str) -> None: ...


class SettingsStore(Protocol):
    def stored(self) -> dict[str, SettingValue]: ...
    def put(self, key: str, value: SettingValue) -> None: ...


class ImageStore(Protocol):
    def insert(self, image: Image) -> None: ...
    def get(self, ref: str) -> Image: ...
    def find(self) -> list[Image]: ...
    def users(self, name: str) -> list[str]: ...
    def delete(self, image_id: str) -> None: ...


Progress = Callable[[str, float], None]
"""Called with (stage description, fraction done 0..1) during long work."""


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """What to build: ``base`` is a known base name, a rootfs tarball path, or a URL (then ``sha256`` is due);
    ``packages`` (checked, sorted: see ``domain.packages``) go on top of a ``debian-<suite>`` base. No
    ``size_mib``: twice what the files take, at least the default."""

    name: str
    base: str
    size_mib: int | None
    sha256: str | None = None
    packages: tuple[str, ...] = ()


class KernelSource(Protocol):
    """Kernels fetched, verified and cached; each with the initramfs Nexus boots it with."""

    def list(self) -> list[Kernel]: ...
    def get(self, ref: str) -> Kernel:
        """By version, or by flavour (the newest cached of it). NotFound when not cached."""
        ...

    def pull(self, ref: str | None, progress: Progress) -> Kernel: ...
    def remove(self, version: str) -> None: ...
    def initrd(self, kernel: Kernel) -> Path:
        """The initramfs for ``kernel``, built and cached on first need."""
        ...


class ImageBuilder(Protocol):
    def build(self, request: ImageRequest, out_dir: Path, progress: Progress) -> Image:
        """Build a bootable ext4 image under ``out_dir``. Raises Invalid/Unavailable, leaving nothing behind."""
        ...

    def seal_copy(self, copy: Path, name: str, origin: ImageOrigin, out_dir: Path, progress: Progress) -> Image:
        """Make ``copy`` (a copy of a stopped VM's root drive, in ``out_dir``, not used by anything else) the image
        ``name`` beside it: the current agent installed, a new manifest, checked and hashed like a built one.
        ``copy`` is consumed (moved, or removed on failure: Invalid/Unavailable)."""
        ...


class FirecrackerSource(Protocol):
    """Firecracker binaries: fetched release tarballs, or binaries already on the host."""

    def list(self) -> list[FirecrackerBinary]: ...
    def get(self, version: str | None = None) -> FirecrackerBinary: ...
    def pull(self, version: str, base_url: str, progress: Progress, sha256: str | None = None) -> FirecrackerBinary: ...
    def add_local(self, binary: Path) -> FirecrackerBinary: ...
    def remove(self, version: str) -> None: ...


class NetStore(Protocol):
    """Address leases and published ports, kept with the VMs they belong to."""

    def lease(self, vm_id: str) -> NetLease | None: ...
    def leases(self) -> list[NetLease]: ...
    def taken(self) -> set[str]:
        """Every leased address."""
        ...

    def insert_lease(self, lease: NetLease) -> None:
        """Conflict when the address (or the TAP name) is leased already."""
        ...

    def delete_lease(self, vm_id: str) -> None: ...
    def ports(self, vm_id: str) -> tuple[PublishedPort, ...]: ...
    def all_ports(self) -> dict[str, tuple[PublishedPort, ...]]:
        """Every VM's published ports, by VM id (VMs without any are left out)."""
        ...

    def set_ports(self, vm_id: str, ports: Sequence[PublishedPort]) -> None:
        """Conflict when another VM publishes one of the host ports."""
        ...


class HostLinks(Protocol):
    """The host's links (netlink): the bridge with the gateway address, one persistent TAP per VM."""

    async def ensure_bridge(self, name: str, gateway: IPv4Interface) -> None:
        """Create (if missing), address with ``gateway`` only, and bring up the bridge. Raises DriverError."""
        ...

    async def exists(self, name: str) -> bool: ...
    async def add_tap(self, name: str, bridge: str, alias: str) -> None:
        """A persistent TAP, up, attached to ``bridge`` as an isolated port; a leftover of that name is replaced."""
        ...

    async def delete(self, name: str) -> bool:
        """Remove a link; False when there was none."""
        ...

    async def owned(self) -> list[OwnedLink]:
        """Links whose alias marks them as nexusd's."""
        ...

    async def forget_neighbour(self, bridge: str, address: IPv4Address) -> None:
        """Drop the bridge's ARP entry for ``address`` (the next VM to lease it has another MAC)."""
        ...


class Firewall(Protocol):
    """The one nftables table nexusd owns, rebuilt whole and atomically from what should be."""

    def apply(
        self,
        bridge: str,
        subnet: IPv4Network,
        forwards: Sequence[PortForward],
        guests: Sequence[GuestGuard] = (),
        proxy_port: int | None = None,
    ) -> None:
        """The table for these published ports and attached guests; ``proxy_port``: nexusd's egress proxy on the
        gateway address, the one place a ``proxy`` guest may reach."""
        ...

    def exists(self) -> bool: ...
    def remove(self) -> bool:
        """Delete the table; False when there was none."""
        ...


class StorageBackend(Protocol):
    """Where drives live: volumes (one directory per drive) that can be cloned writable or read-only.

    btrfs: volumes are subvolumes, a clone is a snapshot (O(1)). reflink: directories, files cloned with
    FICLONE. copy: directories, files copied sparsely. Every method leaves nothing half-made on failure.
    """

    @property
    def name(self) -> str: ...

    @property
    def reason(self) -> str:
        """Why this backend was chosen, for ``nexusctl status``."""
        ...

    def create_volume(self, path: Path) -> None:
        """An empty writable volume at ``path`` (which must not exist)."""
        ...

    def clone_volume(self, source: Path, dest: Path, readonly: bool) -> None:
        """``dest`` (which must not exist) as a copy of volume ``source``; ``readonly`` for snapshots."""
        ...

    def delete_volume(self, path: Path) -> None:
        """Remove volume ``path`` and what it holds; nothing when it does not exist."""
        ...

    def copy_file(self, source: Path, dest: Path) -> str:
        """``dest`` as a copy-on-write copy of ``source`` where possible; returns how it was made."""
        ...

    def seal_image(self, path: Path) -> Path:
        """Make a freshly built image file read-only (btrfs: moved into a read-only subvolume of its own);
        returns where it lives now. On failure the image stays where it was."""
        ...

    def remove_image(self, path: Path) -> None:
        """Remove an image ``seal_image`` returned (its subvolume with it)."""
        ...


class DriveStore(Protocol):
    def insert(self, drive: Drive) -> None: ...
    def get(self, ref: str) -> Drive: ...
    def find(self, vm_id: str | None = None) -> list[Drive]: ...
    def attach(self, drive_id: str, vm_id: str | None, mount_path: str | None) -> None: ...
    def set_size(self, drive_id: str, size_mib: int) -> None: ...
    def snapshot_users(self, drive_id: str) -> list[str]: ...
    def delete(self, drive_id: str) -> None: ...


class SnapshotStore(Protocol):
    def insert(self, snapshot: Snapshot) -> None: ...
    def get(self, vm_id: str, name: str) -> Snapshot: ...
    def find(self, vm_id: str) -> list[Snapshot]: ...
    def exists(self, snapshot_id: str) -> bool: ...
    def delete(self, snapshot_id: str) -> None: ...
