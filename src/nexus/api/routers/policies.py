"""/v1/policies: the rules that let portal VMs use work VMs through their gateway (default deny: no rule, no
access). Only an admin reaches these routes (``api.middleware.Access`` refuses agent tokens), and nothing a portal
can call leads here: a portal never widens its own policy."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from nexus.api.deps import Policies
from nexus.schemas import SQLITE_MAX_INT, PolicyCreate, PolicyOut

router = APIRouter(prefix="/v1/policies", tags=["policies"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def allow(body: PolicyCreate, policies: Policies) -> PolicyOut:
    return PolicyOut.of(policies.allow(body.spec()))


@router.get("")
async def list_policies(policies: Policies) -> list[PolicyOut]:
    return [PolicyOut.of(rule) for rule in policies.rules()]


@router.delete("/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove(rule_id: Annotated[int, Path(ge=1, le=SQLITE_MAX_INT)], policies: Policies) -> Response:
    policies.remove(rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
