"""The slice of the Model Context Protocol the guest agent speaks on its MCP stream.

Only names and version negotiation live here; the server is ``nexus.agent.mcp_server``. Versions are
those reachable through the ``initialize`` handshake (the official Python SDK 2.x offers
``2025-11-25``; its ``mode="auto"`` first probes ``server/discover``, which the agent answers with
-32601 so the SDK falls back to the handshake). The 2026-07-28 per-request-envelope era is not spoken.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "CANCELLED_NOTIFICATION",
    "INITIALIZED_NOTIFICATION",
    "INITIALIZE_METHOD",
    "MCP_LATEST_PROTOCOL_VERSION",
    "MCP_SUPPORTED_PROTOCOL_VERSIONS",
    "PING_METHOD",
    "PROGRESS_NOTIFICATION",
    "SERVER_NAME",
    "STREAM_META_KEY",
    "TOOLS_CALL_METHOD",
    "TOOLS_LIST_METHOD",
    "negotiate_protocol_version",
]

MCP_SUPPORTED_PROTOCOL_VERSIONS: Final[tuple[str, ...]] = (
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
)
"""Oldest to newest."""

MCP_LATEST_PROTOCOL_VERSION: Final = MCP_SUPPORTED_PROTOCOL_VERSIONS[-1]

SERVER_NAME: Final = "nexus-agent"

INITIALIZE_METHOD: Final = "initialize"
INITIALIZED_NOTIFICATION: Final = "notifications/initialized"
PING_METHOD: Final = "ping"
TOOLS_LIST_METHOD: Final = "tools/list"
TOOLS_CALL_METHOD: Final = "tools/call"
PROGRESS_NOTIFICATION: Final = "notifications/progress"
CANCELLED_NOTIFICATION: Final = "notifications/cancelled"

STREAM_META_KEY: Final = "nexus/stream"
"""Key in a progress notification's ``_meta`` naming the stream of its chunk: "stdout" or "stderr"."""


def negotiate_protocol_version(requested: Any) -> str:
    """The client's requested version when the agent supports it, else the agent's latest."""
    if isinstance(requested, str) and requested in MCP_SUPPORTED_PROTOCOL_VERSIONS:
        return requested
    return MCP_LATEST_PROTOCOL_VERSION
