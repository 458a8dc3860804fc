"""What each SDK operation sends and how its answer is read, with no I/O (sans-io): the sync and async clients run
the same ``Call`` objects, so a route, its parameters and its result model are written once.

Results are the API's own models (``nexus.schemas``); failures are the domain's errors, rebuilt from the error body
(``nexus.client.error_from_response``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx
from pydantic import TypeAdapter

from nexus.client.client import error_from_response, segment

__all__ = [
    "Call",
    "EventReader",
    "ExecResult",
    "FileChunk",
    "OnOutput",
    "OnProgress",
    "Stream",
    "StreamReader",
    "check",
]
from nexus.domain import ERRORS_BY_CODE, NexusError
from nexus.schemas import (
    ArchiveOut,
    AuditEntryOut,
    AuditPage,
    BindingOut,
    CleanupOut,
    DriveOut,
    FirecrackerOut,
    HealthOut,
    ImageOut,
    KernelOut,
    LogsOut,
    PolicyCreate,
    PolicyOut,
    PoolOut,
    ProcessOut,
    ProcessOutputOut,
    SecretOut,
    SettingOut,
    SetupFirewallOut,
    SnapshotOut,
    StateChangeOut,
    TokenCreated,
    TokenOut,
    VmEgressOut,
    VmOut,
    WriteOut,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | Iterable[bytes] | AsyncIterable[bytes] | None = None  # the iterables are streamed
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
_ARCHIVE = _model(TypeAdapter(ArchiveOut))
_TAGS = _model(TypeAdapter(list[str]))


def _vm_path(ref: str, *rest: str) -> str:
    return "/".join(("/v1/vms", segment(ref), *rest))


def health() -> Call[HealthOut]:
    return Call("GET", "/v1/health", _HEALTH)


def list_vms(role: str | None, state: str | None, tags: tuple[str, ...]) -> Call[list[VmOut]]:
    params: dict[str, Any] = {k: v for k, v in (("role", role), ("state", state)) if v}
    if tags:
        params["tag"] = list(tags)
    return Call("GET", "/v1/vms", _VMS, params=params)


def create_vm(fields: Mapping[str, Any]) -> Call[VmOut]:
    return Call("POST", "/v1/vms", _VM, json={k: v for k, v in fields.items() if v is not None})


_EGRESS = _model(TypeAdapter(VmEgressOut))


def get_egress(ref: str) -> Call[VmEgressOut]:
    return Call("GET", _vm_path(ref, "egress"), _EGRESS)


def set_egress(ref: str, mode: str | None, allow: list[str] | None) -> Call[VmEgressOut]:
    return Call("PUT", _vm_path(ref, "egress"), _EGRESS, json={"mode": mode, "allow": allow})


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


def archive_path(ref: str) -> str:
    return _vm_path(ref, "archive")


def write_archive(ref: str, path: str, chunks: Iterable[bytes] | AsyncIterable[bytes], cp: bool) -> Call[ArchiveOut]:
    headers = {"content-type": "application/x-tar"}
    return Call("PUT", archive_path(ref), _ARCHIVE, params={"path": path, "cp": cp}, content=chunks, headers=headers)


@dataclass(frozen=True, slots=True)
class ExecResult:
    """A finished command: its exit code (negative: killed by that signal) and its output as streamed."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool = False  # the agent cut what it kept; only an agent that does not stream loses any of it

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


OnProgress = Callable[[str, float], None]  # (stage, fraction 0..1) of a long operation
OnOutput = Callable[[str, str], None]  # (stream, text) as a command writes it


@dataclass(frozen=True, slots=True)
class Stream(Generic[T]):
    """A long operation answered in NDJSON events (``api/streaming.py``): progress, output, then a result."""

    path: str
    body: Mapping[str, Any]
    finish: Callable[[Any, Mapping[str, str]], T]  # (the result event's value, all output by stream) -> T


class StreamReader(Generic[T]):
    """Reads one ``Stream``'s answer a line at a time (sync or async alike)."""

    def __init__(self, stream: Stream[T], on_progress: OnProgress | None, on_output: OnOutput | None) -> None:
        self._stream = stream
        self._on_progress = on_progress
        self._on_output = on_output
        self._out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._final: Any = None
        self._done = False

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
        elif kind == "progress":
            if self._on_progress is not None:
                self._on_progress(str(event.get("stage", "")), float(event.get("fraction", 0.0)))
        elif kind == "error":
            detail = event.get("error") or {}
            raise ERRORS_BY_CODE.get(str(detail.get("code", "")), NexusError)(str(detail.get("message", "failed")))
        elif kind == "result":
            self._final, self._done = event.get("result"), True

    def finish(self) -> T:
        if not self._done:
            raise NexusError("nexusd ended the operation's answer without a result")
        return self._stream.finish(self._final, {k: "".join(v) for k, v in self._out.items()})


def exec_command(ref: str, command: str | list[str], options: Mapping[str, Any]) -> Stream[ExecResult]:
    def finish(final: Any, out: Mapping[str, str]) -> ExecResult:
        final = final or {}
        truncated = bool(final.get("truncated"))
        return ExecResult(final.get("exit_code"), out["stdout"], out["stderr"], bool(final.get("timed_out")), truncated)

    body = {"command": command, **{k: v for k, v in options.items() if v is not None}}
    return Stream(_vm_path(ref, "exec"), body, finish)


def prepare_vm(ref: str) -> Stream[dict[str, str]]:
    return Stream(_vm_path(ref, "prepare"), {}, lambda final, _out: {str(k): str(v) for k, v in final.items()})


def _stream_of(adapter: TypeAdapter[T]) -> Callable[[Any, Mapping[str, str]], T]:
    return lambda final, _out: adapter.validate_python(final)


def _given(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


# -- warm pools --------------------------------------------------------------------------------------------------
_POOL = _model(TypeAdapter(PoolOut))


def list_pools() -> Call[list[PoolOut]]:
    return Call("GET", "/v1/pools", _model(TypeAdapter(list[PoolOut])))


def get_pool(name: str) -> Call[PoolOut]:
    return Call("GET", f"/v1/pools/{segment(name)}", _POOL)


def set_pool(name: str, size: int, options: dict[str, Any]) -> Call[PoolOut]:
    return Call("PUT", f"/v1/pools/{segment(name)}", _POOL, json={"size": size, **_given(**options)})


def remove_pool(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/pools/{segment(name)}", _nothing)


# -- assets ------------------------------------------------------------------------------------------------------

_KERNELS = TypeAdapter(list[KernelOut])
_IMAGE = TypeAdapter(ImageOut)
_IMAGES = TypeAdapter(list[ImageOut])
_FIRECRACKER = TypeAdapter(FirecrackerOut)


def list_kernels() -> Call[list[KernelOut]]:
    return Call("GET", "/v1/kernels", _model(_KERNELS))


def pull_kernel(version: str | None) -> Stream[KernelOut]:
    return Stream("/v1/kernels/pull", {"version": version}, _stream_of(TypeAdapter(KernelOut)))


def remove_kernel(version: str) -> Call[None]:
    return Call("DELETE", f"/v1/kernels/{segment(version)}", _nothing)


def list_images() -> Call[list[ImageOut]]:
    return Call("GET", "/v1/images", _model(_IMAGES))


def get_image(ref: str) -> Call[ImageOut]:
    return Call("GET", f"/v1/images/{segment(ref)}", _model(_IMAGE))


def build_image(fields: Mapping[str, Any]) -> Stream[ImageOut]:
    return Stream("/v1/images", _given(**fields), _stream_of(_IMAGE))


def remove_image(ref: str) -> Call[None]:
    return Call("DELETE", f"/v1/images/{segment(ref)}", _nothing)


def list_firecracker() -> Call[list[FirecrackerOut]]:
    return Call("GET", "/v1/firecracker", _model(TypeAdapter(list[FirecrackerOut])))


def pull_firecracker(version: str | None, path: str | None, sha256: str | None) -> Stream[FirecrackerOut]:
    return Stream("/v1/firecracker/pull", _given(version=version, path=path, sha256=sha256), _stream_of(_FIRECRACKER))


def remove_firecracker(version: str) -> Call[None]:
    return Call("DELETE", f"/v1/firecracker/{segment(version)}", _nothing)


# -- settings, tokens, host network -----------------------------------------------------------------------------

_SETTING = TypeAdapter(SettingOut)


def list_settings() -> Call[list[SettingOut]]:
    return Call("GET", "/v1/settings", _model(TypeAdapter(list[SettingOut])))


def get_setting(key: str) -> Call[SettingOut]:
    return Call("GET", f"/v1/settings/{segment(key)}", _model(_SETTING))


def set_setting(key: str, value: Any) -> Call[SettingOut]:
    return Call("PUT", f"/v1/settings/{segment(key)}", _model(_SETTING), json={"value": value})


def create_token(vm: str, expires: str | None) -> Call[TokenCreated]:
    return Call("POST", "/v1/tokens", _model(TypeAdapter(TokenCreated)), json=_given(vm=vm, expires=expires))


def list_tokens(vm: str | None) -> Call[list[TokenOut]]:
    return Call("GET", "/v1/tokens", _model(TypeAdapter(list[TokenOut])), params=_given(vm=vm) or None)


def remove_token(token_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/tokens/{segment(token_id)}", _nothing)


def create_policy(rule: PolicyCreate) -> Call[PolicyOut]:
    return Call("POST", "/v1/policies", _model(TypeAdapter(PolicyOut)), json=rule.model_dump(exclude_defaults=True))


def list_policies() -> Call[list[PolicyOut]]:
    return Call("GET", "/v1/policies", _model(TypeAdapter(list[PolicyOut])))


def remove_policy(rule_id: int) -> Call[None]:
    return Call("DELETE", f"/v1/policies/{rule_id}", _nothing)


_SECRET = _model(TypeAdapter(SecretOut))


def set_secret(name: str, value: bytes) -> Call[SecretOut]:
    headers = {"content-type": "application/octet-stream"}
    return Call("PUT", f"/v1/secrets/{segment(name)}", _SECRET, content=value, headers=headers)


def get_secret(name: str) -> Call[SecretOut]:
    return Call("GET", f"/v1/secrets/{segment(name)}", _SECRET)


def list_secrets() -> Call[list[SecretOut]]:
    return Call("GET", "/v1/secrets", _model(TypeAdapter(list[SecretOut])))


def remove_secret(name: str, force: bool) -> Call[None]:
    return Call("DELETE", f"/v1/secrets/{segment(name)}", _nothing, params={"force": True} if force else None)


def bind_secret(
    name: str, host: str, vm: str | None, tag: str | None, header: str | None, bearer: bool
) -> Call[BindingOut]:
    """Checked by nexusd alone (``schemas.BindingCreate``), so a bad host is its 422, not a local error."""
    body = _given(vm=vm, tag=tag, host=host, header=header, bearer=bearer or None)
    return Call("POST", f"/v1/secrets/{segment(name)}/bindings", _model(TypeAdapter(BindingOut)), json=body)


def unbind_secret(binding_id: int) -> Call[None]:
    return Call("DELETE", f"/v1/secrets/bindings/{binding_id}", _nothing)


def _audit_params(**fields: Any) -> dict[str, Any]:
    return {k: v.astimezone().isoformat() if isinstance(v, datetime) else v for k, v in _given(**fields).items()}


def list_audit(
    vm: str | None, caller: str | None, since: datetime | None, before: int | None, after: int | None, limit: int
) -> Call[AuditPage]:
    params = _audit_params(vm=vm, caller=caller, since=since, before=before, after=after, limit=limit)
    return Call("GET", "/v1/audit", _model(TypeAdapter(AuditPage)), params=params)


AUDIT_STREAM = "/v1/audit/stream"


def audit_stream_params(
    vm: str | None, caller: str | None, since: datetime | None, after: int | None
) -> dict[str, Any]:
    return _audit_params(vm=vm, caller=caller, since=since, since_id=after)


class EventReader:
    """Server-Sent Events (``/v1/audit/stream``) a line at a time: ``feed`` returns an entry when a line ends
    one. Comments (the keep-alives) and ids are read past; the entry carries its own id."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> AuditEntryOut | None:
        if line:
            field, _, value = line.partition(":")
            if field == "data":
                self._data.append(value.removeprefix(" "))
            return None
        data, self._data = "\n".join(self._data), []
        return AuditEntryOut.model_validate_json(data) if data else None


def cleanup_network() -> Call[CleanupOut]:
    return Call("POST", "/v1/admin/cleanup-network", _model(TypeAdapter(CleanupOut)))


def setup_firewall() -> Call[SetupFirewallOut]:
    return Call("POST", "/v1/admin/setup-firewall", _model(TypeAdapter(SetupFirewallOut)))


# -- drives and snapshots ---------------------------------------------------------------------------------------

_DRIVE = _model(TypeAdapter(DriveOut))
_SNAPSHOT = _model(TypeAdapter(SnapshotOut))


def list_drives() -> Call[list[DriveOut]]:
    return Call("GET", "/v1/drives", _model(TypeAdapter(list[DriveOut])))


def create_drive(name: str, image: str | None, size_mib: int | None) -> Call[DriveOut]:
    return Call("POST", "/v1/drives", _DRIVE, json=_given(name=name, image=image, size_mib=size_mib))


def get_drive(ref: str) -> Call[DriveOut]:
    return Call("GET", f"/v1/drives/{segment(ref)}", _DRIVE)


def attach_drive(ref: str, vm: str, mount: str | None) -> Call[DriveOut]:
    return Call("POST", f"/v1/drives/{segment(ref)}/attach", _DRIVE, json={"vm": vm, "mount": mount})


def detach_drive(ref: str) -> Call[DriveOut]:
    return Call("POST", f"/v1/drives/{segment(ref)}/detach", _DRIVE)


def resize_drive(ref: str, size_mib: int) -> Call[DriveOut]:
    return Call("POST", f"/v1/drives/{segment(ref)}/resize", _DRIVE, json={"size_mib": size_mib})


def remove_drive(ref: str) -> Call[None]:
    return Call("DELETE", f"/v1/drives/{segment(ref)}", _nothing)


def list_snapshots(vm: str) -> Call[list[SnapshotOut]]:
    return Call("GET", _vm_path(vm, "snapshots"), _model(TypeAdapter(list[SnapshotOut])))


def create_snapshot(vm: str, name: str | None) -> Call[SnapshotOut]:
    return Call("POST", _vm_path(vm, "snapshots"), _SNAPSHOT, json={"name": name})


def rollback(vm: str, name: str, restart: bool) -> Call[VmOut]:
    params = {"restart": True} if restart else None
    return Call("POST", _vm_path(vm, "snapshots", segment(name), "rollback"), _VM, params=params)


def create_checkpoint(vm: str, name: str | None) -> Call[SnapshotOut]:
    return Call("POST", _vm_path(vm, "checkpoints"), _SNAPSHOT, json={"name": name})


def restore(vm: str, name: str) -> Call[VmOut]:
    return Call("POST", _vm_path(vm, "snapshots", segment(name), "restore"), _VM)


def fork_vm(vm: str, name: str, checkpoint: str | None) -> Call[VmOut]:
    return Call("POST", _vm_path(vm, "fork"), _VM, json={"name": name, "checkpoint": checkpoint})


def remove_snapshot(vm: str, name: str) -> Call[None]:
    return Call("DELETE", _vm_path(vm, "snapshots", segment(name)), _nothing)


def clone_vm(vm: str, name: str, snapshot: str | None) -> Call[VmOut]:
    return Call("POST", _vm_path(vm, "clone"), _VM, json={"name": name, "snapshot": snapshot})


def list_tags(ref: str) -> Call[list[str]]:
    return Call("GET", _vm_path(ref, "tags"), _TAGS)


def remove_tag(ref: str, tag: str) -> Call[None]:
    return Call("DELETE", _vm_path(ref, "tags", segment(tag)), _nothing)


# -- background processes ---------------------------------------------------------------------------------------

_PROCESS = _model(TypeAdapter(ProcessOut))


def list_processes(vm: str) -> Call[list[ProcessOut]]:
    return Call("GET", _vm_path(vm, "processes"), _model(TypeAdapter(list[ProcessOut])))


def start_process(vm: str, fields: Mapping[str, Any]) -> Call[ProcessOut]:
    return Call("POST", _vm_path(vm, "processes"), _PROCESS, json=_given(**fields))


def get_process(vm: str, process: str) -> Call[ProcessOut]:
    return Call("GET", _vm_path(vm, "processes", segment(process)), _PROCESS)


def process_output(
    vm: str, process: str, offset: int | None, limit: int | None, tail: int | None
) -> Call[ProcessOutputOut]:
    params = _given(offset=offset, limit=limit, tail=tail)
    path = _vm_path(vm, "processes", segment(process), "output")
    return Call("GET", path, _model(TypeAdapter(ProcessOutputOut)), params=params)


def signal_process(vm: str, process: str, signal: str) -> Call[ProcessOut]:
    return Call("POST", _vm_path(vm, "processes", segment(process), "signal"), _PROCESS, json={"signal": signal})


def wait_process(vm: str, process: str, timeout_s: float) -> Call[ProcessOut]:
    path = _vm_path(vm, "processes", segment(process), "wait")
    return Call("GET", path, _PROCESS, params={"timeout_s": timeout_s})


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise error_from_response(response)
    return response
