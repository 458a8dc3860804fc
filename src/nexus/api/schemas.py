"""Request and response bodies of the REST API (pydantic), and their conversion from domain objects.

Request models forbid unknown fields: a typo is an error, not a silently ignored option.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nexus.domain import Role, StateChange, Vm, VmState
from nexus.services import Setting


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

    @classmethod
    def of(cls, vm: Vm) -> VmOut:
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


class HealthOut(BaseModel):
    status: str
    version: str
    vms: int
    driver: DriverOut


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail
