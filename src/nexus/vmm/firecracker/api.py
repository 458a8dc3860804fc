"""A typed async client for the Firecracker API on its Unix socket (httpx over ``AsyncHTTPTransport(uds=...)``).

One method per resource; bodies come from the pure builders in :mod:`nexus.vmm.firecracker.config`. Every
refusal becomes :class:`nexus.domain.DriverError` carrying Firecracker's ``fault_message`` verbatim
(``Firecracker refused PUT /boot-source: <fault_message>``), and so does a socket that cannot be reached or a
call that times out. This module does not start Firecracker, wait for its socket to appear, or decide the
order of calls (see :func:`nexus.vmm.firecracker.config.preboot_requests`).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType

import httpx

from nexus.domain.errors import DriverError, Invalid
from nexus.vmm.firecracker.config import (
    Action,
    ApiRequest,
    BootSource,
    Drive,
    InstanceInfo,
    JsonBody,
    Logger,
    MachineConfig,
    Metrics,
    NetworkInterface,
    SnapshotFiles,
    SnapshotLoad,
    VmRunState,
    Vsock,
    action_body,
    boot_source_body,
    drive_body,
    drive_path,
    instance_info_from_body,
    logger_body,
    machine_config_body,
    machine_config_from_body,
    metrics_body,
    network_interface_body,
    network_interface_path,
    snapshot_create_body,
    snapshot_load_body,
    vm_state_body,
    vsock_body,
)

DEFAULT_TIMEOUT_S = 5.0


class FirecrackerApi:
    """One connection pool to one Firecracker API socket. Use as ``async with FirecrackerApi(path) as api``."""

    def __init__(self, socket_path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://localhost",
            timeout=timeout_s,
            headers={"Accept": "application/json"},
        )

    async def __aenter__(self) -> FirecrackerApi:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- the one place that speaks HTTP ------------------------------------------------------------------------

    async def call(
        self, method: str, path: str, body: JsonBody | None = None, *, timeout_s: float | None = None
    ) -> object:
        """Send one request; return the decoded JSON answer (``None`` for 204). Refusals raise DriverError.
        ``timeout_s`` replaces the client's timeout for a call that moves the guest's memory."""
        what = f"{method} {path}"
        content = None if body is None else json.dumps(body).encode()
        headers = {} if content is None else {"Content-Type": "application/json"}
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else httpx.Timeout(timeout_s)
        try:
            response = await self._client.request(method, path, content=content, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise DriverError(f"Firecracker did not answer {what} in time (socket {self.socket_path})") from exc
        except httpx.HTTPError as exc:
            raise DriverError(f"cannot reach the Firecracker API at {self.socket_path} for {what}: {exc}") from exc
        if response.is_success:
            return _decode(response) if response.content else None
        raise DriverError(f"Firecracker refused {what}: {_fault(response)}")

    async def send(self, request: ApiRequest) -> object:
        """Send a prepared :class:`ApiRequest` (for example from ``preboot_requests``)."""
        return await self.call(request.method, request.path, request.body)

    # --- pre-boot resources ------------------------------------------------------------------------------------

    async def put_machine_config(self, cfg: MachineConfig) -> None:
        await self.call("PUT", "/machine-config", machine_config_body(cfg))

    async def put_boot_source(self, boot: BootSource) -> None:
        await self.call("PUT", "/boot-source", boot_source_body(boot))

    async def put_drive(self, drive: Drive) -> None:
        await self.call("PUT", drive_path(drive.drive_id), drive_body(drive))

    async def put_network_interface(self, iface: NetworkInterface) -> None:
        await self.call("PUT", network_interface_path(iface.iface_id), network_interface_body(iface))

    async def put_vsock(self, vsock: Vsock) -> None:
        await self.call("PUT", "/vsock", vsock_body(vsock))

    async def put_logger(self, logger: Logger) -> None:
        await self.call("PUT", "/logger", logger_body(logger))

    async def put_metrics(self, metrics: Metrics) -> None:
        await self.call("PUT", "/metrics", metrics_body(metrics))

    # --- actions and state -------------------------------------------------------------------------------------

    async def instance_start(self) -> None:
        await self.call("PUT", "/actions", action_body(Action.INSTANCE_START))

    async def send_ctrl_alt_del(self) -> None:
        await self.call("PUT", "/actions", action_body(Action.SEND_CTRL_ALT_DEL))

    async def pause(self) -> None:
        await self.call("PATCH", "/vm", vm_state_body(VmRunState.PAUSED))

    async def resume(self) -> None:
        await self.call("PATCH", "/vm", vm_state_body(VmRunState.RESUMED))

    # --- snapshots ----------------------------------------------------------------------------------------------

    async def create_snapshot(self, files: SnapshotFiles, *, timeout_s: float) -> None:
        """A full snapshot of a paused microVM (Firecracker writes the whole guest memory before it answers)."""
        await self.call("PUT", "/snapshot/create", snapshot_create_body(files), timeout_s=timeout_s)

    async def load_snapshot(self, load: SnapshotLoad, *, timeout_s: float) -> None:
        await self.call("PUT", "/snapshot/load", snapshot_load_body(load), timeout_s=timeout_s)

    # --- queries -----------------------------------------------------------------------------------------------

    async def describe_instance(self) -> InstanceInfo:
        body = _object(await self.call("GET", "/"), "GET /")
        try:
            return instance_info_from_body(body)
        except Invalid as exc:
            raise DriverError(exc.message) from exc

    async def get_machine_config(self) -> MachineConfig:
        body = _object(await self.call("GET", "/machine-config"), "GET /machine-config")
        try:
            return machine_config_from_body(body)
        except Invalid as exc:
            raise DriverError(exc.message) from exc


def _decode(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError as exc:
        what = f"{response.request.method} {response.request.url.path}"
        raise DriverError(f"Firecracker answered {what} with a body that is not JSON: {response.text[:200]!r}") from exc


def _fault(response: httpx.Response) -> str:
    """The ``fault_message`` of an error answer, verbatim; else the status and whatever body there was."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("fault_message"), str):
        return str(body["fault_message"])
    return f"HTTP {response.status_code} {response.text[:200]!r}"


def _object(body: object, what: str) -> dict[str, object]:
    if not isinstance(body, dict):
        raise DriverError(f"Firecracker answered {what} with {body!r}, not a JSON object")
    return {str(k): v for k, v in body.items()}
