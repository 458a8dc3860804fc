"""/v1/vms/{ref}/archive: a file or directory tree out of a VM, or into it, as a streamed tar.

Both directions stream: the body of a GET goes out as the agent packs it, the body of a PUT goes to the agent
as it arrives (this route alone is exempt from the request body cap, ``api.middleware.is_archive_path``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from nexus.api.deps import Guest
from nexus.schemas import ArchiveOut

router = APIRouter(prefix="/v1/vms/{ref}", tags=["guest"])

TAR = "application/x-tar"

# The body is read raw (not a JSON model), so it is declared here for the OpenAPI document.
_TAR_BODY: dict[str, Any] = {
    "requestBody": {"content": {TAR: {"schema": {"type": "string", "format": "binary"}}}, "required": True}
}


@router.get("/archive", response_class=StreamingResponse, responses={200: {"content": {TAR: {}}}})
async def read_archive(
    ref: str, guest: Guest, path: Annotated[str, Query(description="absolute path in the guest")]
) -> StreamingResponse:
    """A tar stream of the guest's file or directory tree at ``path``; its one top-level entry is named after
    ``path``. Modes, uid/gid, mtimes, symbolic and hard links are kept; sockets, FIFOs and devices left out."""
    return StreamingResponse(await guest.read_archive(ref, path), media_type=TAR)


@router.put("/archive", openapi_extra=_TAR_BODY)
async def write_archive(
    ref: str,
    request: Request,
    guest: Guest,
    path: Annotated[str, Query(description="absolute guest directory to unpack into; made if missing")],
    cp: Annotated[
        bool,
        Query(
            description="cp -r placement: when path is not an existing directory, the archive's one top-level "
            "entry becomes path"
        ),
    ] = False,
) -> ArchiveOut:
    """Unpack the tar stream in the body (plain or compressed) into ``path``. A member that would land outside
    it (an absolute name, ``..``, a path through a symbolic link, a hard link leaving it) or is a device node
    or FIFO is refused with 422 naming it; members before it stay unpacked."""
    return ArchiveOut.model_validate(await guest.write_archive(ref, path, request.stream(), cp))
