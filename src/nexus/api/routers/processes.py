"""/v1/vms/{ref}/processes: background processes in a ready VM (start, list, one, output, signal, wait)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from nexus.api.deps import Guest
from nexus.schemas import (
    PROCESS_OUTPUT_LIMIT_MAX,
    PROCESS_WAIT_MAX_S,
    ProcessOut,
    ProcessOutputOut,
    ProcessSignalIn,
    ProcessStartIn,
)
from nexus.services.processes import ProcessService

router = APIRouter(prefix="/v1/vms/{ref}/processes", tags=["processes"])


async def _service(guest: Guest) -> ProcessService:
    return ProcessService(guest)


Processes = Annotated[ProcessService, Depends(_service)]


@router.get("")
async def list_processes(ref: str, processes: Processes) -> list[ProcessOut]:
    """Every process started in the VM, running and finished, oldest first."""
    return [ProcessOut.model_validate(p) for p in await processes.list(ref)]


@router.post("", status_code=status.HTTP_201_CREATED)
async def start_process(ref: str, body: ProcessStartIn, processes: Processes) -> ProcessOut:
    """Start a command that outlives the request; with ``ready_port``/``ready_log`` the answer waits until it is ready
    (422 with its last output when it is not in time: it was killed)."""
    return ProcessOut.model_validate(await processes.start(ref, body.model_dump(exclude_none=True)))


@router.get("/{process}")
async def get_process(ref: str, process: str, processes: Processes) -> ProcessOut:
    return ProcessOut.model_validate(await processes.get(ref, process))


@router.get("/{process}/output")
async def process_output(
    ref: str,
    process: str,
    processes: Processes,
    offset: Annotated[int | None, Query(ge=0, description="bytes from this offset (page with next_offset)")] = None,
    limit: Annotated[int | None, Query(ge=1, le=PROCESS_OUTPUT_LIMIT_MAX, description="at most this many")] = None,
    tail: Annotated[int | None, Query(ge=0, description="the last N lines (default 100 without offset)")] = None,
) -> ProcessOutputOut:
    """Its output (stdout and stderr as written), by byte offset or as the last lines."""
    return ProcessOutputOut.model_validate(await processes.output(ref, process, offset, limit, tail))


@router.post("/{process}/signal")
async def signal_process(ref: str, process: str, body: ProcessSignalIn, processes: Processes) -> ProcessOut:
    """Send a signal to its process group (409 when it is not running)."""
    return ProcessOut.model_validate(await processes.signal(ref, process, body.signal))


@router.get("/{process}/wait")
async def wait_process(
    ref: str,
    process: str,
    processes: Processes,
    timeout_s: Annotated[float, Query(ge=0, le=PROCESS_WAIT_MAX_S)] = 30.0,
) -> ProcessOut:
    """Once it has ended (its exit status), or after ``timeout_s`` with ``timed_out: true``."""
    return ProcessOut.model_validate(await processes.wait(ref, process, timeout_s))
