"""/v1/firecracker: Firecracker binaries — list, pull a release or register a local binary (NDJSON), remove."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse

from nexus.api.deps import Firecracker, Via
from nexus.api.streaming import Emit, ndjson, progress_emitter
from nexus.domain import require_host_access
from nexus.schemas import FirecrackerOut, FirecrackerPullIn, FirecrackerVersion

router = APIRouter(prefix="/v1/firecracker", tags=["firecracker"])
_NDJSON: dict[int | str, dict[str, Any]] = {200: {"content": {"application/x-ndjson": {}}}}


@router.get("")
async def list_firecracker(fc: Firecracker) -> list[FirecrackerOut]:
    return [FirecrackerOut.of(b) for b in fc.list()]


@router.post("/pull", response_class=StreamingResponse, responses=_NDJSON)
async def pull_firecracker(request: Request, body: FirecrackerPullIn, fc: Firecracker, via: Via) -> StreamingResponse:
    if body.path:  # nexusd runs `BIN --version`
        require_host_access(via, "registering a Firecracker binary by path")

    async def work(emit: Emit) -> object:
        path = Path(body.path) if body.path else None
        pulled = await fc.pull(body.version, path, progress_emitter(emit), sha256=body.sha256)
        return FirecrackerOut.of(pulled).model_dump(mode="json")

    return await ndjson(request, work)


@router.delete("/{version}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_firecracker(version: FirecrackerVersion, fc: Firecracker) -> Response:
    fc.remove(version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
