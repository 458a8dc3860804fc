"""The control port: hello on every (re)connection, heartbeats while connected, nexus/* requests.

On each host connection the agent writes a newline (ending any half line a previous connection left in
the host's buffer) and ``nexus/hello``, then ``nexus/heartbeat`` every ``heartbeat_s``. A heartbeat
that cannot be written drops the connection; the runner then waits for the host and says hello again.
Requests: ``nexus/hello`` (the hello params again), ``nexus/ping`` (``{"uptime_s"}``), ``nexus/echo``
(params unchanged), ``nexus/environment`` (``nexus.protocol.environment``), ``nexus/freeze`` and ``nexus/thaw``
(``nexus.protocol.drives``) and ``nexus/identity`` (``nexus.protocol.identity``), these three only in a VM nexusd
launched; anything else is -32601. Notifications from the host are ignored.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

from nexus.agent.drives import Freezer
from nexus.agent.environment import apply_environment
from nexus.agent.identity import uptime_s
from nexus.agent.reidentify import apply_identity
from nexus.agent.session import Connection, RpcService
from nexus.protocol import (
    ECHO_METHOD,
    ENVIRONMENT_METHOD,
    FREEZE_METHOD,
    HEARTBEAT_METHOD,
    HELLO_METHOD,
    IDENTITY_METHOD,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    PING_METHOD,
    THAW_METHOD,
    Heartbeat,
    Hello,
    JsonRpcError,
    Request,
    notification,
)

__all__ = ["ControlService"]

log = logging.getLogger("nexus.agent")


class ControlService(RpcService):
    def __init__(
        self, hello: Callable[[], Hello], heartbeat_s: float, stop: threading.Event, freezer: Freezer | None = None
    ) -> None:
        self._hello = hello
        self._freezer = freezer
        self._heartbeat_s = heartbeat_s
        self._stop = stop
        self._seq = itertools.count(1)
        self._seq_lock = threading.Lock()

    def opened(self, conn: Connection) -> None:
        hello = self._hello()
        if conn.send(notification(HELLO_METHOD, hello.to_params()), resync=True):
            log.info("control: hello sent (agent %s, image %s)", hello.agent_version, hello.image_id)
        threading.Thread(target=self._beat, args=(conn,), name=f"heartbeat-{conn.id}", daemon=True).start()

    def _beat(self, conn: Connection) -> None:
        while not conn.closed.wait(self._heartbeat_s) and not self._stop.is_set():
            with self._seq_lock:
                seq = next(self._seq)
            beat = Heartbeat(seq=seq, uptime_s=round(uptime_s(), 3))
            if not conn.send(notification(HEARTBEAT_METHOD, beat.to_params())):
                log.info("control: heartbeat %d not delivered", seq)
                return

    def on_request(self, conn: Connection, req: Request) -> None:
        if req.method == PING_METHOD:
            self.reply(conn, req, {"uptime_s": round(uptime_s(), 3)})
        elif req.method == ECHO_METHOD:
            self.reply(conn, req, req.params)
        elif req.method == HELLO_METHOD:
            self.reply(conn, req, self._hello().to_params())
        elif req.method == ENVIRONMENT_METHOD:
            self.reply(conn, req, apply_environment(req.params))
        elif req.method == IDENTITY_METHOD and self._freezer is not None:  # only in a VM nexusd launched
            self.reply(conn, req, apply_identity(req.params))
        elif req.method in (FREEZE_METHOD, THAW_METHOD) and self._freezer is not None:
            self._freeze_or_thaw(conn, req, self._freezer)
        else:
            raise JsonRpcError(METHOD_NOT_FOUND, f"method not found: {req.method}")

    def _freeze_or_thaw(self, conn: Connection, req: Request, freezer: Freezer) -> None:
        if req.method == THAW_METHOD:
            self.reply(conn, req, {"thawed": freezer.thaw()})
            return
        params = req.params if isinstance(req.params, dict) else {}
        timeout_s = params.get("timeout_s", 10.0)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s <= 300:
            raise JsonRpcError(INVALID_PARAMS, "timeout_s must be a number in (0, 300]")
        try:
            frozen = freezer.freeze(float(timeout_s))
        except (OSError, RuntimeError) as exc:
            raise JsonRpcError(INTERNAL_ERROR, f"cannot freeze the filesystems: {exc}") from exc
        self.reply(conn, req, {"frozen": frozen})
