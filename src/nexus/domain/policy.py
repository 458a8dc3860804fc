"""Who may do what through a portal's gateway: rules, selectors and the decision (default deny).

A rule says: portals matching ``portal`` may call ``tools`` on the VMs matching ``work``, within ``limits``; with
``manage``, they may also create VMs (within its bounds) and start, stop, snapshot, roll back and remove the VMs
they created. No rule, no access. Rules are the host operator's: nothing a portal can call changes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from nexus.domain.errors import Invalid
from nexus.domain.models import Role, Vm
from nexus.domain.validation import check_name, check_tag

ALL_TOOLS = "*"
CREATED = "@created"
TAG_PREFIX = "tag:"


class SelectorKind(StrEnum):
    NAME = "name"
    TAG = "tag"
    CREATED = "created"  # the VMs the calling portal created (work side only)


@dataclass(frozen=True, slots=True)
class Selector:
    """Which VMs a rule names: ``NAME``, ``tag:TAG`` or (work side) ``@created``."""

    kind: SelectorKind
    value: str = ""

    @classmethod
    def parse(cls, text: str, *, work: bool) -> Selector:
        if text == CREATED:
            if not work:
                raise Invalid("@created selects work VMs (those the portal created), not portals")
            return cls(SelectorKind.CREATED)
        if text.startswith(TAG_PREFIX):
            return cls(SelectorKind.TAG, check_tag(text.removeprefix(TAG_PREFIX)))
        try:
            return cls(SelectorKind.NAME, check_name(text))
        except Invalid:
            forms = "a VM name, tag:TAG" + (" or @created" if work else "")
            raise Invalid(f"invalid selector {text!r}: use {forms}") from None

    def matches(self, vm: Vm, portal_id: str) -> bool:
        if vm.created_by is not None and vm.created_by != portal_id:
            return False  # another portal's VM is that portal's alone, whatever name or tags it was given
        if self.kind is SelectorKind.NAME:
            return vm.name == self.value
        if self.kind is SelectorKind.TAG:
            return self.value in vm.tags
        return vm.created_by == portal_id

    def __str__(self) -> str:
        if self.kind is SelectorKind.NAME:
            return self.value
        return f"{TAG_PREFIX}{self.value}" if self.kind is SelectorKind.TAG else CREATED


@dataclass(frozen=True, slots=True)
class Limits:
    """Per portal and rule; None: no limit."""

    calls_per_minute: int | None = None
    max_concurrent: int | None = None
    max_result_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Management:
    """What a portal may create and manage (its own VMs only)."""

    max_vms: int
    images: tuple[str, ...] = ()  # empty: any image
    max_vcpus: int | None = None
    max_mem_mib: int | None = None


@dataclass(frozen=True, slots=True)
class RuleSpec:
    portal: Selector
    work: Selector
    tools: tuple[str, ...]
    limits: Limits = Limits()
    manage: Management | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    spec: RuleSpec
    created_at: datetime

    def allows(self, tool: str) -> bool:
        return ALL_TOOLS in self.spec.tools or tool in self.spec.tools

    def __str__(self) -> str:
        return f"rule {self.id} ({self.spec.portal} → {self.spec.work})"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str
    rule: Rule | None = None  # the rule that decided; None: no rule applies (default deny)


def _portal_check(portal: Vm) -> Verdict | None:
    if portal.role is not Role.PORTAL:
        return Verdict(False, f"VM {portal.name} is a {portal.role} VM; only portal VMs have a gateway")
    return None


def applicable(rules: Iterable[Rule], portal: Vm, target: Vm) -> list[Rule]:
    """The rules that let ``portal`` reach ``target`` at all: never itself, never another portal (it would use that
    portal's gateway and policy)."""
    if target.id == portal.id or target.role is Role.PORTAL:
        return []
    return [r for r in rules if r.spec.portal.matches(portal, portal.id) and r.spec.work.matches(target, portal.id)]


def decide(rules: Sequence[Rule], portal: Vm, target: Vm, tool: str) -> Verdict:
    """May ``portal`` call ``tool`` on ``target``? The first rule (oldest) allowing it decides."""
    refused = _portal_check(portal)
    if refused is not None:
        return refused
    matching = applicable(rules, portal, target)
    if not matching:
        return Verdict(False, f"no rule lets portal {portal.name} use VM {target.name} (default deny)")
    for rule in matching:
        if rule.allows(tool):
            return Verdict(True, f"allowed by {rule}", rule)
    rule = matching[0]
    return Verdict(False, f"{rule} allows {', '.join(rule.spec.tools)} on {target.name}, not {tool}", rule)


def manager_rules(rules: Iterable[Rule], portal: Vm) -> list[Rule]:
    """The rules that give ``portal`` management rights."""
    if portal.role is not Role.PORTAL:
        return []
    return [r for r in rules if r.spec.manage is not None and r.spec.portal.matches(portal, portal.id)]


def _managers(rules: Iterable[Rule], portal: Vm, what: str) -> list[Rule] | Verdict:
    """The rules giving ``portal`` management rights, or the refusal when there are none."""
    refused = _portal_check(portal)
    if refused is not None:
        return refused
    managing = manager_rules(rules, portal)
    return managing or Verdict(False, f"no rule lets portal {portal.name} {what} VMs (default deny)")


@dataclass(frozen=True, slots=True)
class CreateAsk:
    image: str
    vcpus: int
    mem_mib: int


def decide_create(rules: Sequence[Rule], portal: Vm, ask: CreateAsk, owned: int) -> Verdict:
    """May ``portal``, which created ``owned`` VMs that still exist, create one more like ``ask``?"""
    managing = _managers(rules, portal, "create")
    if isinstance(managing, Verdict):
        return managing
    reasons = []
    for rule in managing:
        manage = rule.spec.manage
        assert manage is not None
        why = _create_refusal(manage, ask, owned)
        if why is None:
            return Verdict(True, f"allowed by {rule}", rule)
        reasons.append((rule, why))
    rule, why = reasons[0]
    return Verdict(False, f"{rule}: {why}", rule)


def _create_refusal(manage: Management, ask: CreateAsk, owned: int) -> str | None:
    if owned >= manage.max_vms:
        return f"at most {manage.max_vms} VMs, and this portal has {owned}"
    if manage.images and ask.image not in manage.images:
        return f"image {ask.image} is not one of {', '.join(manage.images)}"
    if manage.max_vcpus is not None and ask.vcpus > manage.max_vcpus:
        return f"at most {manage.max_vcpus} vCPUs, asked for {ask.vcpus}"
    if manage.max_mem_mib is not None and ask.mem_mib > manage.max_mem_mib:
        return f"at most {manage.max_mem_mib} MiB of memory, asked for {ask.mem_mib}"
    return None


def decide_manage(rules: Sequence[Rule], portal: Vm, target: Vm, action: str) -> Verdict:
    """May ``portal`` start, stop, snapshot, roll back or remove ``target``? Only a VM it created."""
    managing = _managers(rules, portal, "manage")
    if isinstance(managing, Verdict):
        return managing
    if target.created_by != portal.id:
        return Verdict(False, f"portal {portal.name} may {action} only VMs it created; {target.name} is not one")
    return Verdict(True, f"allowed by {managing[0]}", managing[0])


class PolicyStore(Protocol):
    def insert(self, spec: RuleSpec, created_at: datetime) -> Rule: ...
    def all(self) -> list[Rule]: ...
    def delete(self, rule_id: int) -> bool: ...
