"""/v1/admin: host-level maintenance. Each handler parses, makes one service call, serialises."""

from __future__ import annotations

from fastapi import APIRouter

from nexus.api.deps import Network
from nexus.schemas import CleanupOut, SetupFirewallOut

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/cleanup-network")
async def cleanup_network(net: Network) -> CleanupOut:
    """Remove every TAP and bridge nexus made and its nftables table (409 while networked VMs run)."""
    return CleanupOut.of(await net.cleanup())


@router.post("/setup-firewall")
async def setup_firewall(net: Network) -> SetupFirewallOut:
    """Enable IPv4 forwarding and, with ufw or firewalld active, allow forwarding through the bridge."""
    return SetupFirewallOut(done=await net.setup_firewall())
