"""/v1/audit: the audit log, a page at a time (``GET /v1/audit``) or live as Server-Sent Events
(``GET /v1/audit/stream``).

Paging: entries come newest first; ``next_before`` is the ``before=`` of the next older page (null: no older
entries). With ``after=`` they come oldest first instead, above that id; ``next_after`` is what to pass next time
to get only newer ones. Ids only grow, so both cursors stay valid while entries are added and pruned.

Only an admin reaches these routes (the Unix socket, or TCP with the admin token): ``api.middleware.Access`` refuses
agent tokens everywhere but their VM's MCP endpoint.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from nexus.api.deps import Audit
from nexus.api.sse import EVENT_STREAM, event_stream
from nexus.domain.audit import AuditEntry
from nexus.schemas import AuditEntryOut, AuditPage, Rfc3339
from nexus.services.audit import PAGE_MAX

router = APIRouter(prefix="/v1/audit", tags=["audit"])

VmParam = Annotated[str | None, Query(description="only entries about this VM (name or id; a removed VM's too)")]
CallerParam = Annotated[str | None, Query(description='only this caller: "host", "admin", "token:<id>", "vm:<name>"')]
SinceParam = Annotated[Rfc3339 | None, Query(description="only entries from this time on (RFC 3339, with zone)")]


@router.get("")
async def list_audit(
    audit: Audit,
    vm: VmParam = None,
    caller: CallerParam = None,
    since: SinceParam = None,
    before: Annotated[int | None, Query(ge=1, description="entries older than this id (newest first)")] = None,
    after: Annotated[int | None, Query(ge=0, description="entries newer than this id (oldest first)")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="entries per page")] = 100,
) -> AuditPage:
    page = audit.query(vm=vm, caller=caller, since=since, before=before, after=after, limit=limit)
    return AuditPage(
        entries=[AuditEntryOut.of(e) for e in page.entries], next_before=page.next_before, next_after=page.next_after
    )


def _event(entry: AuditEntry) -> tuple[int, str]:
    out = AuditEntryOut.of(entry)
    return out.id, out.model_dump_json()


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {EVENT_STREAM: {}}, "description": "one event per entry: id, and data (JSON)"}},
)
async def stream_audit(
    audit: Audit,
    vm: VmParam = None,
    caller: CallerParam = None,
    since: SinceParam = None,
    since_id: Annotated[int | None, Query(ge=0, description="first send the stored entries after this id")] = None,
    last_event_id: Annotated[
        int | None, Header(ge=0, description="as since_id; sent by a client that reconnects (wins over since_id)")
    ] = None,
) -> StreamingResponse:
    """New entries as Server-Sent Events (``text/event-stream``) until the client goes away; a comment every 15 s
    keeps the connection alive."""
    after = last_event_id if last_event_id is not None else since_id
    return event_stream(audit.follow(audit.filter(vm=vm, caller=caller, since=since), after), _event)
