"""Agent entry point: read the options, open the ports, serve until SIGTERM/SIGINT.

``main`` changes to ``/`` first, so relative paths in tool calls and run_command's default cwd are ``/``.

Wiring only: endpoints from ``transport`` (virtio-serial or vsock, see ``choose_transport``), services from
``control`` and ``mcp_server``, one ``PortRunner`` thread per port - ``MCP_LISTEN_SESSIONS`` of them sharing a
listening (vsock) MCP endpoint, so a second host connection is served rather than left hanging in the
backlog - and one thread pool for tool calls. The agent exits when stopped, or
when the control and MCP ports have ended for good (only a stdio port ends on its own).

The gateway (``nexus.agent.gateway``) is optional and never stops the agent: its port is served when the VM
has one, and its local endpoints (``gateway_unix``, ``gateway_http``) open once the stream to nexusd has come
up a first time - so a VM whose host never answers on it has no socket claiming a gateway.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from nexus import __version__
from nexus.agent.config import AgentConfig, load_config
from nexus.agent.control import ControlService
from nexus.agent.drives import Freezer, mount_drives
from nexus.agent.gateway import GatewayHub
from nexus.agent.gateway_http import HttpFront
from nexus.agent.gateway_unix import UnixFront
from nexus.agent.identity import make_hello, read_image_id
from nexus.agent.mcp_server import McpService
from nexus.agent.session import PortRunner
from nexus.agent.tools import Toolbox
from nexus.agent.transport import (
    VSOCK_SPACE,
    Endpoint,
    PathEndpoint,
    SocketListenEndpoint,
    SocketSpace,
    StdioEndpoint,
    VirtioPortEndpoint,
    choose_transport,
    find_virtio_port,
    unix_space,
    vsock_endpoint,
)
from nexus.protocol import CONTROL_PORT_NAME, GATEWAY_PORT_NAME, MCP_PORT_NAME

__all__ = ["MCP_LISTEN_SESSIONS", "endpoint_for", "full_path", "gateway_endpoint", "main", "run", "vsock_space_for"]

log = logging.getLogger("nexus.agent")

_JOIN_S = 5.0
MCP_LISTEN_SESSIONS = 4


def endpoint_for(spec: str | None, port_name: str, vsock: SocketSpace | None = None) -> Endpoint | None:
    """The endpoint for a ``--control``/``--mcp`` value (None = the port by name: on ``vsock`` if given, else
    the virtio-serial port)."""
    if spec is None:
        return VirtioPortEndpoint(port_name) if vsock is None else vsock_endpoint(port_name, vsock)
    if spec == "none":
        return None
    if spec == "stdio":
        return StdioEndpoint()
    return PathEndpoint(spec)


def vsock_space_for(config: AgentConfig) -> SocketSpace | None:
    """Where the default ports live: None for virtio-serial, else the vsock space (Unix-emulated for tests)."""
    if config.vsock_unix is not None:
        return unix_space(config.vsock_unix)
    if choose_transport(config.transport, image_json=config.image_json) == "vsock":
        return VSOCK_SPACE
    return None


def gateway_endpoint(config: AgentConfig, vsock: SocketSpace | None) -> Endpoint | None:
    """The gateway stream's endpoint, or None when there is none to serve (logged)."""
    if config.gateway is not None:
        return endpoint_for(config.gateway, GATEWAY_PORT_NAME)
    if None not in (config.control, config.mcp):
        return None  # both ports given (a test, a debugging run): a gateway only when asked for too
    if vsock is None and find_virtio_port(GATEWAY_PORT_NAME) is None:
        # The ports of one virtio-serial device appear together, so the control port's being there decided
        # the transport and the gateway port's absence now means this VMM gave the VM none.
        log.info("gateway: no %s port in this VM; no gateway", GATEWAY_PORT_NAME)
        return None
    return endpoint_for(None, GATEWAY_PORT_NAME, vsock)


def serve_gateway_fronts(config: AgentConfig, hub: GatewayHub, stop: threading.Event) -> None:
    """Open the local endpoints once the stream first comes up; close them when ``stop`` is set."""
    while not hub.linked.wait(0.25):
        if stop.is_set():
            return
    fronts: list[UnixFront | HttpFront] = [UnixFront(config.gateway_socket, hub)]
    if config.gateway_http is not None:
        fronts.append(HttpFront(config.gateway_http, hub))
    started = []
    for front in fronts:
        try:
            front.start()
            started.append(front)
        except OSError as exc:
            log.error("gateway: cannot serve %s: %s", front.address, exc.strerror or exc)
    stop.wait()
    for front in started:
        front.close()


def run(config: AgentConfig, stop: threading.Event, wake: threading.Event | None = None) -> int:
    """Serve until ``stop`` is set or every port has ended; returns the exit status.

    ``wake`` (set together with ``stop`` by a signal handler) makes the main loop look at once.
    """
    wake = wake or threading.Event()
    for warning in config.warnings:
        log.warning("%s", warning)
    image_id = read_image_id(config.image_json)
    log.info("nexus-agent %s starting (image %s, heartbeat %.3gs)", __version__, image_id, config.heartbeat_s)

    vsock: SocketSpace | None = None
    if None in (config.control, config.mcp):  # some port is the default one: on which transport?
        vsock = vsock_space_for(config)
        log.info("default ports on %s", "virtio-serial" if vsock is None else vsock.name)
    control_ep = endpoint_for(config.control, CONTROL_PORT_NAME, vsock)
    mcp_ep = endpoint_for(config.mcp, MCP_PORT_NAME, vsock)
    gateway_ep = gateway_endpoint(config, vsock)
    if control_ep is None and mcp_ep is None and gateway_ep is None:
        log.error("every port is disabled; nothing to do")
        return 2

    freezer = Freezer(mount_drives(config.mounts)) if config.mounts is not None else None
    executor = ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="tool")
    toolbox = Toolbox(image_id, config.process_dir)
    mcp = McpService(toolbox, executor)
    runners: list[PortRunner] = []
    if control_ep is not None:
        control = ControlService(lambda: make_hello(image_id), config.heartbeat_s, stop, freezer)
        runners.append(PortRunner("control", control_ep, control, stop, on_exit=wake.set))
    if mcp_ep is not None:
        sessions = MCP_LISTEN_SESSIONS if isinstance(mcp_ep, SocketListenEndpoint) else 1
        for i in range(sessions):
            runners.append(PortRunner("mcp" if i == 0 else f"mcp.{i}", mcp_ep, mcp, stop, on_exit=wake.set))
    # The gateway's threads are apart from ``runners``: only the control and MCP ports end the agent.
    gateway: list[threading.Thread] = []
    if gateway_ep is not None:
        hub = GatewayHub()
        gateway.append(PortRunner("gateway", gateway_ep, hub, stop))
        fronts = threading.Thread(
            target=serve_gateway_fronts, args=(config, hub, stop), name="gateway-fronts", daemon=True
        )
        gateway.append(fronts)
    for thread in [*runners, *gateway]:
        thread.start()
    try:
        while True:
            wake.clear()
            if stop.is_set() or (runners and all(runner.finished.is_set() for runner in runners)):
                break
            wake.wait(0.5)
    finally:
        stop.set()
        mcp.cancel_all()
        toolbox.terminals.close_all()
        executor.shutdown(wait=False, cancel_futures=True)
        for thread in [*runners, *gateway]:
            thread.join(_JOIN_S)
    log.info("nexus-agent stopped")
    return 0


STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def full_path(path: str) -> str:
    """``path`` with the standard directories it lacks added: an init may start the agent with a short PATH
    (BusyBox's has no /usr/local/bin, where nexus-mcp and hand-installed tools live), and run_command inherits it."""
    have = [d for d in path.split(":") if d]
    return ":".join([*have, *(d for d in STANDARD_PATH if d not in have)])


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=config.log_level.upper(),
        format="nexus-agent[%(process)d] %(levelname)s %(message)s",
    )
    os.chdir("/")  # a daemon's working directory: relative tool paths and run_command's default cwd
    os.environ["PATH"] = full_path(os.environ.get("PATH", ""))
    stop = threading.Event()
    wake = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run(config, stop, wake)
