"""The one way a VM's state changes: checked against the lifecycle table, then compare-and-set in the store
(as Supervisor's ``change_state``). A change the table does not allow is a bug in Nexus, not a user error: it
raises ``IllegalTransition`` (an AssertionError, so it fails tests loudly and is a 500 at the API edge). A change
that lost a race (the state moved meanwhile) is ``Conflict`` from the store."""

from __future__ import annotations

from nexus.domain import VmState, VmStore, can_transition


class IllegalTransition(AssertionError):
    """A state change outside the lifecycle table (docs/design.md, Lifecycle)."""


def transition(store: VmStore, vm_id: str, current: VmState, new: VmState, reason: str) -> None:
    """Move ``vm_id`` from ``current`` to ``new``, recording ``reason``."""
    if not can_transition(current, new):
        raise IllegalTransition(f"VM {vm_id}: {current} -> {new} is not in the lifecycle table ({reason})")
    store.set_state(vm_id, current, new, reason)
