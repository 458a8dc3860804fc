"""nexusd's MCP endpoints over Streamable HTTP: each VM's guest tools, and management tools; one error→JSON-RPC
table."""

from __future__ import annotations

from nexus.mcp.endpoints import McpEndpoints
from nexus.mcp.errors import CODE_BY_ERROR, to_mcp_error
from nexus.mcp.workspace import Workspaces

__all__ = ["CODE_BY_ERROR", "McpEndpoints", "Workspaces", "to_mcp_error"]
