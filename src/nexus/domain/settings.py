"""Known settings (user preferences), their defaults and checks. Unknown keys are NotFound."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nexus.domain.audit import RETENTION_DAYS_RANGE
from nexus.domain.egress import EgressMode
from nexus.domain.errors import Invalid, NotFound
from nexus.domain.network import check_ifname, parse_dns_servers, parse_subnet
from nexus.domain.validation import MEM_MIB_RANGE, VCPUS_RANGE, check_range

SettingValue = str | int | bool | list[str]
VMM_CHOICES = ("auto", "firecracker", "qemu")


@dataclass(frozen=True, slots=True)
class SettingSpec:
    key: str
    default: SettingValue
    description: str
    check: Callable[[object], SettingValue]


def _text(key: str) -> Callable[[object], SettingValue]:
    def check(value: object) -> SettingValue:
        if not isinstance(value, str) or not value.strip():
            raise Invalid(f"{key} must be a non-empty string, got {value!r}")
        return value.strip()

    return check


def _int(key: str, bounds: tuple[int, int]) -> Callable[[object], SettingValue]:
    def check(value: object) -> SettingValue:
        return check_range(key, value, bounds)  # type: ignore[arg-type]

    return check


def _choice(key: str, choices: tuple[str, ...]) -> Callable[[object], SettingValue]:
    def check(value: object) -> SettingValue:
        if value not in choices:
            raise Invalid(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check


SETTINGS: dict[str, SettingSpec] = {
    spec.key: spec
    for spec in (
        SettingSpec(
            "default_image",
            "debian-bookworm",
            "image for VMs created without one",
            _text("default_image"),
        ),
        SettingSpec(
            "default_kernel",
            "cloud-amd64",
            "kernel (flavour or version) for VMs created without one",
            _text("default_kernel"),
        ),
        SettingSpec("default_vcpus", 1, "vCPUs for VMs created without a count", _int("default_vcpus", VCPUS_RANGE)),
        SettingSpec(
            "default_mem_mib",
            512,
            "memory (MiB) for VMs created without a size",
            _int("default_mem_mib", MEM_MIB_RANGE),
        ),
        SettingSpec(
            "firecracker_version",
            "1.16.1",
            "Firecracker release pulled when none is given",
            _text("firecracker_version"),
        ),
        SettingSpec(
            "firecracker_base_url",
            "https://github.com/firecracker-microvm/firecracker/releases/download",
            "where Firecracker release tarballs and their .sha256.txt are fetched from",
            _text("firecracker_base_url"),
        ),
        SettingSpec(
            "network_bridge",
            "nexus0",
            "the bridge VMs are attached to (created on first need; cleanup-network removes it)",
            lambda v: check_ifname("network_bridge", v),
        ),
        SettingSpec(
            "network_subnet",
            "10.77.0.0/24",
            "IPv4 subnet of the VMs; the bridge takes its first address as their gateway",
            lambda v: str(parse_subnet(v)),
        ),
        SettingSpec(
            "dns_servers",
            "from-host",
            'nameservers written to a guest\'s /etc/resolv.conf when it is ready: a list, or "from-host"',
            parse_dns_servers,
        ),
        SettingSpec(
            "vmm",
            "auto",
            "VMM for VMs started from now on (running VMs keep theirs): auto (Firecracker where it can run, else "
            "QEMU), firecracker, qemu",
            _choice("vmm", VMM_CHOICES),
        ),
        SettingSpec(
            "default_egress",
            "open",
            "egress of VMs created without one: open (NAT), none, or proxy (only allowed hosts, through nexusd)",
            _choice("default_egress", tuple(m.value for m in EgressMode)),
        ),
        SettingSpec(
            "audit_retention_days",
            30,
            "days the audit log keeps its entries (0: forever); older ones are removed hourly",
            _int("audit_retention_days", RETENTION_DAYS_RANGE),
        ),
    )
}


def spec_for(key: str) -> SettingSpec:
    try:
        return SETTINGS[key]
    except KeyError:
        raise NotFound(f"unknown setting {key!r}; known: {', '.join(sorted(SETTINGS))}") from None


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting as it stands: its value, its default and what it is for."""

    key: str
    value: SettingValue
    default: SettingValue
    description: str

    @property
    def is_default(self) -> bool:
        return self.value == self.default
