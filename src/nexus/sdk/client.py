"""``Nexus`` and ``AsyncNexus``: typed clients of nexusd, the same operations sync and async.

Each operation is a ``nexus.sdk.calls.Call`` run by ``_send``; results are ``nexus.schemas`` models, failures the
domain's errors (``NotFound``, ``Conflict``, ``Invalid``, ...; ``DaemonUnreachable`` when nexusd does not answer).
``vms.run(name)`` is a computer for one task: created, started and removed again when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from nexus.client.client import DaemonUnreachable, unreachable
from nexus.client.connection import Connection
from nexus.protocol import FILE_CHUNK_BYTES
from nexus.schemas import HealthOut, LogsOut, StateChangeOut, VmOut, WriteOut
from nexus.sdk import calls
from nexus.sdk.calls import Call, ExecCollector, ExecResult

T = TypeVar("T")
History = list[StateChangeOut]  # module level: inside Vms, ``list`` is the method
OnOutput = Callable[[str, str], None]  # (stream, text) as a command writes it

_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, FileNotFoundError, PermissionError)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=None)  # a start waits for the guest; a command runs as long as it needs


@contextlib.contextmanager
def _reaching(where: str) -> Iterator[None]:
    """Transport failures as the domain's ``DaemonUnreachable``, for the sync and the async client alike."""
    try:
        yield
    except _TRANSPORT_ERRORS as exc:
        raise unreachable(where, exc) from exc
    except httpx.TimeoutException as exc:
        raise DaemonUnreachable(f"nexusd at {where} did not answer in time") from exc


def _exec_body(command: str | list[str], options: dict[str, Any]) -> dict[str, Any]:
    return {"command": command, **{k: v for k, v in options.items() if v is not None}}


def _connection(
    socket: str | Path | None, url: str | None, token: str | None, ca_file: str | Path | None
) -> Connection:
    return Connection(
        Path(socket) if socket is not None else None, url, token, Path(ca_file) if ca_file is not None else None
    )


def _vm_fields(name: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, **options}


# -- sync -----------------------------------------------------------------------------------------------------


class Nexus:
    """nexusd over its Unix socket (default ``/run/nexus/nexusd.sock``), or ``url`` with a bearer ``token``."""

    def __init__(
        self,
        socket: str | Path | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        ca_file: str | Path | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        self._connection = _connection(socket, url, token, ca_file)
        self._http = self._connection.sync_client(timeout)
        self.vms = Vms(self)

    def __enter__(self) -> Nexus:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> HealthOut:
        return self._send(calls.health())

    def _send(self, call: Call[T]) -> T:
        with _reaching(self._connection.where):
            response = self._http.request(call.method, call.path, **call.request())
        return call.parse(calls.check(response))

    def _exec(
        self, ref: str, command: str | list[str], on_output: OnOutput | None, options: dict[str, Any]
    ) -> ExecResult:
        collector = ExecCollector(on_output)
        with (
            _reaching(self._connection.where),
            self._http.stream("POST", calls.exec_path(ref), json=_exec_body(command, options)) as response,
        ):
            if response.status_code >= 400:
                response.read()
                calls.check(response)
            for line in response.iter_lines():
                collector.feed(line)
        return collector.finish()


class Vms:
    def __init__(self, nexus: Nexus) -> None:
        self._nexus = nexus

    def list(self, *, role: str | None = None, state: str | None = None, tags: tuple[str, ...] = ()) -> list[VmOut]:
        return self._nexus._send(calls.list_vms(role, state, tags))

    def get(self, ref: str) -> VmOut:
        return self._nexus._send(calls.get_vm(ref))

    def create(self, name: str, **options: Any) -> VmOut:
        """A VM, not started; ``options`` as the API takes them (``vcpus``, ``mem_mib``, ``image``, ``tags``...)."""
        return self._nexus._send(calls.create_vm(_vm_fields(name, options)))

    def start(self, ref: str, *, wait: bool = True) -> VmOut:
        return self._nexus._send(calls.vm_action(ref, "start", None if wait else {"wait": False}))

    def stop(self, ref: str) -> VmOut:
        return self._nexus._send(calls.vm_action(ref, "stop"))

    def pause(self, ref: str) -> VmOut:
        return self._nexus._send(calls.vm_action(ref, "pause"))

    def resume(self, ref: str) -> VmOut:
        return self._nexus._send(calls.vm_action(ref, "resume"))

    def remove(self, ref: str, *, force: bool = False) -> None:
        self._nexus._send(calls.remove_vm(ref, force))

    def history(self, ref: str) -> History:
        return self._nexus._send(calls.history(ref))

    def logs(self, ref: str, *, tail: int | None = None) -> LogsOut:
        return self._nexus._send(calls.logs(ref, tail))

    def handle(self, ref: str) -> Vm:
        """Work inside an existing VM."""
        return Vm(self._nexus, self.get(ref))

    @contextlib.contextmanager
    def run(self, name: str, *, keep: bool = False, **options: Any) -> Iterator[Vm]:
        """A VM created and started (ready) for the block, removed (forced) when it ends unless ``keep``."""
        vm = self.create(name, **options)
        try:
            yield Vm(self._nexus, self.start(vm.id))
        finally:
            if not keep:
                self.remove(vm.id, force=True)


class Vm:
    """One VM to work in: commands and files. ``info`` is the VM as it was when the handle was made."""

    def __init__(self, nexus: Nexus, info: VmOut) -> None:
        self._nexus = nexus
        self.info = info
        self.files = Files(nexus, info.id)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    def exec(
        self,
        command: str | list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout_s: float | None = None,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        """Run ``command`` (a shell string, or an argv without shell) to its end; all of its output is returned and,
        as it comes, passed to ``on_output``."""
        options = {"cwd": cwd, "env": env, "stdin": stdin, "timeout_s": timeout_s}
        return self._nexus._exec(self.id, command, on_output, options)

    def refresh(self) -> VmOut:
        self.info = self._nexus.vms.get(self.id)
        return self.info


class Files:
    def __init__(self, nexus: Nexus, vm_id: str) -> None:
        self._nexus = nexus
        self._vm_id = vm_id

    def read(self, path: str) -> bytes:
        """A whole guest file, in chunks."""
        data = bytearray()
        while True:
            chunk = self._nexus._send(calls.read_file(self._vm_id, path, len(data), FILE_CHUNK_BYTES))
            data += chunk.data
            if chunk.eof or not chunk.data:
                return bytes(data)

    def write(self, path: str, data: bytes | str, *, mode: str | None = None) -> WriteOut:
        """Create or replace a guest file (parents made), in chunks."""
        raw = data.encode() if isinstance(data, str) else data
        written = self._nexus._send(calls.write_file(self._vm_id, path, raw[:FILE_CHUNK_BYTES], False, mode))
        for start in range(FILE_CHUNK_BYTES, len(raw), FILE_CHUNK_BYTES):
            chunk = raw[start : start + FILE_CHUNK_BYTES]
            written = self._nexus._send(calls.write_file(self._vm_id, path, chunk, True, None))
        return written


# -- async ----------------------------------------------------------------------------------------------------


class AsyncNexus:
    """``Nexus``, async: the same operations, awaited."""

    def __init__(
        self,
        socket: str | Path | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        ca_file: str | Path | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        self._connection = _connection(socket, url, token, ca_file)
        self._http = self._connection.async_client(timeout)
        self.vms = AsyncVms(self)

    async def __aenter__(self) -> AsyncNexus:
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def health(self) -> HealthOut:
        return await self._send(calls.health())

    async def _send(self, call: Call[T]) -> T:
        with _reaching(self._connection.where):
            response = await self._http.request(call.method, call.path, **call.request())
        return call.parse(calls.check(response))

    async def _exec(
        self, ref: str, command: str | list[str], on_output: OnOutput | None, options: dict[str, Any]
    ) -> ExecResult:
        collector = ExecCollector(on_output)
        with _reaching(self._connection.where):
            async with self._http.stream("POST", calls.exec_path(ref), json=_exec_body(command, options)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    calls.check(response)
                async for line in response.aiter_lines():
                    collector.feed(line)
        return collector.finish()


class AsyncVms:
    def __init__(self, nexus: AsyncNexus) -> None:
        self._nexus = nexus

    async def list(
        self, *, role: str | None = None, state: str | None = None, tags: tuple[str, ...] = ()
    ) -> list[VmOut]:
        return await self._nexus._send(calls.list_vms(role, state, tags))

    async def get(self, ref: str) -> VmOut:
        return await self._nexus._send(calls.get_vm(ref))

    async def create(self, name: str, **options: Any) -> VmOut:
        return await self._nexus._send(calls.create_vm(_vm_fields(name, options)))

    async def start(self, ref: str, *, wait: bool = True) -> VmOut:
        return await self._nexus._send(calls.vm_action(ref, "start", None if wait else {"wait": False}))

    async def stop(self, ref: str) -> VmOut:
        return await self._nexus._send(calls.vm_action(ref, "stop"))

    async def pause(self, ref: str) -> VmOut:
        return await self._nexus._send(calls.vm_action(ref, "pause"))

    async def resume(self, ref: str) -> VmOut:
        return await self._nexus._send(calls.vm_action(ref, "resume"))

    async def remove(self, ref: str, *, force: bool = False) -> None:
        await self._nexus._send(calls.remove_vm(ref, force))

    async def history(self, ref: str) -> History:
        return await self._nexus._send(calls.history(ref))

    async def logs(self, ref: str, *, tail: int | None = None) -> LogsOut:
        return await self._nexus._send(calls.logs(ref, tail))

    async def handle(self, ref: str) -> AsyncVm:
        return AsyncVm(self._nexus, await self.get(ref))

    @contextlib.asynccontextmanager
    async def run(self, name: str, *, keep: bool = False, **options: Any) -> AsyncIterator[AsyncVm]:
        vm = await self.create(name, **options)
        try:
            yield AsyncVm(self._nexus, await self.start(vm.id))
        finally:
            if not keep:
                await self.remove(vm.id, force=True)


class AsyncVm:
    def __init__(self, nexus: AsyncNexus, info: VmOut) -> None:
        self._nexus = nexus
        self.info = info
        self.files = AsyncFiles(nexus, info.id)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    async def exec(
        self,
        command: str | list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout_s: float | None = None,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        options = {"cwd": cwd, "env": env, "stdin": stdin, "timeout_s": timeout_s}
        return await self._nexus._exec(self.id, command, on_output, options)

    async def refresh(self) -> VmOut:
        self.info = await self._nexus.vms.get(self.id)
        return self.info


class AsyncFiles:
    def __init__(self, nexus: AsyncNexus, vm_id: str) -> None:
        self._nexus = nexus
        self._vm_id = vm_id

    async def read(self, path: str) -> bytes:
        data = bytearray()
        while True:
            chunk = await self._nexus._send(calls.read_file(self._vm_id, path, len(data), FILE_CHUNK_BYTES))
            data += chunk.data
            if chunk.eof or not chunk.data:
                return bytes(data)

    async def write(self, path: str, data: bytes | str, *, mode: str | None = None) -> WriteOut:
        raw = data.encode() if isinstance(data, str) else data
        written = await self._nexus._send(calls.write_file(self._vm_id, path, raw[:FILE_CHUNK_BYTES], False, mode))
        for start in range(FILE_CHUNK_BYTES, len(raw), FILE_CHUNK_BYTES):
            chunk = raw[start : start + FILE_CHUNK_BYTES]
            written = await self._nexus._send(calls.write_file(self._vm_id, path, chunk, True, None))
        return written
