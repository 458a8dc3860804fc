"""The gateway stream between a portal VM's agent and nexusd (port ``org.nexus.gateway`` / vsock 1026).

It carries the MCP sessions of agents running inside the portal (``nexus-mcp`` over stdio, or the loopback
Streamable HTTP endpoint) to nexusd, which serves them: newline-delimited JSON-RPC notifications, each naming the
session (a string the guest chooses, unique for the agent process):

* ``gateway/message`` ``{"session": S, "message": {...}}`` — one MCP JSON-RPC message, either way;
* ``gateway/close`` ``{"session": S}`` — the session ended: guest → host when its local client went away (nexusd
  cancels what it was doing for it), host → guest when nexusd ended it (the agent closes the local client).

A session is opened by its first message (an MCP ``initialize``). The stream carries no credentials: nexusd knows
the caller by the port the bytes came in on, never by anything the guest says.
"""

from __future__ import annotations

from typing import Final

__all__ = ["GATEWAY_CLOSE", "GATEWAY_MESSAGE"]

GATEWAY_MESSAGE: Final = "gateway/message"
GATEWAY_CLOSE: Final = "gateway/close"
