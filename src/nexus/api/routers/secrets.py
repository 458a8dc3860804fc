"""/v1/secrets: secrets the egress proxy adds to a VM's requests, and their bindings. No answer carries a value.

A value is the raw body of ``PUT /v1/secrets/{name}`` (``application/octet-stream``): it is never parsed, so no
validation error can echo it, and the audit log records only its size (``api.audit``). Only an admin reaches these
routes (``api.middleware.Access`` refuses agent tokens).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from nexus.api.deps import Secrets
from nexus.domain.egress import MAX_SECRET_BYTES
from nexus.schemas import SQLITE_MAX_INT, BindingCreate, BindingOut, SecretName, SecretOut

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])

Name = Annotated[SecretName, Path()]

_VALUE_BODY = {
    "requestBody": {
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "minLength": 1, "maxLength": MAX_SECRET_BYTES}
            }
        },
        "required": True,
        "description": f"the value: UTF-8 text without control characters, at most {MAX_SECRET_BYTES} bytes",
    }
}


@router.get("")
async def list_secrets(secrets: Secrets) -> list[SecretOut]:
    return [SecretOut.of(info) for info in secrets.list()]


@router.get("/{name}")
async def get_secret(name: Name, secrets: Secrets) -> SecretOut:
    return SecretOut.of(secrets.get(name))


@router.put("/{name}", openapi_extra=_VALUE_BODY)
async def set_secret(name: Name, request: Request, secrets: Secrets) -> SecretOut:
    """Make secret ``name`` or replace its value (the raw request body; 413 over 64 KiB)."""
    secrets.set(name, await request.body())
    return SecretOut.of(secrets.get(name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_secret(
    name: Name,
    secrets: Secrets,
    force: Annotated[bool, Query(description="also remove its bindings (else a bound secret is a 409)")] = False,
) -> Response:
    secrets.remove(name, force)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/bindings", status_code=status.HTTP_201_CREATED)
async def bind_secret(name: Name, body: BindingCreate, secrets: Secrets) -> BindingOut:
    record = secrets.bind(name, body.host, vm=body.vm, tag=body.tag, header=body.header, bearer=body.bearer)
    return BindingOut.of(record)


@router.delete("/bindings/{binding_id}", status_code=status.HTTP_204_NO_CONTENT)
async def unbind_secret(binding_id: Annotated[int, Path(ge=1, le=SQLITE_MAX_INT)], secrets: Secrets) -> Response:
    secrets.unbind(binding_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
