"""Known settings (user preferences), their defaults and checks. Unknown keys are NotFound."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nexus.domain.errors import Invalid, NotFound
from nexus.domain.validation import MEM_MIB_RANGE, VCPUS_RANGE, check_range

SettingValue = str | int | bool | list[str]


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
            "image for VMs created without --image",
            _text("default_image"),
        ),
        SettingSpec(
            "default_kernel",
            "cloud-amd64",
            "kernel (flavour or version) for VMs created without --kernel",
            _text("default_kernel"),
        ),
        SettingSpec("default_vcpus", 1, "vCPUs for VMs created without --vcpus", _int("default_vcpus", VCPUS_RANGE)),
        SettingSpec(
            "default_mem_mib",
            512,
            "memory (MiB) for VMs created without --mem",
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
            "vmm",
            "auto",
            "VMM to use: auto (Firecracker where it can run, else QEMU), firecracker, qemu",
            _choice("vmm", ("auto", "firecracker", "qemu")),
        ),
    )
}


def spec_for(key: str) -> SettingSpec:
    try:
        return SETTINGS[key]
    except KeyError:
        raise NotFound(f"unknown setting {key!r}; known: {', '.join(sorted(SETTINGS))}") from None
