"""VM lifecycle states and the one table of allowed transitions (see docs/design.md, Lifecycle)."""

from __future__ import annotations

from enum import StrEnum


class VmState(StrEnum):
    CREATED = "created"
    STARTING = "starting"
    READY = "ready"
    UNREACHABLE = "unreachable"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"
    FAILED = "failed"

    @property
    def has_process(self) -> bool:
        """True while a VMM process may exist for the VM."""
        return self in _WITH_PROCESS


_WITH_PROCESS = frozenset({VmState.STARTING, VmState.READY, VmState.UNREACHABLE, VmState.PAUSED, VmState.STOPPING})

TRANSITIONS: dict[VmState, frozenset[VmState]] = {
    VmState.CREATED: frozenset({VmState.STARTING}),
    VmState.STARTING: frozenset({VmState.READY, VmState.FAILED, VmState.CRASHED, VmState.STOPPING}),
    VmState.READY: frozenset({VmState.UNREACHABLE, VmState.PAUSED, VmState.STOPPING, VmState.CRASHED}),
    VmState.UNREACHABLE: frozenset({VmState.READY, VmState.PAUSED, VmState.STOPPING, VmState.CRASHED}),
    VmState.PAUSED: frozenset({VmState.READY, VmState.STOPPING, VmState.CRASHED}),
    VmState.STOPPING: frozenset({VmState.STOPPED, VmState.CRASHED}),
    VmState.STOPPED: frozenset({VmState.STARTING}),
    VmState.CRASHED: frozenset({VmState.STARTING}),
    VmState.FAILED: frozenset({VmState.STARTING}),
}


def can_transition(src: VmState, dst: VmState) -> bool:
    return dst in TRANSITIONS[src]
