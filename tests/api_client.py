"""``NexusClient``: the raw REST API as dicts, for tests that check the wire itself (status codes, JSON shapes, NDJSON
events). Product code and users have the typed SDK (``nexus.sdk``); this is its untyped twin, kept for tests only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from nexus.client import Connection, DaemonUnreachable, unreachable
from nexus.client.client import error_from_response, segment
from nexus.domain import ERRORS_BY_CODE, NexusError


class NexusClient:
    def __init__(
        self,
        socket_path: Path | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        ca_file: Path | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        """Talk to nexusd over ``socket_path`` (default), or over ``url`` (TCP, ``https://`` for TLS, its certificate
        checked against ``ca_file`` when given, else the system's CAs) with a bearer ``token``."""
        connection = Connection(socket_path, url, token, ca_file)
        self._where = connection.where
        self._http = connection.sync_client(timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NexusClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; the response when it succeeded. Raises NexusError subclasses."""
        try:
            response = self._http.request(method, path, **kwargs)
        except (
            httpx.ConnectError,
            httpx.ReadError,
            httpx.RemoteProtocolError,
            FileNotFoundError,
            PermissionError,
        ) as exc:
            raise unreachable(self._where, exc) from exc
        except httpx.TimeoutException as exc:
            raise DaemonUnreachable(f"nexusd at {self._where} did not answer in time") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; the decoded JSON body (None for 204)."""
        response = self.send(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- daemon
    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/health")
        return result

    # -- VMs
    def create_vm(self, **fields: Any) -> dict[str, Any]:
        body = {k: v for k, v in fields.items() if v is not None}
        result: dict[str, Any] = self.request("POST", "/v1/vms", json=body)
        return result

    def list_vms(
        self, role: str | None = None, state: str | None = None, tags: list[str] | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {k: v for k, v in (("role", role), ("state", state)) if v}
        if tags:
            params["tag"] = tags
        result: list[dict[str, Any]] = self.request("GET", "/v1/vms", params=params)
        return result

    def get_vm(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/vms/{segment(ref)}")
        return result

    def remove_vm(self, ref: str, force: bool = False) -> None:
        self.request("DELETE", f"/v1/vms/{segment(ref)}", params={"force": force} if force else None)

    def start_vm(self, ref: str, wait: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"/v1/vms/{segment(ref)}/start", params=None if wait else {"wait": False}
        )
        return result

    def stop_vm(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/vms/{segment(ref)}/stop")
        return result

    def pause_vm(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/vms/{segment(ref)}/pause")
        return result

    def resume_vm(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/vms/{segment(ref)}/resume")
        return result

    def vm_history(self, ref: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", f"/v1/vms/{segment(ref)}/history")
        return result

    def vm_logs(self, ref: str, tail: int | None = None) -> dict[str, Any]:
        params = {"tail": tail} if tail is not None else None
        result: dict[str, Any] = self.request("GET", f"/v1/vms/{segment(ref)}/logs", params=params)
        return result

    def list_tags(self, ref: str) -> list[str]:
        result: list[str] = self.request("GET", f"/v1/vms/{segment(ref)}/tags")
        return result

    def add_tags(self, ref: str, tags: list[str]) -> list[str]:
        result: list[str] = self.request("POST", f"/v1/vms/{segment(ref)}/tags", json={"tags": tags})
        return result

    def remove_tag(self, ref: str, tag: str) -> None:
        self.request("DELETE", f"/v1/vms/{segment(ref)}/tags/{segment(tag)}")

    # -- streaming (NDJSON) operations

    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Events of an NDJSON operation; the last is ``result`` (or an error event, raised as NexusError)."""
        try:
            with self._http.stream(method, path, timeout=None, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("event") == "error":
                        detail = event["error"]
                        cls = ERRORS_BY_CODE.get(detail.get("code", ""), NexusError)
                        raise cls(str(detail.get("message", "failed")))
                    yield event
        except (httpx.ConnectError, FileNotFoundError, PermissionError) as exc:
            raise unreachable(self._where, exc) from exc
        except httpx.RemoteProtocolError as exc:
            raise DaemonUnreachable(f"nexusd at {self._where} broke off the answer: {exc}") from exc

    def pull_kernel(self, version: str | None = None) -> Iterator[dict[str, Any]]:
        return self.stream("POST", "/v1/kernels/pull", json={"version": version})

    def list_kernels(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/kernels")
        return result

    def remove_kernel(self, version: str) -> None:
        self.request("DELETE", f"/v1/kernels/{segment(version)}")

    def build_image(self, **fields: Any) -> Iterator[dict[str, Any]]:
        return self.stream("POST", "/v1/images", json={k: v for k, v in fields.items() if v is not None})

    def list_images(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/images")
        return result

    def get_image(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/images/{segment(ref)}")
        return result

    def remove_image(self, ref: str) -> None:
        self.request("DELETE", f"/v1/images/{segment(ref)}")

    def list_firecracker(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/firecracker")
        return result

    def pull_firecracker(
        self, version: str | None = None, path: str | None = None, sha256: str | None = None
    ) -> Iterator[dict[str, Any]]:
        body = {k: v for k, v in (("version", version), ("path", path), ("sha256", sha256)) if v is not None}
        return self.stream("POST", "/v1/firecracker/pull", json=body)

    def remove_firecracker(self, version: str) -> None:
        self.request("DELETE", f"/v1/firecracker/{segment(version)}")

    # -- inside a VM

    def exec(self, ref: str, command: str | list[str], **options: Any) -> Iterator[dict[str, Any]]:
        body = {"command": command, **{k: v for k, v in options.items() if v is not None}}
        return self.stream("POST", f"/v1/vms/{segment(ref)}/exec", json=body)

    def read_file(self, ref: str, path: str, offset: int, length: int) -> tuple[bytes, int, bool]:
        """One chunk of a guest file: (data, file size, eof)."""
        response = self.send(
            "GET", f"/v1/vms/{segment(ref)}/files", params={"path": path, "offset": offset, "length": length}
        )
        return response.content, int(response.headers["x-file-size"]), response.headers["x-eof"] == "1"

    def write_file(self, ref: str, path: str, data: bytes, append: bool, mode: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"path": path, "append": append}
        if mode is not None:
            params["mode"] = mode
        result: dict[str, Any] = self.request(
            "PUT",
            f"/v1/vms/{segment(ref)}/files",
            params=params,
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
        return result

    def call_tool(self, ref: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/vms/{segment(ref)}/tools/{segment(name)}", json=arguments)
        return result

    # -- drives and snapshots
    def list_drives(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/drives")
        return result

    def create_drive(self, name: str, image: str | None = None, size_mib: int | None = None) -> dict[str, Any]:
        body = {k: v for k, v in (("name", name), ("image", image), ("size_mib", size_mib)) if v is not None}
        result: dict[str, Any] = self.request("POST", "/v1/drives", json=body)
        return result

    def get_drive(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/drives/{segment(ref)}")
        return result

    def attach_drive(self, ref: str, vm: str, mount: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"/v1/drives/{segment(ref)}/attach", json={"vm": vm, "mount": mount}
        )
        return result

    def detach_drive(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/drives/{segment(ref)}/detach")
        return result

    def resize_drive(self, ref: str, size_mib: int) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/drives/{segment(ref)}/resize", json={"size_mib": size_mib})
        return result

    def remove_drive(self, ref: str) -> None:
        self.request("DELETE", f"/v1/drives/{segment(ref)}")

    def list_snapshots(self, ref: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", f"/v1/vms/{segment(ref)}/snapshots")
        return result

    def create_snapshot(self, ref: str, name: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/vms/{segment(ref)}/snapshots", json={"name": name})
        return result

    def rollback(self, ref: str, name: str, restart: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST",
            f"/v1/vms/{segment(ref)}/snapshots/{segment(name)}/rollback",
            params={"restart": True} if restart else None,
        )
        return result

    def remove_snapshot(self, ref: str, name: str) -> None:
        self.request("DELETE", f"/v1/vms/{segment(ref)}/snapshots/{segment(name)}")

    def clone_vm(self, ref: str, name: str, snapshot: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"/v1/vms/{segment(ref)}/clone", json={"name": name, "snapshot": snapshot}
        )
        return result

    # -- settings
    def list_settings(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/settings")
        return result

    def get_setting(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/settings/{segment(key)}")
        return result

    def set_setting(self, key: str, value: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", f"/v1/settings/{segment(key)}", json={"value": value})
        return result

    # -- agent tokens
    def create_token(self, vm: str, expires: str | None = None) -> dict[str, Any]:
        """A new agent token for ``vm``; its ``token`` field is the secret, shown only now."""
        body = {"vm": vm, **({"expires": expires} if expires is not None else {})}
        result: dict[str, Any] = self.request("POST", "/v1/tokens", json=body)
        return result

    def list_tokens(self, vm: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/tokens", params={"vm": vm} if vm else None)
        return result

    def remove_token(self, token_id: str) -> None:
        self.request("DELETE", f"/v1/tokens/{segment(token_id)}")

    # -- host networking
    def cleanup_network(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v1/admin/cleanup-network")
        return result

    def setup_firewall(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v1/admin/setup-firewall")
        return result
