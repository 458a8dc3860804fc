"""/v1/tokens: agent tokens — issue one for a VM (the secret is in this answer and never again), list, revoke.

Only an admin reaches these routes (the Unix socket, or TCP with the admin token): ``api.middleware.Access``
refuses agent tokens everywhere but their VM's MCP endpoint.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, Field

from nexus.api.deps import Tokens
from nexus.domain import AgentToken
from nexus.schemas import Strict

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


class TokenCreate(Strict):
    vm: str = Field(description="the VM (name or id) whose MCP endpoint the token opens")
    expires: str | None = Field(default=None, description="lifetime such as 30m, 1h, 7d, 2w; default: until removed")


class TokenOut(BaseModel):
    id: str
    vm_id: str
    vm_name: str
    created_at: datetime
    expires_at: datetime | None = Field(description="null: valid until removed")
    last_used: datetime | None = Field(description="last request with it, to the minute")

    @classmethod
    def of(cls, token: AgentToken) -> TokenOut:
        return cls(
            id=token.id,
            vm_id=token.vm_id,
            vm_name=token.vm_name,
            created_at=token.created_at,
            expires_at=token.expires_at,
            last_used=token.last_used,
        )


class TokenCreated(TokenOut):
    token: str = Field(description="the bearer token; shown only in this answer (nexusd keeps its sha256)")


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_token(body: TokenCreate, tokens: Tokens) -> TokenCreated:
    issued = tokens.create(body.vm, body.expires)
    return TokenCreated(**TokenOut.of(issued.token).model_dump(), token=issued.bearer)


@router.get("")
async def list_tokens(
    tokens: Tokens, vm: Annotated[str | None, Query(description="only this VM's tokens")] = None
) -> list[TokenOut]:
    return [TokenOut.of(t) for t in tokens.list(vm)]


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_token(token_id: str, tokens: Tokens) -> Response:
    tokens.remove(token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
