"""Portal policy as management tools on the host's ``/mcp`` (the operator's; a portal's gateway has none of them,
so a portal can never widen its own policy)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nexus.mcp.manage import ADDS, READS, REMOVES, Ctx, Tools, _Tool
from nexus.schemas import NoArgs, PolicyCreate, PolicyOut, Strict
from nexus.services.policy import PolicyService


class PolicyRemoveArgs(Strict):
    id: int = Field(description="the rule's id (policy_list)")


def policy_tools(policy: PolicyService) -> Tools:
    async def policy_allow(ctx: Ctx, args: PolicyCreate) -> dict[str, Any]:
        return PolicyOut.of(policy.allow(args.spec())).model_dump(mode="json")

    async def policy_list(ctx: Ctx, args: NoArgs) -> dict[str, Any]:
        return {"rules": [PolicyOut.of(rule).model_dump(mode="json") for rule in policy.rules()]}

    async def policy_remove(ctx: Ctx, args: PolicyRemoveArgs) -> dict[str, Any]:
        policy.remove(args.id)
        return {"removed": args.id}

    return {
        "policy_allow": _Tool(
            "Allow portal access",
            "Let portal VMs (a name or tag:TAG) use work VMs (a name, tag:TAG or @created) through their gateway: "
            "the tools named (or *), within the limits given; manage lets them create and manage VMs of their own.",
            PolicyCreate,
            policy_allow,
            ADDS,
        ),
        "policy_list": _Tool("List portal rules", "The portal policy rules, oldest first.", NoArgs, policy_list, READS),
        "policy_remove": _Tool(
            "Remove portal rule",
            "Remove a rule: the next call it allowed is refused.",
            PolicyRemoveArgs,
            policy_remove,
            REMOVES,
        ),
    }
