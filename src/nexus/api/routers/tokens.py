"""/v1/tokens: agent tokens — issue one for a VM (the secret is in this answer and never again), list, revoke.

Only an admin reaches these routes (the Unix socket, or TCP with the admin token): ``api.middleware.Access``
refuses agent tokens everywhere but their VM's MCP endpoint.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from nexus.api.deps import Tokens
from nexus.schemas import TokenCreate, TokenCreated, TokenOut

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


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
