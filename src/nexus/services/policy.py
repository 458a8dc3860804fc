"""Policy use cases: the operator adds, lists and removes rules; the gateway asks for decisions and for a slot
within a rule's limits. Rules are read from the store at each decision, so a change applies to the next call."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator

from nexus.domain import Forbidden, Invalid, NotFound, Vm, VmStore, utcnow
from nexus.domain.policy import (
    ALL_TOOLS,
    CreateAsk,
    Limits,
    PolicyStore,
    Rule,
    RuleSpec,
    SelectorKind,
    Verdict,
    applicable,
    decide,
    decide_create,
    decide_manage,
    manager_rules,
)
from nexus.domain.validation import MEM_MIB_RANGE, VCPUS_RANGE, check_name, check_range

log = logging.getLogger(__name__)

MAX_VMS_RANGE = (1, 1000)
RATE_WINDOW_S = 60.0


def _positive(what: str, value: int | None) -> None:
    if value is not None:
        check_range(what, value, (1, 1 << 40))


def check_spec(spec: RuleSpec) -> RuleSpec:
    if spec.portal.kind is SelectorKind.CREATED:
        raise Invalid("portal selects portals by name or tag:TAG")
    if not spec.tools and spec.manage is None:
        raise Invalid("a rule allows some tools (tools, or * for all) or management rights (manage), or both")
    for tool in spec.tools:
        if tool != ALL_TOOLS and not tool.replace("_", "").isalnum():
            raise Invalid(f"invalid tool name {tool!r}: use the tool's name (letters, digits, _) or *")
    _positive("calls_per_minute", spec.limits.calls_per_minute)
    _positive("max_concurrent", spec.limits.max_concurrent)
    _positive("max_result_bytes", spec.limits.max_result_bytes)
    if spec.manage is not None:
        check_range("max_vms", spec.manage.max_vms, MAX_VMS_RANGE)
        for image in spec.manage.images:
            check_name(image)
        if spec.manage.max_vcpus is not None:
            check_range("max_vcpus", spec.manage.max_vcpus, VCPUS_RANGE)
        if spec.manage.max_mem_mib is not None:
            check_range("max_mem_mib", spec.manage.max_mem_mib, MEM_MIB_RANGE)
    return spec


class PolicyService:
    def __init__(self, store: PolicyStore, vms: VmStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._vms = vms
        self._clock = clock
        self._calls: defaultdict[tuple[int, str], deque[float]] = defaultdict(deque)  # (rule, portal) → call times
        self._in_flight: defaultdict[tuple[int, str], int] = defaultdict(int)

    # -- the operator's ---------------------------------------------------------------------------------

    def allow(self, spec: RuleSpec) -> Rule:
        rule = self._store.insert(check_spec(spec), utcnow())
        log.info("policy %s added: tools %s", rule, ", ".join(spec.tools) or "none")
        return rule

    def rules(self) -> list[Rule]:
        return self._store.all()

    def remove(self, rule_id: int) -> None:
        if not self._store.delete(rule_id):
            raise NotFound(f"no policy rule {rule_id}")
        log.info("policy rule %d removed", rule_id)

    # -- the gateway's ----------------------------------------------------------------------------------

    def decide(self, portal: Vm, target: Vm, tool: str) -> Verdict:
        return decide(self._store.all(), portal, target, tool)

    def decide_create(self, portal: Vm, ask: CreateAsk) -> Verdict:
        owned = sum(1 for vm in self._vms.find() if vm.created_by == portal.id)
        return decide_create(self._store.all(), portal, ask, owned)

    def decide_manage(self, portal: Vm, target: Vm, action: str) -> Verdict:
        return decide_manage(self._store.all(), portal, target, action)

    def reachable(self, portal: Vm) -> list[tuple[Vm, list[Rule]]]:
        """Every VM ``portal`` may use, with the rules that let it (oldest first)."""
        rules = self._store.all()
        if not rules:
            return []
        found = []
        for vm in self._vms.find():
            matching = applicable(rules, portal, vm)
            if matching:
                found.append((vm, matching))
        return found

    def manages(self, portal: Vm) -> bool:
        return bool(manager_rules(self._store.all(), portal))

    @contextlib.contextmanager
    def slot(self, rule: Rule, portal: Vm) -> Iterator[None]:
        """Hold one call within ``rule``'s limits for ``portal``; Forbidden (naming the limit) when over one."""
        limits: Limits = rule.spec.limits
        key = (rule.id, portal.id)
        now = self._clock()
        calls = self._calls[key]
        while calls and now - calls[0] >= RATE_WINDOW_S:
            calls.popleft()
        if limits.calls_per_minute is not None and len(calls) >= limits.calls_per_minute:
            raise Forbidden(f"{rule} allows {limits.calls_per_minute} calls a minute; wait a moment")
        if limits.max_concurrent is not None and self._in_flight[key] >= limits.max_concurrent:
            raise Forbidden(f"{rule} allows {limits.max_concurrent} calls at once; wait for one to finish")
        calls.append(now)
        self._in_flight[key] += 1
        try:
            yield
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
