"""Where the host and the guest agent meet: virtio-serial port names and vsock port numbers.

This module only names the endpoints; opening them is the job of ``nexus.channel`` (host) and
``nexus.agent.transport`` (guest).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CONTROL_PORT_NAME",
    "CONTROL_VSOCK_PORT",
    "GATEWAY_PORT_NAME",
    "GATEWAY_VSOCK_PORT",
    "HOST_CID",
    "MCP_PORT_NAME",
    "MCP_VSOCK_PORT",
]

CONTROL_PORT_NAME: Final = "org.nexus.control"
"""virtio-serial port carrying hello, heartbeats and nexus/* requests."""

MCP_PORT_NAME: Final = "org.nexus.mcp"
"""virtio-serial port carrying MCP JSON-RPC 2.0 (the guest tools)."""

CONTROL_VSOCK_PORT: Final = 1024
"""vsock port of the control stream (reserved for the Firecracker / vhost-vsock transport)."""

MCP_VSOCK_PORT: Final = 1025
"""vsock port of the MCP stream (reserved for the Firecracker / vhost-vsock transport)."""

HOST_CID: Final = 2
"""The well-known vsock context id of the host (VMADDR_CID_HOST)."""

GATEWAY_PORT_NAME: Final = "org.nexus.gateway"
"""virtio-serial port of a portal's gateway: the MCP sessions of agents inside the VM, tunnelled to nexusd."""

GATEWAY_VSOCK_PORT: Final = 1026
"""vsock port of the gateway stream (the agent dials the host, as for the control stream)."""
