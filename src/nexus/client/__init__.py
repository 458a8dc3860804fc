"""``NexusClient``: the nexusd API over httpx, raising domain errors."""

from nexus.client.client import DEFAULT_SOCKET, DaemonUnreachable, NexusClient, Unauthorized, tls_verify, unreachable

__all__ = ["DEFAULT_SOCKET", "DaemonUnreachable", "NexusClient", "Unauthorized", "tls_verify", "unreachable"]
