"""The audit log's values: one entry per routed call and per management action (host API, host MCP and portal
gateway alike). Argument *contents* are never recorded: only their digest and size, so a secret passed as an
argument does not end up in the log."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

# Who called, as entries name them besides a portal's "vm:<name>" (``AuditEntry.caller``).
HOST_CALLER = "host"  # the Unix socket
ADMIN_CALLER = "admin"  # TCP with the admin token
ANONYMOUS_CALLER = "anonymous"  # TCP with no token, or one nexusd does not know (refused with 401)
RETENTION_DAYS_RANGE = (0, 3650)  # setting audit_retention_days; 0 keeps entries forever


def token_caller(token_id: str) -> str:
    return f"token:{token_id}"


class Decision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Via(StrEnum):
    """The edge a call came in on."""

    REST = "rest"  # the HTTP API (nexusctl, the SDK)
    MCP = "mcp"  # the host MCP endpoints (/mcp, /v1/vms/{ref}/mcp)
    GATEWAY = "gateway"  # a portal VM's gateway
    EGRESS = "egress"  # a VM's request through nexusd's egress proxy


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime  # when the call began
    caller: str  # "vm:<name>" (a portal), "host" (the Unix socket), "admin" (TCP admin token), "token:<id>",
    # "anonymous" (refused: no or unknown token)
    via: Via
    action: str  # a tool name ("run_command"), or a REST route ("POST /v1/vms/{ref}/start")
    decision: Decision
    target_id: str | None = None  # the VM acted on, when there is one
    target: str | None = None  # its name at the time
    rule: int | None = None  # the policy rule that decided; None: default deny, or a host action
    reason: str = ""
    args_digest: str | None = None  # sha256 of the arguments' canonical JSON (see ``digest``)
    args_bytes: int = 0
    duration_ms: float = 0.0
    result_bytes: int = 0
    is_error: bool = False
    id: int | None = None  # given by the store


def digest(arguments: Any) -> tuple[str, int]:
    """``(sha256 hex, size in bytes)`` of ``arguments``' canonical JSON (sorted keys, no spaces): equal arguments
    have equal digests whatever their key order, and nothing of their content is kept."""
    data = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest(), len(data)


class AuditLog(Protocol):
    """Where services and edges write what was done. ``record`` never raises: losing the store must not fail the
    call it describes (the entry is logged instead)."""

    def record(self, entry: AuditEntry) -> None: ...


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which entries, and one page of them: newest first below ``before`` (an id; None: from the newest), or, when
    ``after`` is given, oldest first above it. Ids only grow, so either is a stable cursor while entries arrive or
    are pruned."""

    vm: tuple[str, ...] = ()  # entries whose target id or name is one of these (empty: any)
    caller: str | None = None
    since: datetime | None = None
    before: int | None = None
    after: int | None = None
    limit: int = 100

    def matches(self, entry: AuditEntry) -> bool:
        """The store's filter (not the page), for entries seen live."""
        return (
            (not self.vm or entry.target_id in self.vm or entry.target in self.vm)
            and (self.caller is None or entry.caller == self.caller)
            and (self.since is None or entry.at >= self.since)
        )


class AuditStore(Protocol):
    """Where audit entries are kept; ids only grow."""

    def insert(self, entry: AuditEntry) -> int:
        """The new entry's id."""
        ...

    def find(self, query: AuditQuery) -> list[AuditEntry]: ...
    def prune(self, older_than: datetime, batch: int) -> int:
        """Remove at most ``batch`` entries from before ``older_than``; how many went."""
        ...
