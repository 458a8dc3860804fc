"""A WebSocket to nexusd (the terminals' ``/v1/vms/{ref}/shell``), reached as ``Connection`` says: its Unix socket,
or its TCP listener with the bearer token and the CA. ``websockets`` is imported only here, when one is opened
(nexusctl's start-up time). A refused handshake comes back as the domain error its body names, as for HTTP."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit, urlunsplit

from nexus.client.client import error_from_body, unreachable
from nexus.client.connection import DEFAULT_SOCKET, Connection, tls_verify
from nexus.domain import Invalid

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

OPEN_TIMEOUT_S = 30.0  # opening starts the program in the guest, over its agent link


def ws_url(base: str, path: str, query: list[tuple[str, str]]) -> str:
    """``http[s]://host:port`` + ``path`` + ``query`` as the ``ws[s]://`` URL of the same listener."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https"):
        raise Invalid(f"nexusd's URL must be http:// or https://, got {base!r}")
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, urlencode(query), ""))


def open_websocket(connection: Connection, path: str, query: list[tuple[str, str]]) -> ClientConnection:
    """An open WebSocket; its caller closes it (``legacy=True``: websockets' way to say "a connection, not a
    context manager or a reconnecting iterator")."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect, unix_connect

    try:
        if connection.url is None:
            socket = str(connection.socket or DEFAULT_SOCKET)
            url = ws_url("http://nexusd", path, query)
            return unix_connect(socket, url, open_timeout=OPEN_TIMEOUT_S, compression=None, legacy=True)
        headers = {"Authorization": f"Bearer {connection.token}"} if connection.token else {}
        verify = tls_verify(connection.ca_file) if connection.url.startswith("https://") else None
        context = verify if isinstance(verify, ssl.SSLContext) else None  # True: websockets' default context
        url = ws_url(connection.url, path, query)
        return connect(
            url, additional_headers=headers, ssl=context, open_timeout=OPEN_TIMEOUT_S, compression=None, legacy=True
        )
    except InvalidStatus as exc:
        raise error_from_body(exc.response.status_code, bytes(exc.response.body or b"")) from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise unreachable(connection.where, exc) from exc
