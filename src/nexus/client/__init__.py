"""Reaching nexusd: the transport factory (``Connection``) and the errors every client shares (the typed client is
``nexus.sdk``)."""

import sys

# httpx imports its own command-line tool (click, rich, pygments: ~80 ms) whenever those are installed, and every
# nexusctl command pays for it. Marking that module absent makes httpx fall back to its stub; nothing here uses it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from nexus.client.client import DaemonUnreachable, Unauthorized, unreachable  # noqa: E402
from nexus.client.connection import DEFAULT_SOCKET, Connection, tls_verify  # noqa: E402

__all__ = [
    "DEFAULT_SOCKET",
    "Connection",
    "DaemonUnreachable",
    "Unauthorized",
    "tls_verify",
    "unreachable",
]
