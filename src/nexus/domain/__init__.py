"""The domain: models, states, errors, settings and ports. Standard library only."""

from nexus.domain.errors import (
    ERRORS_BY_CODE,
    Conflict,
    DriverError,
    Invalid,
    InvalidState,
    NexusError,
    NotFound,
    Unavailable,
)
from nexus.domain.layout import Layout
from nexus.domain.models import Role, StateChange, Vm, VmFilter, VmSpec
from nexus.domain.ports import VmmDriver
from nexus.domain.settings import SETTINGS, SettingSpec, SettingValue, spec_for
from nexus.domain.states import TRANSITIONS, VmState, can_transition, check_transition

__all__ = [
    "ERRORS_BY_CODE",
    "SETTINGS",
    "TRANSITIONS",
    "Conflict",
    "DriverError",
    "Invalid",
    "InvalidState",
    "Layout",
    "NexusError",
    "NotFound",
    "Role",
    "SettingSpec",
    "SettingValue",
    "StateChange",
    "Unavailable",
    "Vm",
    "VmFilter",
    "VmSpec",
    "VmState",
    "VmmDriver",
    "can_transition",
    "check_transition",
    "spec_for",
]
