from __future__ import annotations

from pathlib import Path

import pytest

import nexus
from nexus.domain import TRANSITIONS, Conflict, Role, Vm, VmState, can_transition, utcnow
from nexus.services.lifecycle import IllegalTransition, transition
from nexus.store import VmRepo, connect, migrate


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(VmState)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("created", "starting"),
        ("starting", "ready"),
        ("starting", "failed"),
        ("ready", "unreachable"),
        ("unreachable", "ready"),
        ("ready", "stopping"),
        ("unreachable", "stopping"),
        ("starting", "stopping"),
        ("stopping", "stopped"),
        ("ready", "crashed"),
        ("stopped", "starting"),
        ("crashed", "starting"),
        ("failed", "starting"),
    ],
)
def test_lifecycle_transitions_allowed(src: str, dst: str) -> None:
    assert can_transition(VmState(src), VmState(dst))


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("created", "ready"),
        ("stopped", "ready"),
        ("ready", "starting"),
        ("stopping", "ready"),
        ("failed", "ready"),
        ("created", "stopped"),
        ("ready", "ready"),
    ],
)
def test_shortcuts_refused(src: str, dst: str) -> None:
    assert not can_transition(VmState(src), VmState(dst))


def test_every_state_with_a_process_can_be_stopped() -> None:
    for state in VmState:
        if state.has_process and state is not VmState.STOPPING:
            assert can_transition(state, VmState.STOPPING), state


def test_states_without_process_can_start_again() -> None:
    for state in VmState:
        if not state.has_process:
            assert can_transition(state, VmState.STARTING), state


def test_transition_checks_the_table_then_compares_and_sets() -> None:
    conn = connect(":memory:")
    migrate(conn)
    repo = VmRepo(conn)
    now = utcnow()
    repo.insert(Vm("a" * 12, "t", Role.WORK, 1, 256, "img", "k", VmState.CREATED, now, now), "test")
    with pytest.raises(IllegalTransition, match="created -> ready is not in the lifecycle table"):
        transition(repo, "a" * 12, VmState.CREATED, VmState.READY, "a shortcut")
    assert repo.get("a" * 12).state is VmState.CREATED  # nothing written
    transition(repo, "a" * 12, VmState.CREATED, VmState.STARTING, "start requested")
    with pytest.raises(Conflict):  # lost a race: the VM is no longer created
        transition(repo, "a" * 12, VmState.CREATED, VmState.STARTING, "again")
    assert [h.reason for h in repo.history("a" * 12)][-1] == "start requested"


def test_only_the_lifecycle_module_changes_states() -> None:
    """Every state change of every service and the runtime goes through ``transition`` (the store's
    ``set_state`` is called nowhere else)."""
    src = Path(nexus.__file__).parent
    callers = sorted(
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if ".set_state(" in path.read_text() and path.parent.name != "store"
    )
    assert callers == ["services/lifecycle.py"]
