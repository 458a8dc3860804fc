"""Portal policy: selectors, decisions (default deny, the deciding rule named), management bounds, and the limits
PolicyService holds calls to — over a real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from nexus.domain import Forbidden, Invalid, NotFound, Role, Vm, VmState
from nexus.domain.policy import (
    CreateAsk,
    Limits,
    Management,
    Rule,
    RuleSpec,
    Selector,
    SelectorKind,
    decide,
    decide_create,
    decide_manage,
)
from nexus.services.policy import PolicyService
from nexus.store import PolicyRepo, VmRepo, open_database

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def vm(name: str, role: Role = Role.WORK, tags: tuple[str, ...] = (), created_by: str | None = None) -> Vm:
    return Vm(
        id=f"id-{name}",
        name=name,
        role=role,
        vcpus=1,
        mem_mib=256,
        image="debian-bookworm",
        kernel="k",
        state=VmState.READY,
        created_at=NOW,
        updated_at=NOW,
        tags=tags,
        created_by=created_by,
    )


P = vm("p", Role.PORTAL, ("team=a",))
W1 = vm("w1", tags=("team=a",))
W2 = vm("w2")
P2 = vm("p2", Role.PORTAL)


def rule(rule_id: int, portal: str, work: str, tools: tuple[str, ...], manage: Management | None = None) -> Rule:
    spec = RuleSpec(Selector.parse(portal, work=False), Selector.parse(work, work=True), tools, manage=manage)
    return Rule(rule_id, spec, NOW)


def test_selectors_parse_and_match() -> None:
    assert Selector.parse("w1", work=True) == Selector(SelectorKind.NAME, "w1")
    assert Selector.parse("tag:team=a", work=True).matches(W1, P.id)
    assert not Selector.parse("tag:team=a", work=True).matches(W2, P.id)
    created = Selector.parse("@created", work=True)
    assert created.matches(vm("mine", created_by=P.id), P.id) and not created.matches(W1, P.id)
    assert str(created) == "@created" and str(Selector.parse("tag:x", work=False)) == "tag:x"
    with pytest.raises(Invalid, match="not portals"):
        Selector.parse("@created", work=False)
    with pytest.raises(Invalid, match="invalid selector 'Bad Name'"):
        Selector.parse("Bad Name", work=True)


def test_no_rule_is_default_deny_and_says_so() -> None:
    verdict = decide([], P, W1, "run_command")
    assert not verdict.allowed and verdict.rule is None and "default deny" in verdict.reason


def test_the_rule_that_decides_is_named() -> None:
    rules = [rule(1, "p", "tag:team=a", ("run_command", "file_read"))]
    allowed = decide(rules, P, W1, "run_command")
    assert allowed.allowed and allowed.rule is rules[0]
    refused = decide(rules, P, W1, "file_write")
    assert not refused.allowed and refused.rule is rules[0]
    assert refused.reason == "rule 1 (p → tag:team=a) allows run_command, file_read on w1, not file_write"
    other = decide(rules, P, W2, "run_command")
    assert not other.allowed and "no rule lets portal p use VM w2" in other.reason


def test_a_later_rule_can_allow_what_an_earlier_one_does_not() -> None:
    rules = [rule(1, "p", "w1", ("file_read",)), rule(2, "tag:team=a", "w1", ("*",))]
    verdict = decide(rules, P, W1, "file_write")
    assert verdict.allowed and verdict.rule is rules[1]


def test_only_portals_use_the_gateway_and_never_reach_themselves() -> None:
    rules = [rule(1, "tag:team=a", "tag:team=a", ("*",))]
    assert not decide(rules, W1, P, "run_command").allowed  # w1 is a work VM
    assert "only portal VMs" in decide(rules, W1, P, "run_command").reason
    assert not decide(rules, P, P, "run_command").allowed


def test_management_bounds() -> None:
    manage = Management(max_vms=2, images=("debian-bookworm",), max_vcpus=2, max_mem_mib=512)
    rules = [rule(1, "p", "@created", ("*",), manage=manage)]
    ok = CreateAsk("debian-bookworm", 1, 256)
    assert decide_create(rules, P, ok, owned=1).allowed
    assert "at most 2 VMs" in decide_create(rules, P, ok, owned=2).reason
    assert "image alpine is not one of" in decide_create(rules, P, CreateAsk("alpine", 1, 256), 0).reason
    assert "at most 512 MiB" in decide_create(rules, P, CreateAsk("debian-bookworm", 1, 1024), 0).reason
    assert "at most 2 vCPUs" in decide_create(rules, P, CreateAsk("debian-bookworm", 4, 256), 0).reason
    assert "create VMs (default deny)" in decide_create([], P, ok, 0).reason
    assert decide_manage(rules, P, vm("mine", created_by=P.id), "stop").allowed
    assert "only VMs it created" in decide_manage(rules, P, W1, "stop").reason


@pytest.fixture
def service(tmp_path: Path) -> tuple[PolicyService, list[float]]:
    conn = open_database(tmp_path / "nexus.db")
    clock = [100.0]
    return PolicyService(PolicyRepo(conn), VmRepo(conn), clock=lambda: clock[0]), clock


def test_rules_are_stored_listed_and_removed(service: tuple[PolicyService, list[float]]) -> None:
    policy, _ = service
    manage = Management(max_vms=3, images=("debian-bookworm",), max_vcpus=2, max_mem_mib=1024)
    spec = RuleSpec(
        Selector.parse("p", work=False),
        Selector.parse("@created", work=True),
        ("run_command",),
        Limits(10, 2, 4096),
        manage,
    )
    made = policy.allow(spec)
    assert policy.rules() == [made] and made.spec == spec
    policy.remove(made.id)
    assert policy.rules() == []
    with pytest.raises(NotFound, match=f"no policy rule {made.id}"):
        policy.remove(made.id)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RuleSpec(Selector(SelectorKind.NAME, "p"), Selector(SelectorKind.NAME, "w"), ()), "some tools"),
        (RuleSpec(Selector(SelectorKind.CREATED), Selector(SelectorKind.NAME, "w"), ("*",)), "portal selects"),
        (RuleSpec(Selector(SelectorKind.NAME, "p"), Selector(SelectorKind.NAME, "w"), ("rm -rf",)), "invalid tool"),
        (
            RuleSpec(Selector(SelectorKind.NAME, "p"), Selector(SelectorKind.NAME, "w"), ("*",), Limits(0)),
            "calls_per_minute",
        ),
    ],
)
def test_bad_rules_are_refused(service: tuple[PolicyService, list[float]], spec: RuleSpec, message: str) -> None:
    policy, _ = service
    with pytest.raises(Invalid, match=message):
        policy.allow(spec)
    assert policy.rules() == []


def test_limits_hold_calls(service: tuple[PolicyService, list[float]]) -> None:
    policy, clock = service
    spec = RuleSpec(Selector.parse("p", work=False), Selector.parse("w1", work=True), ("*",), Limits(3, 1))
    made = policy.allow(spec)
    with policy.slot(made, P), pytest.raises(Forbidden, match="1 calls at once"), policy.slot(made, P):
        pass
    with policy.slot(made, P), policy.slot(made, P2):
        pass  # another portal has budgets of its own
    with policy.slot(made, P):
        pass
    with pytest.raises(Forbidden, match="3 calls a minute"), policy.slot(made, P):
        pass
    clock[0] += 60.0  # the window moved on
    with policy.slot(made, P):
        pass


def test_another_portals_vms_and_other_portals_are_out_of_reach() -> None:
    theirs = vm("w9", tags=("team=a",), created_by="id-p2")
    rules = [rule(1, "p", "tag:team=a", ("*",)), rule(2, "p", "w9", ("*",))]
    assert not decide(rules, P, theirs, "run_command").allowed  # neither by its tag nor by its name
    q = vm("q", Role.PORTAL, ("team=a",))
    assert not decide(rules, P, q, "run_command").allowed  # a portal is never a work VM of another
