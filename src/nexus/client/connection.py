"""Where nexusd is and how to reach it: the one transport factory behind the SDK (and so the CLI) and
``nexusctl mcp-bridge`` (Unix socket by default; TCP with a bearer token, TLS checked against a CA file)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from nexus.domain import Invalid

DEFAULT_SOCKET = Path("/run/nexus/nexusd.sock")
SOCKET_BASE_URL = "http://nexusd"  # the Host nexusd's MCP endpoints know for clients on the socket


@dataclass(frozen=True, slots=True)
class Connection:
    """nexusd's Unix socket (default), or its TCP listener ``url`` with a bearer ``token`` (the admin token or an
    agent token), its certificate checked against ``ca_file`` when given, else the system's CAs."""

    socket: Path | None = None
    url: str | None = None
    token: str | None = None
    ca_file: Path | None = None

    @property
    def where(self) -> str:
        return self.url or str(self.socket or DEFAULT_SOCKET)

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def sync_client(self, timeout: httpx.Timeout | float) -> httpx.Client:
        if self.url is not None:
            verify = tls_verify(self.ca_file)
            return httpx.Client(base_url=self.url, headers=self._headers(), timeout=timeout, verify=verify)
        # no TLS on a Unix socket: verify=False spares loading the system's CAs (~35 ms per CLI call)
        transport = httpx.HTTPTransport(uds=str(self.socket or DEFAULT_SOCKET), verify=False)
        return httpx.Client(transport=transport, base_url=SOCKET_BASE_URL, headers=self._headers(), timeout=timeout)

    def async_client(self, timeout: httpx.Timeout | float) -> httpx.AsyncClient:
        if self.url is not None:
            verify = tls_verify(self.ca_file)
            return httpx.AsyncClient(base_url=self.url, headers=self._headers(), timeout=timeout, verify=verify)
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket or DEFAULT_SOCKET), verify=False)
        headers = self._headers()
        return httpx.AsyncClient(transport=transport, base_url=SOCKET_BASE_URL, headers=headers, timeout=timeout)


def tls_verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    """How an ``https://`` nexusd is checked: against ``ca_file`` (a self-signed or private CA), else the system's
    CAs. Never unchecked: the bearer token would go to whoever answers."""
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise Invalid(f"cannot use CA file {ca_file}: {exc}") from exc
