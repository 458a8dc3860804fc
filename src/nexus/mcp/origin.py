"""DNS-rebinding protection for the MCP endpoints: which ``Host`` and ``Origin`` headers nexusd answers.

The MCP transport spec says servers MUST validate ``Origin``; a page that rebinds its own name to 127.0.0.1 (or to
a forwarder in front of the Unix socket) would otherwise drive a VM from a browser. Loopback names and ``nexusd``
(the host name nexusd's own clients use over the Unix socket) are allowed on any port with no configuration;
anything else must be listed in nexusd.toml (``mcp_allowed_hosts``, ``mcp_allowed_origins``). A request with no
``Origin`` is not from a browser page and passes the origin check. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

LOCAL_HOSTS: Final = ("localhost", "127.0.0.1", "[::1]", "nexusd")
_LOCAL_ORIGIN_HOSTS: Final = ("localhost", "127.0.0.1", "[::1]")


def _host_only(value: str) -> str:
    """``name`` of ``name[:port]`` (IPv6 keeps its brackets), lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    hosts: frozenset[str]  # host names (no port): any port is allowed
    origins: frozenset[str]  # exact origins, scheme://host[:port], lower-cased

    @classmethod
    def build(cls, extra_hosts: Iterable[str] = (), extra_origins: Iterable[str] = ()) -> OriginPolicy:
        hosts = {*LOCAL_HOSTS, *(_host_only(h) for h in extra_hosts)}
        return cls(hosts=frozenset(hosts), origins=frozenset(o.strip().rstrip("/").lower() for o in extra_origins))

    def refusal(self, host: str | None, origin: str | None) -> str | None:
        """Why a request with these headers is refused, or None when it may be served."""
        if not host:
            return "the request has no Host header"
        if _host_only(host) not in self.hosts:
            return f"Host {host!r} is not allowed (add it to mcp_allowed_hosts in nexusd.toml)"
        if origin is None:
            return None
        normal = origin.strip().rstrip("/").lower()
        if normal in self.origins:
            return None
        parts = urlsplit(normal)
        if parts.scheme in ("http", "https") and _host_only(parts.netloc) in _LOCAL_ORIGIN_HOSTS:
            return None
        return f"Origin {origin!r} is not allowed (add it to mcp_allowed_origins in nexusd.toml)"
