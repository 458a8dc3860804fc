"""nexusd's egress proxy (issue 16): allow-lists per VM, plain tunnels, and secrets injected on the way out through
TLS terminated with the Nexus CA. Self-contained: it reaches VMs, secrets and the audit log through callables."""

from nexus.egress.ca import NexusCA
from nexus.egress.dial import DEFAULT_BLOCKED, Lookup, system_lookup, upstream_context
from nexus.egress.proxy import EgressProxy

__all__ = ["DEFAULT_BLOCKED", "EgressProxy", "Lookup", "NexusCA", "system_lookup", "upstream_context"]
