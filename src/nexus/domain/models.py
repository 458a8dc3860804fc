"""Value objects of the domain: VMs, their state history, and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from nexus.domain.states import VmState


class Role(StrEnum):
    WORK = "work"
    PORTAL = "portal"
    SERVICE = "service"


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


@dataclass(frozen=True, slots=True)
class VmFilter:
    role: Role | None = None
    state: VmState | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StateChange:
    vm_id: str
    from_state: VmState | None
    to_state: VmState
    reason: str
    at: datetime
