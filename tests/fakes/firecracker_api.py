"""A fake Firecracker API for tests: HTTP/1.1 on a Unix socket, bodies checked against the v1.16 OpenAPI spec.

- :class:`FirecrackerModel` is the API as a state machine: ``handle(method, target, raw_body) -> Reply``. It
  validates every body against the spec's definition for that operation (Draft 4; with ``deny_unknown_fields``,
  the default, unknown properties are refused as Firecracker's serde structs do, though the spec does not say so),
  enforces Firecracker's ordering rules (pre-boot resources and ``InstanceStart`` refused after start,
  ``InstanceStart`` needs a boot source, ``PATCH /vm`` and ``SendCtrlAltDel`` only after start, a snapshot is
  created only while paused and loaded only into a process given nothing but a logger and metrics), records every
  request, and lets a test inject faults. Subclasses can hook ``on_vsock``, ``on_instance_start``,
  ``on_ctrl_alt_del``, ``on_vm_state``, ``on_snapshot_create`` and ``on_snapshot_load``.
- :class:`FakeFirecracker` serves a model on a Unix socket with asyncio (keep-alive, Content-Length bodies).

Refusals are ``400 {"fault_message": ...}`` with Firecracker's wording where it is known. The stand-in for the
binary, with a guest behind the hybrid vsock, is :mod:`tests.fakes.firecracker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.fakes.firecracker_spec import SpecValidator

NOT_AFTER_START = "The requested operation is not supported after starting the microVM."
NOT_BEFORE_START = "The requested operation is not supported before starting the microVM."
NO_KERNEL = "Start microvm error: Cannot start microvm without kernel configuration."
ID_MISMATCH = "The id from the path does not match the id from the body!"
INVALID_ID = "API Resource IDs can only contain alphanumeric characters and underscores."
METRICS_AGAIN = (
    "Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not "
    "allowed."
)
DESERIALIZE = "An error occurred when deserializing the json body of a request: {}."
# Snapshots, in v1.12.1's wording (seen from the real binary).
CREATE_RUNNING = (
    "Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while "
    "running"
)
DIFF_UNTRACKED = (
    "The requested operation is not supported: Diff snapshots are not allowed on uVMs with dirty page tracking "
    "disabled."
)
LOAD_AFTER_CONFIG = (
    "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."
)
ONE_MEM_SOURCE = "Exactly one of mem_file_path or mem_backend must be given."  # the fake's words (spec: "exactly one")
_ID_RE = re.compile(r"^[A-Za-z0-9_]+$")

NOT_STARTED, RUNNING, PAUSED = "Not started", "Running", "Paused"
DEFAULT_MACHINE = {"vcpu_count": 1, "mem_size_mib": 128, "smt": False, "track_dirty_pages": False, "huge_pages": "None"}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any = None  # JSON-able; None → no body

    @classmethod
    def fault(cls, message: str, status: int = 400) -> Reply:
        return cls(status, {"fault_message": message})


NO_CONTENT = Reply(204)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as received. ``body`` is the decoded JSON (raw text if it was not JSON; None if empty)."""

    method: str
    path: str
    body: Any
    status: int
    fault_message: str | None = None


@dataclass(slots=True)
class Fault:
    """Answer ``method path`` (and, for /actions, only ``action_type``) with ``fault_message``, ``times`` times."""

    method: str
    path: str
    fault_message: str
    status: int = 400
    action_type: str | None = None
    times: int = 1

    def matches(self, method: str, path: str, body: Any) -> bool:
        if self.times == 0 or method != self.method or path != self.path:
            return False
        return self.action_type is None or (isinstance(body, dict) and body.get("action_type") == self.action_type)


Handler = Callable[[Any, dict[str, str]], Reply]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    spec_path: str  # as in the spec, e.g. /drives/{drive_id}
    pattern: re.Pattern[str]
    handler: Handler
    preboot_only: bool = False


def _pattern(spec_path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]*)", spec_path) + "$")


@dataclass
class FirecrackerModel:
    """The API's behaviour, without any transport."""

    validator: SpecValidator
    instance_id: str = "anonymous-instance"
    vmm_version: str = "1.16.1"
    state: str = NOT_STARTED
    machine_config: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MACHINE))
    boot_source: dict[str, Any] | None = None
    drives: dict[str, dict[str, Any]] = field(default_factory=dict)
    network_interfaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    vsock: dict[str, Any] | None = None
    logger: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    ctrl_alt_del_count: int = 0
    boot_configured: bool = False  # a boot-specific resource was PUT: a snapshot can no longer be loaded
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.add_route("GET", "/", self._describe)
        self.add_route("GET", "/machine-config", lambda _b, _p: Reply(200, dict(self.machine_config)))
        self.add_route("GET", "/vm/config", self._vm_config)
        self.add_route("GET", "/version", lambda _b, _p: Reply(200, {"firecracker_version": self.vmm_version}))
        self.add_route("PUT", "/machine-config", self._put_machine_config, preboot_only=True)
        self.add_route("PUT", "/boot-source", self._put_boot_source, preboot_only=True)
        self.add_route("PUT", "/drives/{drive_id}", self._put_drive, preboot_only=True)
        self.add_route("PUT", "/network-interfaces/{iface_id}", self._put_iface, preboot_only=True)
        self.add_route("PUT", "/vsock", self._put_vsock, preboot_only=True)
        self.add_route("PUT", "/logger", self._put_logger, preboot_only=True)
        self.add_route("PUT", "/metrics", self._put_metrics, preboot_only=True)
        self.add_route("PUT", "/actions", self._put_action)
        self.add_route("PATCH", "/vm", self._patch_vm)
        self.add_route("PUT", "/snapshot/create", self._create_snapshot)
        self.add_route("PUT", "/snapshot/load", self._load_snapshot, preboot_only=True)

    # --- test-facing helpers -----------------------------------------------------------------------------------

    def add_route(self, method: str, spec_path: str, handler: Handler, *, preboot_only: bool = False) -> None:
        """Serve (or replace) ``method spec_path``; the body is validated against the spec before ``handler``."""
        self.routes = [r for r in self.routes if (r.method, r.spec_path) != (method, spec_path)]
        self.routes.append(Route(method, spec_path, _pattern(spec_path), handler, preboot_only))

    def inject_fault(
        self,
        method: str,
        path: str,
        fault_message: str,
        *,
        status: int = 400,
        action_type: str | None = None,
        times: int = 1,
    ) -> Fault:
        """Refuse the next ``times`` matching (valid) requests with ``fault_message`` (``times=-1``: always)."""
        fault = Fault(method, path, fault_message, status, action_type, times)
        self.faults.append(fault)
        return fault

    def fail_instance_start(self, fault_message: str, *, times: int = 1) -> Fault:
        return self.inject_fault("PUT", "/actions", fault_message, action_type="InstanceStart", times=times)

    def calls(self) -> list[str]:
        """``"METHOD /path"`` of every request, in order."""
        return [f"{r.method} {r.path}" for r in self.requests]

    def bodies(self, method: str, path: str) -> list[Any]:
        return [r.body for r in self.requests if (r.method, r.path) == (method, path)]

    @property
    def started(self) -> bool:
        return self.state != NOT_STARTED

    # --- hooks for subclasses ----------------------------------------------------------------------------------

    def on_vsock(self, body: dict[str, Any]) -> None:
        """Called after a valid ``PUT /vsock`` was accepted."""

    def on_instance_start(self) -> None:
        """Called after ``InstanceStart`` was accepted (state is already ``Running``)."""

    def on_ctrl_alt_del(self) -> None:
        """Called after ``SendCtrlAltDel`` was accepted."""

    def on_vm_state(self, state: str) -> None:
        """Called after ``PATCH /vm`` changed the state (``Paused`` or ``Running``)."""

    def on_snapshot_create(self, body: dict[str, Any]) -> Reply:
        """Write the snapshot of a paused microVM (the model writes nothing)."""
        return NO_CONTENT

    def on_snapshot_load(self, body: dict[str, Any]) -> Reply:
        """Restore from a snapshot into a fresh process (the model reads nothing); then the state is set."""
        return NO_CONTENT

    # --- dispatch ----------------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, raw: bytes) -> Reply:
        path = target.split("?", 1)[0]
        body: Any = None
        reply = self._dispatch(method, path, raw)
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        fault = reply.body.get("fault_message") if isinstance(reply.body, dict) and reply.status >= 400 else None
        self.requests.append(RecordedRequest(method, path, body, reply.status, fault))
        return reply

    def _dispatch(self, method: str, path: str, raw: bytes) -> Reply:
        route, params = self._route(method, path)
        if route is None:
            if any(r.pattern.match(path) for r in self.routes) or self._in_spec(method, path):
                return Reply.fault(f"fake Firecracker does not implement {method} {path}.")
            return Reply.fault(f"Invalid request method and/or path: {method} {path}.")
        if any(not value or not _ID_RE.match(value) for value in params.values()):
            return Reply.fault(INVALID_ID)
        definition = self.validator.body_definition(method, route.spec_path) if method != "GET" else None
        body: Any = None
        if definition is not None:
            if not raw:
                return Reply.fault(f"Empty {method} request.")
            try:
                body = json.loads(raw)
            except ValueError as exc:
                return Reply.fault(DESERIALIZE.format(exc))
            errors = self.validator.errors(definition, body)
            if errors:
                return Reply.fault(DESERIALIZE.format(f"{definition}: " + "; ".join(errors)))
        for fault in self.faults:
            if fault.matches(method, path, body):
                fault.times -= 1
                return Reply.fault(fault.fault_message, fault.status)
        if route.preboot_only and self.started:
            return Reply.fault(NOT_AFTER_START)
        return route.handler(body, params)

    def _route(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in self.routes:
            match = route.pattern.match(path)
            if match and route.method == method:
                return route, match.groupdict()
        return None, {}

    def _in_spec(self, method: str, path: str) -> bool:
        return any(_pattern(p).match(path) and method.lower() in ops for p, ops in self.validator.spec["paths"].items())

    # --- handlers ----------------------------------------------------------------------------------------------

    def _describe(self, _body: Any, _params: dict[str, str]) -> Reply:
        info = {"app_name": "Firecracker", "id": self.instance_id, "state": self.state, "vmm_version": self.vmm_version}
        return Reply(200, info)

    def _vm_config(self, _body: Any, _params: dict[str, str]) -> Reply:
        config: dict[str, Any] = {
            "machine-config": self.machine_config,
            "drives": list(self.drives.values()),
            "network-interfaces": list(self.network_interfaces.values()),
        }
        optional = {
            "boot-source": self.boot_source,
            "vsock": self.vsock,
            "logger": self.logger,
            "metrics": self.metrics,
        }
        config.update({key: value for key, value in optional.items() if value is not None})
        return Reply(200, config)

    def _put_machine_config(self, body: dict[str, Any], _params: dict[str, str]) -> Reply:
        self.machine_config = {**DEFAULT_MACHINE, **body}
        self.boot_configured = True
        return NO_CONTENT

    def _put_boot_source(self, body: dict[str, Any], _params: dict[str, str]) -> Reply:
        self.boot_source = body
        self.boot_configured = True
        return NO_CONTENT

    def _put_drive(self, body: dict[str, Any], params: dict[str, str]) -> Reply:
        if body["drive_id"] != params["drive_id"]:
            return Reply.fault(ID_MISMATCH)
        self.drives[params["drive_id"]] = body
        self.boot_configured = True
        return NO_CONTENT

    def _put_iface(self, body: dict[str, Any], params: dict[str, str]) -> Reply:
        if body["iface_id"] != params["iface_id"]:
            return Reply.fault(ID_MISMATCH)
        self.network_interfaces[params["iface_id"]] = body
        self.boot_configured = True
        return NO_CONTENT

    def _put_vsock(self, body: dict[str, Any], _params: dict[str, str]) -> Reply:
        self.vsock = body
        self.boot_configured = True
        self.on_vsock(body)
        return NO_CONTENT

    def _put_logger(self, body: dict[str, Any], _params: dict[str, str]) -> Reply:
        self.logger = body
        return NO_CONTENT

    def _put_metrics(self, body: dict[str, Any], _params: dict[str, str]) -> Reply:
        if self.metrics is not None:
            return Reply.fault(METRICS_AGAIN)
        self.metrics = body
        return NO_CONTENT

    def _put_action(self, body: dict[str, Any], _params: dict[str, str]) -> Reply:
        action = body["action_type"]
        if action == "InstanceStart":
            if self.started:
                return Reply.fault(NOT_AFTER_START)
            if self.boot_source is None:
                return Reply.fault(NO_KERNEL)
            self.state = RUNNING
            self.on_instance_start()
        elif action == "SendCtrlAltDel":
            if not self.started:
                return Reply.fault(NOT_BEFORE_START)
            self.ctrl_alt_del_count += 1
            self.on_ctrl_alt_del()
        elif action == "FlushMetrics" and not self.started:  # v1.12.1 refuses it before start, metrics or not
            return Reply.fault(NOT_BEFORE_START)
        return NO_CONTENT

    def _create_snapshot(self, body: dict[str, Any], _params: dict[str, str]) -> Reply:
        if not self.started:
            return Reply.fault(NOT_BEFORE_START)
        if self.state != PAUSED:
            return Reply.fault(CREATE_RUNNING)
        if body.get("snapshot_type") == "Diff" and not self.machine_config.get("track_dirty_pages"):
            return Reply.fault(DIFF_UNTRACKED)
        return self.on_snapshot_create(body)

    def _load_snapshot(self, body: dict[str, Any], _params: dict[str, str]) -> Reply:
        if self.boot_configured:
            return Reply.fault(LOAD_AFTER_CONFIG)
        if ("mem_backend" in body) == ("mem_file_path" in body):
            return Reply.fault(ONE_MEM_SOURCE)
        reply = self.on_snapshot_load(body)
        if reply.status < 300:
            self.state = RUNNING if body.get("resume_vm") else PAUSED
        return reply

    def _patch_vm(self, body: dict[str, Any], _params: dict[str, str]) -> Reply:
        if not self.started:
            return Reply.fault(NOT_BEFORE_START)
        self.state = PAUSED if body["state"] == "Paused" else RUNNING
        self.on_vm_state(self.state)
        return NO_CONTENT


# --- transport ---------------------------------------------------------------------------------------------------


def _encode(reply: Reply) -> bytes:
    reason = HTTPStatus(reply.status).phrase
    head = [f"HTTP/1.1 {reply.status} {reason}", "Server: Firecracker API", "Connection: keep-alive"]
    payload = b""
    if reply.body is not None:
        payload = json.dumps(reply.body).encode()
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    elif reply.status != 204:
        head.append("Content-Length: 0")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


class FakeFirecracker:
    """Serve a :class:`FirecrackerModel` on ``socket_path``. ``async with FakeFirecracker(...) as fc``."""

    def __init__(self, socket_path: Path, model: FirecrackerModel) -> None:
        self.socket_path = socket_path
        self.model = model
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    async def __aenter__(self) -> FakeFirecracker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    key, _, value = header.decode("latin-1").partition(":")
                    headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                raw = await reader.readexactly(length) if length else b""
                writer.write(_encode(self.model.handle(method, target, raw)))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
