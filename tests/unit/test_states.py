from __future__ import annotations

import pytest

from nexus.domain import TRANSITIONS, InvalidState, VmState, can_transition, check_transition


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
    check_transition(VmState(src), VmState(dst))


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
    with pytest.raises(InvalidState, match=f"{src} to {dst}"):
        check_transition(VmState(src), VmState(dst))


def test_every_state_with_a_process_can_be_stopped() -> None:
    for state in VmState:
        if state.has_process and state is not VmState.STOPPING:
            assert can_transition(state, VmState.STOPPING), state


def test_states_without_process_can_start_again() -> None:
    for state in VmState:
        if not state.has_process:
            assert can_transition(state, VmState.STARTING), state


def test_wire_form_is_lowercase_name() -> None:
    assert VmState.UNREACHABLE.value == "unreachable"
    assert VmState("crashed") is VmState.CRASHED
