"""/v1/policies: the rules that let portal VMs use work VMs through their gateway (default deny: no rule, no
access). Only an admin reaches these routes (``api.middleware.Access`` refuses agent tokens), and nothing a portal
can call leads here: a portal never widens its own policy."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from nexus.api.deps import Policies
from nexus.domain.policy import Limits, Management, RuleSpec, Selector
from nexus.schemas import PolicyCreate, PolicyOut

router = APIRouter(prefix="/v1/policies", tags=["policies"])


def rule_spec(body: PolicyCreate) -> RuleSpec:
    manage = None
    if body.manage:
        manage = Management(body.max_vms or 1, tuple(body.images), body.max_vcpus, body.max_mem_mib)
    return RuleSpec(
        portal=Selector.parse(body.portal, work=False),
        work=Selector.parse(body.work, work=True),
        tools=tuple(dict.fromkeys(body.tools)),
        limits=Limits(body.calls_per_minute, body.max_concurrent, body.max_result_bytes),
        manage=manage,
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def allow(body: PolicyCreate, policies: Policies) -> PolicyOut:
    return PolicyOut.of(policies.allow(rule_spec(body)))


@router.get("")
async def list_policies(policies: Policies) -> list[PolicyOut]:
    return [PolicyOut.of(rule) for rule in policies.rules()]


@router.delete("/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove(rule_id: int, policies: Policies) -> Response:
    policies.remove(rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
