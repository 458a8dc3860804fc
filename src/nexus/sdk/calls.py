"""What each SDK operation sends and how its answer is read, with no I/O (sans-io): the sync and async clients run
the same ``Call`` objects, so a route, its parameters and its result model are written once.

Results are the API's own models (``nexus.schemas``); failures are the domain's errors, rebuilt from the error body
(``nexus.client.error_from_response``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from pydantic import TypeAdapter

from nexus.client.client import _seg, error_from_response

__all__ = ["Call", "ExecCollector", "ExecResult", "FileChunk", "check", "exec_path"]
from nexus.domain import ERRORS_BY_CODE, NexusError
from nexus.schemas import HealthOut, LogsOut, StateChangeOut, VmOut, WriteOut

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def request(self) -> dict[str, Any]:
        """The keyword arguments of ``httpx.Client.request`` for this call."""
        kwargs: dict[str, Any] = {"params": self.params, "headers": dict(self.headers)}
        if self.content is not None:
            kwargs["content"] = self.content
        elif self.json is not None:
            kwargs["json"] = self.json
        return kwargs


def _model(adapter: TypeAdapter[T]) -> Callable[[httpx.Response], T]:
    return lambda response: adapter.validate_json(response.content)


def _nothing(_: httpx.Response) -> None:
    return None


_VM = _model(TypeAdapter(VmOut))
_VMS = _model(TypeAdapter(list[VmOut]))
_HISTORY = _model(TypeAdapter(list[StateChangeOut]))
_LOGS = _model(TypeAdapter(LogsOut))
_HEALTH = _model(TypeAdapter(HealthOut))
_WRITE = _model(TypeAdapter(WriteOut))
_TAGS = _model(TypeAdapter(list[str]))


def _vm_path(ref: str, *rest: str) -> str:
    return "/".join(("/v1/vms", _seg(ref), *rest))


def health() -> Call[HealthOut]:
    return Call("GET", "/v1/health", _HEALTH)


def list_vms(role: str | None, state: str | None, tags: tuple[str, ...]) -> Call[list[VmOut]]:
    params: dict[str, Any] = {k: v for k, v in (("role", role), ("state", state)) if v}
    if tags:
        params["tag"] = list(tags)
    return Call("GET", "/v1/vms", _VMS, params=params)


def create_vm(fields: Mapping[str, Any]) -> Call[VmOut]:
    return Call("POST", "/v1/vms", _VM, json={k: v for k, v in fields.items() if v is not None})


def get_vm(ref: str) -> Call[VmOut]:
    return Call("GET", _vm_path(ref), _VM)


def vm_action(ref: str, action: str, params: Mapping[str, Any] | None = None) -> Call[VmOut]:
    return Call("POST", _vm_path(ref, action), _VM, params=params)


def remove_vm(ref: str, force: bool) -> Call[None]:
    return Call("DELETE", _vm_path(ref), _nothing, params={"force": True} if force else None)


def history(ref: str) -> Call[list[StateChangeOut]]:
    return Call("GET", _vm_path(ref, "history"), _HISTORY)


def logs(ref: str, tail: int | None) -> Call[LogsOut]:
    return Call("GET", _vm_path(ref, "logs"), _LOGS, params={"tail": tail} if tail is not None else None)


def add_tags(ref: str, tags: list[str]) -> Call[list[str]]:
    return Call("POST", _vm_path(ref, "tags"), _TAGS, json={"tags": tags})


@dataclass(frozen=True, slots=True)
class FileChunk:
    data: bytes
    size: int  # the whole file's
    eof: bool


def read_file(ref: str, path: str, offset: int, length: int) -> Call[FileChunk]:
    def parse(response: httpx.Response) -> FileChunk:
        return FileChunk(response.content, int(response.headers["x-file-size"]), response.headers["x-eof"] == "1")

    return Call("GET", _vm_path(ref, "files"), parse, params={"path": path, "offset": offset, "length": length})


def write_file(ref: str, path: str, data: bytes, append: bool, mode: str | None) -> Call[WriteOut]:
    params: dict[str, Any] = {"path": path, "append": append}
    if mode is not None:
        params["mode"] = mode
    headers = {"content-type": "application/octet-stream"}
    return Call("PUT", _vm_path(ref, "files"), _WRITE, params=params, content=data, headers=headers)


@dataclass(frozen=True, slots=True)
class ExecResult:
    """A finished command: its exit code (negative: killed by that signal) and its output as streamed."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ExecCollector:
    """Reads a ``/exec`` NDJSON answer one line at a time (sync or async alike) into an ``ExecResult``."""

    def __init__(self, on_output: Callable[[str, str], None] | None) -> None:
        self._on_output = on_output
        self._out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.result: ExecResult | None = None

    def feed(self, line: str) -> None:
        if not line.strip():
            return
        event = json.loads(line)
        kind = event.get("event")
        if kind == "output":
            stream, data = str(event.get("stream", "stdout")), str(event.get("data", ""))
            self._out.setdefault(stream, []).append(data)
            if self._on_output is not None:
                self._on_output(stream, data)
        elif kind == "error":
            detail = event.get("error") or {}
            raise ERRORS_BY_CODE.get(str(detail.get("code", "")), NexusError)(str(detail.get("message", "failed")))
        elif kind == "result":
            final = event.get("result") or {}
            self.result = ExecResult(
                exit_code=final.get("exit_code"),
                stdout="".join(self._out["stdout"]),
                stderr="".join(self._out["stderr"]),
                timed_out=bool(final.get("timed_out")),
            )

    def finish(self) -> ExecResult:
        if self.result is None:
            raise NexusError("nexusd ended the command's answer without a result")
        return self.result


def exec_path(ref: str) -> str:
    return _vm_path(ref, "exec")


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise error_from_response(response)
    return response
