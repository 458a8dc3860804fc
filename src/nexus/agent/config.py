"""Agent options: command-line flags over kernel command-line ``nexus.*`` keys over defaults.

Kernel command line (``/proc/cmdline``):
  ``nexus.heartbeat_s=2``   seconds between heartbeats on the control port
  ``nexus.log_level=info``  debug | info | warning | error
  ``nexus.transport=auto``  auto | virtio-serial | vsock (for the ports not given by ``--control``/``--mcp``;
                            auto: see ``nexus.agent.transport.choose_transport``)
  ``nexus.mounts=S:/p,...`` data drives to mount at boot, by virtio-blk serial (``nexus.protocol.drives``);
                            present (even empty) only in VMs nexusd launches: it also enables nexus/freeze

Flags (mostly for tests and debugging; a guest normally runs plain ``python3 -m nexus.agent``):
  ``--control PATH|none``   control stream: a character device or a Unix socket to connect to;
                            default: the virtio-serial port named ``org.nexus.control``, or with vsock a
                            connection to the host's port 1024
  ``--mcp PATH|stdio|none`` MCP stream, likewise (default port ``org.nexus.mcp``, or listening on vsock port
                            1025); ``stdio`` serves MCP on stdin/stdout and exits when stdin closes
  ``--gateway PATH|none``   a portal's gateway stream (``nexus.agent.gateway``), likewise (default port
                            ``org.nexus.gateway``, or with vsock a connection to the host's port 1026); served
                            when it exists, skipped (logged) when the VM has no such port
  ``--gateway-socket PATH`` the gateway's local Unix socket (default /run/nexus/gateway.sock, what nexus-mcp uses)
  ``--gateway-http A|none`` the gateway's MCP Streamable HTTP endpoint, HOST:PORT (default 127.0.0.1:7780)
  ``--process-dir PATH``    where process_start keeps its processes' records and output (default
                            /run/nexus/processes; ``nexus.agent.processes``)
  ``--transport T``         as ``nexus.transport`` (the flag wins)
  ``--vsock-unix PREFIX``   vsock emulated over Unix sockets (tests): dial host port P at ``PREFIX_<P>``,
                            listen on guest port P at ``PREFIX.guest_<P>``; implies ``--transport vsock``
  ``--heartbeat-s S``, ``--log-level L``, ``--image-json PATH`` (default /etc/nexus/image.json; its
  ``id`` is the image id), ``--max-workers N`` (concurrent tool calls, default 32),
  ``--cmdline PATH`` (default /proc/cmdline)

A bad kernel value is logged and ignored (the agent must start); a bad flag is a usage error.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_GATEWAY_HTTP",
    "DEFAULT_GATEWAY_SOCKET",
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_IMAGE_JSON",
    "TRANSPORTS",
    "AgentConfig",
    "load_config",
    "parse_kernel_cmdline",
]

log = logging.getLogger("nexus.agent")

DEFAULT_HEARTBEAT_S: Final = 2.0
DEFAULT_IMAGE_JSON: Final = "/etc/nexus/image.json"
DEFAULT_CMDLINE: Final = "/proc/cmdline"
DEFAULT_MAX_WORKERS: Final = 32
DEFAULT_GATEWAY_SOCKET: Final = "/run/nexus/gateway.sock"
DEFAULT_GATEWAY_HTTP: Final = ("127.0.0.1", 7780)
DEFAULT_PROCESS_DIR: Final = "/run/nexus/processes"
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")
TRANSPORTS: Final = ("auto", "virtio-serial", "vsock")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    control: str | None
    """None: the virtio-serial port by name; "none": disabled; else a path."""
    mcp: str | None
    """As ``control``, plus "stdio"."""
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    image_json: str = DEFAULT_IMAGE_JSON
    log_level: str = "info"
    max_workers: int = DEFAULT_MAX_WORKERS
    warnings: tuple[str, ...] = ()
    """Problems found in the kernel command line, to log once logging is set up."""
    transport: str = "auto"
    """For the default ports: one of ``TRANSPORTS``."""
    vsock_unix: str | None = None
    """vsock emulated over Unix sockets at this path prefix (tests); None: real AF_VSOCK."""
    mounts: str | None = None
    """The ``nexus.mounts`` value; None when absent (not a nexusd VM: no mounting, no freezing)."""
    gateway: str | None = None
    """As ``control``: the gateway stream to nexusd."""
    gateway_socket: str = DEFAULT_GATEWAY_SOCKET
    gateway_http: tuple[str, int] | None = DEFAULT_GATEWAY_HTTP
    """Where the gateway's Streamable HTTP endpoint listens; None: not served."""
    process_dir: str = DEFAULT_PROCESS_DIR
    """The background processes' records and output (``nexus.agent.processes``)."""


def parse_kernel_cmdline(text: str) -> dict[str, str]:
    """The ``nexus.*`` ``key=value`` pairs of a kernel command line (quotes honoured where balanced)."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    options: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key.startswith("nexus."):
            options[key] = value
    return options


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _host_port(text: str) -> tuple[str, int] | None:
    if text == "none":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or 'none': {text!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m nexus.agent", description="Nexus in-guest agent.")
    p.add_argument("--control", metavar="PATH", help="control stream: device, Unix socket or 'none'")
    p.add_argument("--mcp", metavar="PATH", help="MCP stream: device, Unix socket, 'stdio' or 'none'")
    p.add_argument("--gateway", metavar="PATH", help="gateway stream: device, Unix socket or 'none'")
    p.add_argument("--gateway-socket", default=DEFAULT_GATEWAY_SOCKET, help="the gateway's local Unix socket")
    p.add_argument(
        "--gateway-http",
        type=_host_port,
        default=DEFAULT_GATEWAY_HTTP,
        metavar="HOST:PORT",
        help="the gateway's loopback Streamable HTTP endpoint, or 'none'",
    )
    p.add_argument("--process-dir", default=DEFAULT_PROCESS_DIR, help="background processes' records and output")
    p.add_argument("--heartbeat-s", type=_positive_float, help="seconds between heartbeats")
    p.add_argument("--image-json", default=DEFAULT_IMAGE_JSON, help="image manifest (its 'id' is reported)")
    p.add_argument("--log-level", choices=_LOG_LEVELS)
    p.add_argument("--max-workers", type=int, default=DEFAULT_MAX_WORKERS, help="concurrent tool calls")
    p.add_argument("--cmdline", default=DEFAULT_CMDLINE, help="kernel command line to read nexus.* from")
    p.add_argument("--transport", choices=TRANSPORTS, help="transport of the default ports (default: auto)")
    p.add_argument("--vsock-unix", metavar="PREFIX", help="vsock over Unix sockets at PREFIX_<port> (tests)")
    return p


def load_config(argv: Sequence[str] | None = None) -> AgentConfig:
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.max_workers < 1:
        parser.error("--max-workers must be at least 1")
    for option in ("control", "gateway"):
        if getattr(ns, option) == "stdio":
            parser.error(f"--{option} cannot be stdio")
    warnings: list[str] = []
    try:
        with open(ns.cmdline, encoding="utf-8", errors="replace") as f:
            kernel = parse_kernel_cmdline(f.read())
    except OSError as exc:
        kernel = {}
        warnings.append(f"cannot read {ns.cmdline}: {exc.strerror or exc}")

    heartbeat_s = DEFAULT_HEARTBEAT_S
    if "nexus.heartbeat_s" in kernel:
        try:
            heartbeat_s = _positive_float(kernel["nexus.heartbeat_s"])
        except argparse.ArgumentTypeError as exc:
            warnings.append(f"ignoring nexus.heartbeat_s: {exc}")
    if ns.heartbeat_s is not None:
        heartbeat_s = ns.heartbeat_s

    log_level = "info"
    kernel_level = kernel.get("nexus.log_level", "").lower()
    if kernel_level in _LOG_LEVELS:
        log_level = kernel_level
    elif kernel_level:
        warnings.append(f"ignoring nexus.log_level={kernel_level!r}; expected one of {', '.join(_LOG_LEVELS)}")
    if ns.log_level is not None:
        log_level = ns.log_level

    transport = "auto"
    kernel_transport = kernel.get("nexus.transport", "").lower()
    if kernel_transport in TRANSPORTS:
        transport = kernel_transport
    elif kernel_transport:
        warnings.append(f"ignoring nexus.transport={kernel_transport!r}; expected one of {', '.join(TRANSPORTS)}")
    if ns.transport is not None:
        transport = ns.transport
    if ns.vsock_unix is not None:
        if ns.transport not in (None, "vsock"):
            parser.error("--vsock-unix needs --transport vsock (or none)")
        transport = "vsock"

    return AgentConfig(
        control=ns.control,
        mcp=ns.mcp,
        heartbeat_s=heartbeat_s,
        image_json=ns.image_json,
        log_level=log_level,
        max_workers=ns.max_workers,
        warnings=tuple(warnings),
        transport=transport,
        vsock_unix=ns.vsock_unix,
        mounts=kernel.get("nexus.mounts"),
        gateway=ns.gateway,
        gateway_socket=ns.gateway_socket,
        gateway_http=ns.gateway_http,
        process_dir=ns.process_dir,
    )
