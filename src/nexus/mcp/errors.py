"""The ONE table from Nexus domain errors to MCP JSON-RPC errors, for nexusd's MCP endpoints.

Only faults that keep a request from being served become JSON-RPC errors (unknown VM, VM not ready, the guest
link dropping mid-call, bad params). A tool that ran and failed is not an error here: its ``isError`` result is
passed through untouched. The domain code travels in ``error.data.code`` so clients can rebuild the error.
"""

from __future__ import annotations

from typing import Final

from mcp.shared.exceptions import MCPError

from nexus.domain import (
    Conflict,
    DriverError,
    Forbidden,
    GuestError,
    Invalid,
    InvalidState,
    NexusError,
    NotFound,
    Unavailable,
)
from nexus.protocol import INTERNAL_ERROR, INVALID_PARAMS

# Server-defined codes live in -32000..-32099 (JSON-RPC 2.0 §5.1).
NOT_FOUND: Final = -32001
INVALID_STATE: Final = -32002  # e.g. the VM is stopped or paused: not ready to serve tools
CONFLICT: Final = -32003
UNAVAILABLE: Final = -32004  # e.g. the agent link is not open, or it dropped during a call
DRIVER_ERROR: Final = -32005
GUEST_ERROR: Final = -32006  # the agent answered with a JSON-RPC error of its own
FORBIDDEN: Final = -32007  # the caller may not do this (e.g. it names a file on nexusd's host over TCP)

CODE_BY_ERROR: Final[dict[type[NexusError], int]] = {
    Invalid: INVALID_PARAMS,
    NotFound: NOT_FOUND,
    InvalidState: INVALID_STATE,
    Conflict: CONFLICT,
    Unavailable: UNAVAILABLE,
    DriverError: DRIVER_ERROR,
    GuestError: GUEST_ERROR,
    Forbidden: FORBIDDEN,
}


def to_mcp_error(exc: NexusError) -> MCPError:
    """The JSON-RPC error for ``exc``: the most specific class in the table wins."""
    code = next((CODE_BY_ERROR[cls] for cls in type(exc).__mro__ if cls in CODE_BY_ERROR), INTERNAL_ERROR)
    return MCPError(code, exc.message, {"code": exc.code})
