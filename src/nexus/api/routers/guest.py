"""/v1/vms/{ref}/exec, /files, /tools: working inside a ready VM through its agent."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import StreamingResponse

from nexus.api.deps import Guest
from nexus.api.streaming import Emit, ndjson
from nexus.schemas import ExecIn, WriteOut
from nexus.services.guest import CHUNK_BYTES, OutputChunk

router = APIRouter(prefix="/v1/vms/{ref}", tags=["guest"])


@router.post("/exec", response_class=StreamingResponse, responses={200: {"content": {"application/x-ndjson": {}}}})
async def exec_command(request: Request, ref: str, body: ExecIn, guest: Guest) -> StreamingResponse:
    """Run a command; NDJSON events: output chunks as they come, then the exit code."""

    async def work(emit: Emit) -> dict[str, Any]:
        def output(chunk: OutputChunk) -> None:
            emit({"event": "output", "stream": chunk.stream, "data": chunk.data})

        result = await guest.exec(
            ref, body.command, output, cwd=body.cwd, env=body.env, stdin=body.stdin, timeout_s=body.timeout_s
        )
        truncated = bool(result.get("truncated")) and not result["streamed"]  # the events carried all of it
        return {"exit_code": result.get("exit_code"), "timed_out": result.get("timed_out"), "truncated": truncated}

    return await ndjson(request, work)


@router.get("/files", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
async def read_file(
    ref: str,
    guest: Guest,
    path: Annotated[str, Query(description="absolute path in the guest")],
    offset: Annotated[int, Query(ge=0)] = 0,
    length: Annotated[int, Query(ge=1, le=CHUNK_BYTES)] = CHUNK_BYTES,
) -> Response:
    """Up to ``length`` bytes of a guest file from ``offset``; X-File-Size and X-EOF say where that leaves you."""
    chunk = await guest.read_file(ref, path, offset, length)
    return Response(
        chunk.data,
        media_type="application/octet-stream",
        headers={"x-file-size": str(chunk.size), "x-eof": "1" if chunk.eof else "0"},
    )


# The body is read raw (not a JSON model), so it is declared here for the OpenAPI document.
_RAW_BODY: dict[str, Any] = {
    "requestBody": {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "required": False,
    }
}


@router.put("/files", openapi_extra=_RAW_BODY)
async def write_file(
    ref: str,
    request: Request,
    guest: Guest,
    path: Annotated[str, Query(description="absolute path in the guest; parents are created")],
    append: bool = False,
    mode: Annotated[str | None, Query(pattern=r"^0?[0-7]{3,4}$")] = None,
) -> WriteOut:
    """Write the raw request body to a guest file (or append it); send large files as several appends."""
    size = await guest.write_file(ref, path, await request.body(), append=append, mode=mode)
    return WriteOut(path=path, size=size)


@router.get("/tools")
async def list_tools(ref: str, guest: Guest) -> list[dict[str, Any]]:
    """The MCP tools the VM's agent serves."""
    return await guest.list_tools(ref)


@router.post("/tools/{name}")
async def call_tool(ref: str, name: str, guest: Guest, arguments: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """Call one MCP tool; the MCP result (``isError`` results included) as the agent gave it."""
    return await guest.call_tool(ref, name, arguments)
