"""Byte streams between the agent and the host, and the endpoints that (re)open them.

The code above this module sees only two shapes:

* ``Stream`` - ``read(timeout_s)`` returns bytes, ``None`` (nothing yet) or ``b""`` (the host went away);
  ``write(data)`` writes everything or raises ``PeerGone``; ``close()``.
* ``Endpoint`` - ``connect(stop)`` blocks (retrying quietly) until a host side is there and returns a
  ``Stream`` for that connection, or None once ``stop`` is set; ``reconnects`` says whether to call it
  again after the stream ends.

Endpoints here: virtio-serial ports found by name (``/sys/class/virtio-ports/*/name`` → ``/dev/vportNpM``),
an explicit path (a character device, or a Unix socket to connect to - what tests use to stand in for
QEMU's chardev sockets), stdio (one session; handy for running the tools as a local MCP server), and vsock:
the control stream (and the gateway stream, ``GATEWAY_VSOCK_PORT``) dials the host (CID 2,
``CONTROL_VSOCK_PORT``) and redials when the host drops it; the MCP port listens on ``MCP_VSOCK_PORT`` and
each accepted connection is one session (several ``PortRunner`` threads may share one listening endpoint to
serve connections side by side). Where vsock ports live is a
``SocketSpace``: ``VSOCK_SPACE`` in a guest, ``unix_space(prefix)`` in tests (AF_UNIX paths named the way
Firecracker names its host-side sockets), so the same code runs without ever opening an AF_VSOCK socket.
``choose_transport`` picks virtio-serial or vsock when the options do not say.

virtio-serial behaviour this relies on (Linux ``drivers/char/virtio_console.c``): while the host side is
not connected, ``poll`` reports POLLHUP (with POLLIN), ``read`` returns 0 and ``write`` blocks, or fails
with EAGAIN on an O_NONBLOCK fd. So the device is opened once, non-blocking; "connected" means poll no
longer reports POLLHUP (checked every ``HOST_POLL_S``), and a read of 0 bytes ends the current session
without closing the fd.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from nexus.protocol import (
    CONTROL_PORT_NAME,
    CONTROL_VSOCK_PORT,
    GATEWAY_PORT_NAME,
    GATEWAY_VSOCK_PORT,
    HOST_CID,
    MCP_PORT_NAME,
    MCP_VSOCK_PORT,
)

__all__ = [
    "DEV_ROOT",
    "DEV_VSOCK",
    "SYS_VIRTIO_PORTS",
    "VSOCK_SPACE",
    "CharDeviceEndpoint",
    "Endpoint",
    "FdStream",
    "PathEndpoint",
    "PeerGone",
    "SocketDialEndpoint",
    "SocketListenEndpoint",
    "SocketSpace",
    "StdioEndpoint",
    "Stream",
    "UnixSocketEndpoint",
    "VirtioPortEndpoint",
    "choose_transport",
    "find_virtio_port",
    "unix_space",
    "vsock_endpoint",
]

log = logging.getLogger("nexus.agent")

SYS_VIRTIO_PORTS: Final = "/sys/class/virtio-ports"
DEV_ROOT: Final = "/dev"
READ_CHUNK_BYTES: Final = 1024 * 1024
HOST_POLL_S: Final = 0.1
RETRY_S: Final = 0.2
LISTEN_BACKLOG: Final = 8
DEV_VSOCK: Final = "/dev/vsock"
WRITE_STALL_S: Final = 30.0

_GONE: Final = select.POLLHUP | select.POLLERR | select.POLLNVAL


class PeerGone(ConnectionError):
    """The host side of a stream is gone (or stopped reading for ``WRITE_STALL_S``)."""


class Stream(Protocol):
    def read(self, timeout_s: float) -> bytes | None: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class Endpoint(Protocol):
    description: str
    reconnects: bool

    def connect(self, stop: threading.Event) -> Stream | None: ...

    def close(self) -> None: ...


class FdStream:
    """A stream over one or two file descriptors (non-blocking or blocking) using ``select.poll``."""

    def __init__(self, read_fd: int, write_fd: int, on_close: Callable[[], None] | None = None) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._on_close = on_close
        self._read_poll = select.poll()
        self._read_poll.register(read_fd, select.POLLIN)
        self._write_poll = select.poll()  # separate object: poll() must not run concurrently on one
        self._write_poll.register(write_fd, select.POLLOUT)
        self._closed = False

    def read(self, timeout_s: float) -> bytes | None:
        events = self._read_poll.poll(int(timeout_s * 1000))
        if not events:
            return None
        revents = events[0][1]
        if revents & select.POLLNVAL:
            return b""
        try:
            return os.read(self._read_fd, READ_CHUNK_BYTES)
        except BlockingIOError:
            # POLLHUP without data and without EOF would spin; treat it as the peer leaving.
            return b"" if revents & _GONE else None
        except OSError as exc:
            log.info("read failed: %s", exc)
            return b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        stalled_since: float | None = None
        while view:
            try:
                written = os.write(self._write_fd, view)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise PeerGone(f"write failed: {exc}") from exc
            if written:
                view = view[written:]
                stalled_since = None
                continue
            now = time.monotonic()
            if stalled_since is None:
                stalled_since = now
            elif now - stalled_since > WRITE_STALL_S:
                raise PeerGone(f"host has not read for {WRITE_STALL_S:.0f}s")
            events = self._write_poll.poll(1000)
            revents = events[0][1] if events else 0
            if revents & _GONE and not revents & select.POLLOUT:
                raise PeerGone("host disconnected")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()


SocketAddress = Any
"""A ``socket.connect``/``bind`` address: a path for AF_UNIX, ``(cid, port)`` for AF_VSOCK."""


def _unix_socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def _socket_stream(sock: socket.socket) -> FdStream:
    sock.setblocking(False)
    return FdStream(sock.fileno(), sock.fileno(), on_close=sock.close)


@dataclass(frozen=True, slots=True)
class SocketSpace:
    """Where vsock ports live: which socket to make, what to dial for a host port, what to bind for ours.

    ``unix_paths`` says the addresses are filesystem paths (bound paths are then replaced and removed)."""

    name: str
    family: int
    host_address: Callable[[int], SocketAddress]
    listen_address: Callable[[int], SocketAddress]
    unix_paths: bool = False

    def make_socket(self) -> socket.socket:
        return socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)


def _vsock_host(port: int) -> SocketAddress:
    return (HOST_CID, port)


def _vsock_any(port: int) -> SocketAddress:
    return (socket.VMADDR_CID_ANY, port)


VSOCK_SPACE: Final = SocketSpace("vsock", socket.AF_VSOCK, _vsock_host, _vsock_any)
"""The real thing, inside a guest: dial ``(HOST_CID, port)``, listen on ``(VMADDR_CID_ANY, port)``."""


def unix_space(prefix: str) -> SocketSpace:
    """vsock emulated with Unix sockets: host port P is dialled at ``<prefix>_<P>`` (the path Firecracker's
    hybrid vsock connects to on the host, so a host ``GuestListener`` with ``uds_path=prefix`` accepts it) and
    guest port P listens at ``<prefix>.guest_<P>`` (what a fake vsock muxer forwards ``CONNECT P`` to)."""
    return SocketSpace(
        f"vsock-unix:{prefix}",
        socket.AF_UNIX,
        lambda port: f"{prefix}_{port}",
        lambda port: f"{prefix}.guest_{port}",
        unix_paths=True,
    )


def vsock_endpoint(port_name: str, space: SocketSpace = VSOCK_SPACE) -> SocketDialEndpoint | SocketListenEndpoint:
    """The vsock endpoint of an agent port: control and gateway dial the host, MCP listens for it."""
    dialled = {CONTROL_PORT_NAME: CONTROL_VSOCK_PORT, GATEWAY_PORT_NAME: GATEWAY_VSOCK_PORT}
    if port_name in dialled:
        port = dialled[port_name]
        return SocketDialEndpoint(space.host_address(port), f"{space.name} host:{port}", space.make_socket)
    if port_name == MCP_PORT_NAME:
        address = space.listen_address(MCP_VSOCK_PORT)
        unlink = address if space.unix_paths else None
        return SocketListenEndpoint(address, f"{space.name} listen:{MCP_VSOCK_PORT}", space.make_socket, unlink)
    raise ValueError(f"no vsock port for {port_name!r}")


def choose_transport(
    requested: str,
    *,
    sys_root: str = SYS_VIRTIO_PORTS,
    dev_vsock: str = DEV_VSOCK,
    image_json: str | None = None,
) -> str:
    """``virtio-serial`` or ``vsock`` for a ``requested`` transport (``auto`` decides here).

    auto: our named virtio-serial port exists → virtio-serial (a vsock module alone creates /dev/vsock, even
    without a vsock device); else ``dev_vsock`` exists and so does the image manifest → vsock; else
    virtio-serial (its port may still appear). The manifest check keeps a plain ``python3 -m nexus.agent`` run
    on a host from dialling the host's own vsock, which may reach an outer hypervisor."""
    if requested != "auto":
        return requested
    if find_virtio_port(CONTROL_PORT_NAME, sys_root) is not None:
        return "virtio-serial"
    in_image = image_json is None or os.path.exists(image_json)
    return "vsock" if os.path.exists(dev_vsock) and in_image else "virtio-serial"


class SocketDialEndpoint:
    """Connects to a listening socket at ``address`` (retrying every ``RETRY_S``); one session per connection."""

    reconnects = True

    def __init__(self, address: SocketAddress, description: str, make_socket: Callable[[], socket.socket]) -> None:
        self.address = address
        self.description = description
        self._make_socket = make_socket

    def connect(self, stop: threading.Event) -> Stream | None:
        logged = False
        while not stop.is_set():
            sock = self._make_socket()
            try:
                sock.connect(self.address)
            except OSError as exc:
                sock.close()
                if not logged:
                    log.info("%s: waiting for the host (%s)", self.description, exc.strerror or exc)
                    logged = True
                stop.wait(RETRY_S)
                continue
            return _socket_stream(sock)
        return None

    def close(self) -> None:
        pass


class SocketListenEndpoint:
    """Listens at ``address`` (bound on first use); each accepted connection is one session.

    Thread-safe, so several ``PortRunner`` threads may share one endpoint and serve connections side by side.
    ``unlink`` is the Unix socket path this endpoint binds (replaced if stale, removed on close)."""

    reconnects = True

    def __init__(
        self,
        address: SocketAddress,
        description: str,
        make_socket: Callable[[], socket.socket],
        unlink: str | None = None,
    ) -> None:
        self.address = address
        self.description = description
        self._make_socket = make_socket
        self._unlink = unlink
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._bind_failed = False

    def _listener(self) -> socket.socket | None:
        with self._lock:
            if self._sock is not None:
                return self._sock
            sock = self._make_socket()
            try:
                if self._unlink is not None and stat.S_ISSOCK(_mode(self._unlink)):
                    os.unlink(self._unlink)
                sock.bind(self.address)
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if not self._bind_failed:
                    log.warning("%s: cannot listen (%s); retrying", self.description, exc.strerror or exc)
                    self._bind_failed = True
                return None
            log.info("%s: listening", self.description)
            self._sock = sock
            return sock

    def connect(self, stop: threading.Event) -> Stream | None:
        while not stop.is_set():
            listener = self._listener()
            if listener is None:
                stop.wait(RETRY_S)
                continue
            try:
                poller = select.poll()
                poller.register(listener.fileno(), select.POLLIN)  # ValueError once another thread closed it
                if not poller.poll(int(HOST_POLL_S * 1000)):
                    continue
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another runner took it
            except (OSError, ValueError) as exc:
                if not stop.is_set():
                    log.warning("%s: accept failed (%s)", self.description, exc)
                    stop.wait(RETRY_S)
                continue
            return _socket_stream(conn)
        return None

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is None:
                return
            sock.close()
            if self._unlink is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._unlink)


class UnixSocketEndpoint(SocketDialEndpoint):
    """Connects to a listening Unix socket (the host side, as QEMU's ``server=on`` chardev would be)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, f"unix:{path}", _unix_socket)
        self.path = path


class CharDeviceEndpoint:
    """A virtio-serial port device: opened once, sessions follow the host's connection state."""

    reconnects = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = path
        self._fd: int | None = None

    def _open(self, stop: threading.Event) -> int | None:
        logged = False
        while self._fd is None and not stop.is_set():
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
                log.info("%s: opened", self.path)
            except OSError as exc:
                if not logged:
                    log.warning("%s: cannot open (%s); retrying", self.path, exc.strerror or exc)
                    logged = True
                stop.wait(1.0)
        return self._fd

    def connect(self, stop: threading.Event) -> Stream | None:
        fd = self._open(stop)
        if fd is None:
            return None
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLOUT)
        logged = False
        while not stop.is_set():
            revents = dict(poller.poll(0)).get(fd, 0)
            if revents & select.POLLNVAL:  # someone closed our fd: open again
                self._fd = None
                return self.connect(stop)
            if not revents & select.POLLHUP:
                return FdStream(fd, fd)  # the endpoint keeps the fd across sessions
            if not logged:
                log.info("%s: waiting for the host to connect", self.path)
                logged = True
            stop.wait(HOST_POLL_S)
        return None

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def find_virtio_port(name: str, sys_root: str = SYS_VIRTIO_PORTS, dev_root: str = DEV_ROOT) -> str | None:
    """``/dev/vportNpM`` of the virtio-serial port named ``name``, or None if there is none (yet)."""
    try:
        ports = sorted(Path(sys_root).iterdir())
    except OSError:
        return None
    for port in ports:
        try:
            port_name = (port / "name").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if port_name == name:
            return os.path.join(dev_root, port.name)
    return None


class VirtioPortEndpoint:
    """The virtio-serial port with a given name, waited for until the device shows up."""

    reconnects = True

    def __init__(self, name: str, sys_root: str = SYS_VIRTIO_PORTS, dev_root: str = DEV_ROOT) -> None:
        self.name = name
        self.description = f"virtio-serial:{name}"
        self._sys_root = sys_root
        self._dev_root = dev_root
        self._device: CharDeviceEndpoint | None = None

    def connect(self, stop: threading.Event) -> Stream | None:
        logged = False
        while self._device is None and not stop.is_set():
            path = find_virtio_port(self.name, self._sys_root, self._dev_root)
            if path is not None:
                log.info("%s: found at %s", self.description, path)
                self._device = CharDeviceEndpoint(path)
                break
            if not logged:
                log.warning("%s: no such port under %s yet; retrying", self.description, self._sys_root)
                logged = True
            stop.wait(1.0)
        return None if self._device is None else self._device.connect(stop)

    def close(self) -> None:
        if self._device is not None:
            self._device.close()


class PathEndpoint:
    """``--control PATH``: a Unix socket is connected to, anything else is opened as a device."""

    reconnects = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = path
        self._inner: UnixSocketEndpoint | CharDeviceEndpoint | None = None

    def connect(self, stop: threading.Event) -> Stream | None:
        while self._inner is None and not stop.is_set():
            try:
                mode = os.stat(self.path).st_mode
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    log.warning("%s: %s", self.path, exc.strerror or exc)
                stop.wait(RETRY_S)
                continue
            self._inner = UnixSocketEndpoint(self.path) if stat.S_ISSOCK(mode) else CharDeviceEndpoint(self.path)
        return None if self._inner is None else self._inner.connect(stop)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


class StdioEndpoint:
    """stdin/stdout as one session; the stream ends (and is not reopened) when stdin closes."""

    reconnects = False
    description = "stdio"

    def __init__(self) -> None:
        self._used = False

    def connect(self, stop: threading.Event) -> Stream | None:
        if self._used or stop.is_set():
            return None
        self._used = True
        return FdStream(0, 1)

    def close(self) -> None:
        pass
