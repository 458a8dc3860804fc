"""Firecracker API request bodies (v1.12 to v1.16): frozen value objects and the pure builders that turn them into JSON.

Each ``*_body`` function returns exactly the dict the driver sends for one resource; nothing here talks to a
socket or touches the filesystem (see :mod:`nexus.vmm.firecracker.api` for that). Field names follow the
Firecracker OpenAPI definitions (``MachineConfiguration``, ``BootSource``, ``Drive``, ``NetworkInterface``,
``Vsock``, ``Logger``, ``Metrics``, ``InstanceActionInfo``, ``Vm``, ``SnapshotCreateParams``,
``SnapshotLoadParams``); only the fields Nexus uses are emitted.
Invalid values (a vCPU count outside 1..32, a vsock CID below 3, a malformed MAC...) raise
:class:`nexus.domain.Invalid` when the value object is made, so a body that was built is one Firecracker accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath

from nexus.domain.errors import Invalid

JsonBody = dict[str, object]

MAX_VCPUS = 32
MIN_GUEST_CID = 3
CMDLINE_MAX_BYTES = 2048  # x86_64 CMDLINE_MAX_SIZE, including the terminating NUL
ROOT_DRIVE_ID = "root"
ROOT_DEVICE = "/dev/vda"
SERIAL_CONSOLE = "ttyS0"
BASE_BOOT_ARGS = ("reboot=k", "panic=1", "pci=off")
_ID_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # Firecracker's checked_id: alphanumeric or underscore
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class LogLevel(StrEnum):
    """Firecracker logger levels, in their wire spelling."""

    ERROR = "Error"
    WARNING = "Warning"
    INFO = "Info"
    DEBUG = "Debug"
    TRACE = "Trace"
    OFF = "Off"


class Action(StrEnum):
    """``PUT /actions`` action types."""

    INSTANCE_START = "InstanceStart"
    SEND_CTRL_ALT_DEL = "SendCtrlAltDel"
    FLUSH_METRICS = "FlushMetrics"


class VmRunState(StrEnum):
    """The states ``PATCH /vm`` can ask for."""

    PAUSED = "Paused"
    RESUMED = "Resumed"


VSOCK_OVERRIDE_SINCE = (1, 16)  # in the v1.16.1 spec; v1.12.1 refuses the field (not in its LoadSnapshotConfig)


def check_resource_id(kind: str, value: str) -> str:
    """Return ``value`` if Firecracker accepts it as a drive/interface id (``[A-Za-z0-9_]{1,64}``)."""
    if not _ID_RE.match(value):
        raise Invalid(f"{kind} {value!r} must be 1-64 letters, digits or underscores")
    return value


def _path(value: PurePath | str) -> str:
    text = str(value)
    if text in ("", "."):  # PurePath("") is "."
        raise Invalid("a Firecracker file path must not be empty")
    return text


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """vCPUs and memory. SMT stays off (Nexus never enables it)."""

    vcpu_count: int = 1
    mem_mib: int = 128
    smt: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.vcpu_count <= MAX_VCPUS:
            raise Invalid(f"vcpu_count must be within 1..{MAX_VCPUS}, not {self.vcpu_count}")
        if self.smt and self.vcpu_count != 1 and self.vcpu_count % 2:
            raise Invalid(f"with SMT the vCPU count must be 1 or even, not {self.vcpu_count}")
        if self.mem_mib < 1:
            raise Invalid(f"mem_mib must be positive, not {self.mem_mib}")


@dataclass(frozen=True, slots=True)
class BootSource:
    """An uncompressed ELF ``vmlinux`` (Firecracker on x86_64 loads no bzImage), an optional initrd, the cmdline."""

    kernel: PurePath
    boot_args: str
    initrd: PurePath | None = None

    def __post_init__(self) -> None:
        _path(self.kernel)
        if self.initrd is not None:
            _path(self.initrd)
        _check_cmdline(self.boot_args)


@dataclass(frozen=True, slots=True)
class Drive:
    """A virtio-block drive backed by a host file (never a vhost-user socket)."""

    drive_id: str
    path: PurePath
    is_root_device: bool = False
    read_only: bool = False

    def __post_init__(self) -> None:
        check_resource_id("drive_id", self.drive_id)
        _path(self.path)


def root_drive(path: PurePath, *, read_only: bool = False) -> Drive:
    """The root drive (``drive_id`` ``root``; the guest sees it as ``/dev/vda``)."""
    return Drive(drive_id=ROOT_DRIVE_ID, path=path, is_root_device=True, read_only=read_only)


def data_drive(drive_id: str, path: PurePath, read_only: bool = False) -> Drive:
    """A data drive. Firecracker answers the guest's virtio-blk GET_ID with the ``drive_id``, so the guest reads
    it as ``/sys/block/vdX/serial`` (QEMU's ``serial=``): the agent finds the disk by it."""
    if drive_id == ROOT_DRIVE_ID:
        raise Invalid(f"drive_id {drive_id!r} is the root drive's")
    return Drive(drive_id=drive_id, path=path, read_only=read_only)


@dataclass(frozen=True, slots=True)
class NetworkInterface:
    """A virtio-net device on an existing host TAP device."""

    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None

    def __post_init__(self) -> None:
        check_resource_id("iface_id", self.iface_id)
        if not self.host_dev_name or len(self.host_dev_name) > 15 or "/" in self.host_dev_name:
            raise Invalid(f"host_dev_name {self.host_dev_name!r} is not a Linux interface name")
        if self.guest_mac is not None and not _MAC_RE.match(self.guest_mac):
            raise Invalid(f"guest_mac {self.guest_mac!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")


@dataclass(frozen=True, slots=True)
class Vsock:
    """The hybrid vsock device: Firecracker listens on ``uds_path`` (host-initiated connections)."""

    guest_cid: int
    uds_path: PurePath

    def __post_init__(self) -> None:
        if self.guest_cid < MIN_GUEST_CID or self.guest_cid > 0xFFFFFFFF:
            raise Invalid(f"guest_cid must be within {MIN_GUEST_CID}..2^32-1, not {self.guest_cid}")
        _path(self.uds_path)


@dataclass(frozen=True, slots=True)
class Logger:
    """Firecracker's own log (a file or named pipe that must exist before ``PUT /logger``)."""

    log_path: PurePath
    level: LogLevel = LogLevel.INFO
    show_level: bool = True
    show_log_origin: bool = False


@dataclass(frozen=True, slots=True)
class Metrics:
    """Firecracker's metrics sink (a file or named pipe; flushed as JSON lines)."""

    metrics_path: PurePath


@dataclass(frozen=True, slots=True)
class MicroVmConfig:
    """Everything configured before ``InstanceStart``, in one value."""

    machine: MachineConfig
    boot: BootSource
    drives: tuple[Drive, ...]
    network: tuple[NetworkInterface, ...] = ()
    vsock: Vsock | None = None
    logger: Logger | None = None
    metrics: Metrics | None = None

    def __post_init__(self) -> None:
        roots = [d for d in self.drives if d.is_root_device]
        if len(roots) > 1:
            raise Invalid("a microVM has at most one root drive")
        drive_ids = [d.drive_id for d in self.drives]
        iface_ids = [n.iface_id for n in self.network]
        for kind, ids in (("drive_id", drive_ids), ("iface_id", iface_ids)):
            if len(set(ids)) != len(ids):
                raise Invalid(f"duplicate {kind} in {ids}")


@dataclass(frozen=True, slots=True)
class SnapshotFiles:
    """A snapshot's two files, as Firecracker names them: the microVM state and the guest memory."""

    snapshot_path: PurePath
    mem_path: PurePath

    def __post_init__(self) -> None:
        _path(self.snapshot_path)
        _path(self.mem_path)


@dataclass(frozen=True, slots=True)
class SnapshotLoad:
    """``PUT /snapshot/load`` into a fresh Firecracker: the files, the TAP each interface is to use now
    (``network_overrides``: only ``iface_id`` and ``host_dev_name`` are sent; the guest keeps its MAC) and, where the
    version has it, the vsock socket to listen on."""

    files: SnapshotFiles
    network_overrides: tuple[NetworkInterface, ...] = ()
    vsock_override: PurePath | None = None
    resume_vm: bool = True


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One API call: method, path and JSON body (``None`` for none)."""

    method: str
    path: str
    body: JsonBody | None = None


# --- kernel command line ---------------------------------------------------------------------------------------


def _check_cmdline(cmdline: str) -> None:
    if any(ch in cmdline for ch in "\0\n\r"):
        raise Invalid("the kernel command line must not contain NUL or line breaks")
    if len(cmdline.encode()) + 1 > CMDLINE_MAX_BYTES:
        raise Invalid(f"the kernel command line is longer than {CMDLINE_MAX_BYTES - 1} bytes")


def boot_args(
    *,
    root_device: str = ROOT_DEVICE,
    read_only_root: bool = False,
    console: str | None = SERIAL_CONSOLE,
    extra: Iterable[str] = (),
) -> str:
    """The guest kernel command line: ``console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw`` + ``extra``.

    ``reboot=k`` makes a guest reboot end the Firecracker process (Firecracker has no reset), ``panic=1``
    turns a panic into such a reboot, ``pci=off`` skips probing a bus Firecracker does not have. ``console``
    ``None`` leaves the serial console off (faster boots, no console log).
    """
    parts: list[str] = []
    if console is not None:
        parts.append(f"console={console}")
    parts.extend(BASE_BOOT_ARGS)
    parts.append(f"root={root_device}")
    parts.append("ro" if read_only_root else "rw")
    for token in extra:
        if not token or token != token.strip() or any(ch.isspace() for ch in token):
            raise Invalid(f"kernel argument {token!r} must be one non-empty word")
        parts.append(token)
    cmdline = " ".join(parts)
    _check_cmdline(cmdline)
    return cmdline


# --- bodies ----------------------------------------------------------------------------------------------------


def machine_config_body(cfg: MachineConfig) -> JsonBody:
    """``PUT /machine-config``."""
    return {"vcpu_count": cfg.vcpu_count, "mem_size_mib": cfg.mem_mib, "smt": cfg.smt}


def boot_source_body(boot: BootSource) -> JsonBody:
    """``PUT /boot-source``."""
    body: JsonBody = {"kernel_image_path": str(boot.kernel), "boot_args": boot.boot_args}
    if boot.initrd is not None:
        body["initrd_path"] = str(boot.initrd)
    return body


def drive_body(drive: Drive) -> JsonBody:
    """``PUT /drives/{drive_id}``."""
    return {
        "drive_id": drive.drive_id,
        "path_on_host": str(drive.path),
        "is_root_device": drive.is_root_device,
        "is_read_only": drive.read_only,
    }


def network_interface_body(iface: NetworkInterface) -> JsonBody:
    """``PUT /network-interfaces/{iface_id}`` (without ``guest_mac`` Firecracker picks one)."""
    body: JsonBody = {"iface_id": iface.iface_id, "host_dev_name": iface.host_dev_name}
    if iface.guest_mac is not None:
        body["guest_mac"] = iface.guest_mac.lower()
    return body


def vsock_body(vsock: Vsock) -> JsonBody:
    """``PUT /vsock`` (without the deprecated ``vsock_id``)."""
    return {"guest_cid": vsock.guest_cid, "uds_path": str(vsock.uds_path)}


def logger_body(logger: Logger) -> JsonBody:
    """``PUT /logger``."""
    return {
        "log_path": str(logger.log_path),
        "level": logger.level.value,
        "show_level": logger.show_level,
        "show_log_origin": logger.show_log_origin,
    }


def metrics_body(metrics: Metrics) -> JsonBody:
    """``PUT /metrics``."""
    return {"metrics_path": str(metrics.metrics_path)}


def action_body(action: Action) -> JsonBody:
    """``PUT /actions``."""
    return {"action_type": action.value}


def vm_state_body(state: VmRunState) -> JsonBody:
    """``PATCH /vm``."""
    return {"state": state.value}


def snapshot_create_body(files: SnapshotFiles) -> JsonBody:
    """``PUT /snapshot/create``: always a full snapshot (Nexus tracks no dirty pages)."""
    return {"snapshot_type": "Full", "snapshot_path": str(files.snapshot_path), "mem_file_path": str(files.mem_path)}


def snapshot_load_body(load: SnapshotLoad) -> JsonBody:
    """``PUT /snapshot/load`` with a file memory backend (``mem_file_path`` is deprecated)."""
    body: JsonBody = {
        "snapshot_path": str(load.files.snapshot_path),
        "mem_backend": {"backend_type": "File", "backend_path": str(load.files.mem_path)},
        "resume_vm": load.resume_vm,
    }
    if load.network_overrides:
        body["network_overrides"] = [
            {"iface_id": n.iface_id, "host_dev_name": n.host_dev_name} for n in load.network_overrides
        ]
    if load.vsock_override is not None:
        body["vsock_override"] = {"uds_path": str(_path(load.vsock_override))}
    return body


def supports_vsock_override(vmm_version: str) -> bool:
    """Whether a Firecracker of ``vmm_version`` (``GET /``: ``1.12.1``) takes ``vsock_override`` on load."""
    match = re.match(r"^v?(\d+)\.(\d+)", vmm_version)
    return match is not None and (int(match[1]), int(match[2])) >= VSOCK_OVERRIDE_SINCE


def drive_path(drive_id: str) -> str:
    """The URL path of one drive."""
    return f"/drives/{check_resource_id('drive_id', drive_id)}"


def network_interface_path(iface_id: str) -> str:
    """The URL path of one network interface."""
    return f"/network-interfaces/{check_resource_id('iface_id', iface_id)}"


def preboot_requests(cfg: MicroVmConfig) -> tuple[ApiRequest, ...]:
    """Every pre-boot call for ``cfg``, in the order the driver makes them (logger and metrics first, so
    Firecracker reports problems with the rest in its log). ``InstanceStart`` is not included."""
    requests: list[ApiRequest] = []
    if cfg.logger is not None:
        requests.append(ApiRequest("PUT", "/logger", logger_body(cfg.logger)))
    if cfg.metrics is not None:
        requests.append(ApiRequest("PUT", "/metrics", metrics_body(cfg.metrics)))
    requests.append(ApiRequest("PUT", "/machine-config", machine_config_body(cfg.machine)))
    requests.append(ApiRequest("PUT", "/boot-source", boot_source_body(cfg.boot)))
    requests.extend(ApiRequest("PUT", drive_path(d.drive_id), drive_body(d)) for d in cfg.drives)
    requests.extend(
        ApiRequest("PUT", network_interface_path(n.iface_id), network_interface_body(n)) for n in cfg.network
    )
    if cfg.vsock is not None:
        requests.append(ApiRequest("PUT", "/vsock", vsock_body(cfg.vsock)))
    return tuple(requests)


def restore_requests(cfg: MicroVmConfig, load: SnapshotLoad) -> tuple[ApiRequest, ...]:
    """Every call that brings a fresh Firecracker back from a snapshot: logger and metrics (the only resources it
    takes before a load), then the load itself; the machine, boot source and devices come from the snapshot."""
    requests: list[ApiRequest] = []
    if cfg.logger is not None:
        requests.append(ApiRequest("PUT", "/logger", logger_body(cfg.logger)))
    if cfg.metrics is not None:
        requests.append(ApiRequest("PUT", "/metrics", metrics_body(cfg.metrics)))
    requests.append(ApiRequest("PUT", "/snapshot/load", snapshot_load_body(load)))
    return tuple(requests)


# --- answers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """``GET /``: ``state`` is ``Not started``, ``Running`` or ``Paused``."""

    app_name: str
    id: str
    state: str
    vmm_version: str


def _str_field(body: Mapping[str, object], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise Invalid(f"Firecracker answered without a valid {name!r}: {dict(body)!r}")
    return value


def _int_field(body: Mapping[str, object], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"Firecracker answered without a valid {name!r}: {dict(body)!r}")
    return value


def instance_info_from_body(body: Mapping[str, object]) -> InstanceInfo:
    """Parse a ``GET /`` answer."""
    return InstanceInfo(
        app_name=_str_field(body, "app_name"),
        id=_str_field(body, "id"),
        state=_str_field(body, "state"),
        vmm_version=_str_field(body, "vmm_version"),
    )


def machine_config_from_body(body: Mapping[str, object]) -> MachineConfig:
    """Parse a ``GET /machine-config`` answer (``smt`` defaults to off when absent)."""
    return MachineConfig(
        vcpu_count=_int_field(body, "vcpu_count"),
        mem_mib=_int_field(body, "mem_size_mib"),
        smt=body.get("smt", False) is True,
    )
