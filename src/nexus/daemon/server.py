"""Serving the API: bind the Unix socket (and optional TCP listener, optionally with TLS), run uvicorn, stop
cleanly on signals.

Owns the listening sockets and removes the Unix socket file on the way out. TLS applies to the TCP listener only:
local clients keep speaking plain HTTP over the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Generator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from nexus.domain import Unavailable

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: the daemon installs handlers that stop it cleanly."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_unix(path: Path, mode: int) -> socket.socket:
    """Bind a Unix socket at ``path`` with ``mode``, replacing a stale socket file but never a live daemon's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody answers: left over from a daemon that died
        else:
            raise Unavailable(f"another nexusd is already serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        path.chmod(mode)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot listen on {path}: {exc.strerror}") from exc
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on a connection only when its socket says proto IPPROTO_TCP,
    # and an accepted socket inherits the listener's. Without it small responses wait on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def _config(app: FastAPI, tls: ssl.SSLContext | None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        ws="websockets-sansio",  # the terminals' WebSockets (api/routers/terminals.py); "auto" takes the legacy one
        ssl_context_factory=(lambda _config, _default: tls) if tls is not None else None,
    )


async def serve(
    app: FastAPI,
    sockets: list[socket.socket],
    on_exit: Callable[[], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve ``app`` on ``sockets`` until SIGTERM or SIGINT; ``on_exit`` runs as soon as shutdown begins (to end
    long-lived responses such as MCP's SSE streams before the graceful-shutdown timeout). With ``tls``, the TCP
    sockets speak TLS: uvicorn gives one server's settings to all its sockets, so they get a server of their own."""
    if tls is None:
        servers = [(_Server(_config(app, None)), sockets)]
    else:
        tcp = [s for s in sockets if s.family != socket.AF_UNIX]
        unix = [s for s in sockets if s.family == socket.AF_UNIX]
        servers = [(_Server(_config(app, None)), unix), (_Server(_config(app, tls)), tcp)]
        servers = [(server, socks) for server, socks in servers if socks]
    loop = asyncio.get_running_loop()

    def request_exit(sig: signal.Signals) -> None:
        log.info("received %s, shutting down", sig.name)
        for server, _ in servers:
            server.should_exit = True
        if on_exit is not None:
            on_exit()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_exit, sig)
    try:
        await asyncio.gather(*(server.serve(sockets=socks) for server, socks in servers))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
