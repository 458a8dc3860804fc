"""``Nexus`` and ``AsyncNexus``: typed clients of nexusd, the same operations sync and async.

Each operation is a ``nexus.sdk.calls.Call`` (or, for a long one, a ``Stream`` of NDJSON events) run by ``_send``
(``_stream``); the resource classes only name them. Results are ``nexus.schemas`` models, failures the domain's
errors (``NotFound``, ``Conflict``, ``Invalid``, ...; ``DaemonUnreachable`` when nexusd does not answer).
``vms.run(name)`` is a computer for one task: created, started and removed again when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from nexus.client.client import DaemonUnreachable, unreachable
from nexus.client.connection import Connection
from nexus.domain import Unavailable
from nexus.protocol import FILE_CHUNK_BYTES
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
from nexus.sdk import calls
from nexus.sdk.calls import Call, ExecResult, FileChunk, OnOutput, OnProgress, Stream, StreamReader
from nexus.sdk.terminal import Shell, open_shell

T = TypeVar("T")
# Module-level names for what resource classes return: inside them, ``list`` is a method.
VmList = list[VmOut]
History = list[StateChangeOut]
Tags = list[str]
Command = str | list[str]  # a shell string, or an argv run without a shell
Argv = list[str]

_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, FileNotFoundError, PermissionError)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=None)  # a start waits for the guest; a command runs as long as it needs
_BROKE_OFF = "the archive stream of {} broke off before its end (nexusd's log says why)"


@contextlib.contextmanager
def _reaching(where: str) -> Iterator[None]:
    """Transport failures as the domain's ``DaemonUnreachable``, for the sync and the async client alike."""
    try:
        yield
    except _TRANSPORT_ERRORS as exc:
        raise unreachable(where, exc) from exc
    except httpx.TimeoutException as exc:
        raise DaemonUnreachable(f"nexusd at {where} did not answer in time") from exc


def _connection(
    socket: str | Path | None, url: str | None, token: str | None, ca_file: str | Path | None
) -> Connection:
    return Connection(
        Path(socket) if socket is not None else None, url, token, Path(ca_file) if ca_file is not None else None
    )


def _exec_options(
    cwd: str | None, env: dict[str, str] | None, stdin: str | None, timeout_s: float | None
) -> dict[str, Any]:
    return {"cwd": cwd, "env": env, "stdin": stdin, "timeout_s": timeout_s}


def _chunks(data: bytes) -> Iterator[bytes]:
    yield data[:FILE_CHUNK_BYTES]  # always one, so an empty file is written too
    for start in range(FILE_CHUNK_BYTES, len(data), FILE_CHUNK_BYTES):
        yield data[start : start + FILE_CHUNK_BYTES]


# == sync =======================================================================================================


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
        self.connection = _connection(socket, url, token, ca_file)
        self._http = self.connection.sync_client(timeout)
        self.vms = Vms(self)
        self.drives = Drives(self)
        self.snapshots = Snapshots(self)
        self.images = Images(self)
        self.kernels = Kernels(self)
        self.firecracker = FirecrackerBinaries(self)
        self.settings = Settings(self)
        self.tokens = Tokens(self)
        self.policies = Policies(self)
        self.secrets = Secrets(self)
        self.network = Network(self)
        self.audit = AuditLog(self)
        self.pools = Pools(self)

    def __enter__(self) -> Nexus:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> HealthOut:
        return self.send(calls.health())

    def send(self, call: Call[T]) -> T:
        with _reaching(self.connection.where):
            response = self._http.request(call.method, call.path, **call.request())
        return call.parse(calls.check(response))

    def stream(self, stream: Stream[T], on_progress: OnProgress | None = None, on_output: OnOutput | None = None) -> T:
        reader = StreamReader(stream, on_progress, on_output)
        with (
            _reaching(self.connection.where),
            self._http.stream("POST", stream.path, json=dict(stream.body)) as response,
        ):
            if response.status_code >= 400:
                response.read()
                calls.check(response)
            for line in response.iter_lines():
                reader.feed(line)
        return reader.finish()

    def lines(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        """The lines of a GET answer as they arrive (an event stream), however long it goes on."""
        with (
            _reaching(self.connection.where),
            self._http.stream("GET", path, params=params, timeout=httpx.Timeout(30.0, read=None)) as response,
        ):
            if response.status_code >= 400:
                response.read()
                calls.check(response)
            yield from response.iter_lines()


class _Resource:
    def __init__(self, nexus: Nexus) -> None:
        self._nexus = nexus


class Vms(_Resource):
    def list(self, *, role: str | None = None, state: str | None = None, tags: tuple[str, ...] = ()) -> VmList:
        return self._nexus.send(calls.list_vms(role, state, tags))

    def get(self, ref: str) -> VmOut:
        return self._nexus.send(calls.get_vm(ref))

    def create(self, name: str, **options: Any) -> VmOut:
        """A VM, not started; ``options`` as the API takes them (``vcpus``, ``mem_mib``, ``image``, ``tags``...)."""
        return self._nexus.send(calls.create_vm({"name": name, **options}))

    def prepare(self, ref: str, *, on_progress: OnProgress | None = None) -> dict[str, str]:
        """Fetch the VM's kernel and build its image if they are missing; what it will boot (kernel, image)."""
        return self._nexus.stream(calls.prepare_vm(ref), on_progress)

    def egress(self, ref: str) -> VmEgressOut:
        """How the VM reaches the outside: mode, proxy allow-list, the proxy's latest decisions for it."""
        return self._nexus.send(calls.get_egress(ref))

    def set_egress(self, ref: str, *, mode: str | None = None, allow: Iterable[str] | None = None) -> VmEgressOut:
        """Change a stopped VM's egress mode and/or replace its proxy allow-list (None: leave that part)."""
        return self._nexus.send(calls.set_egress(ref, mode, None if allow is None else list(allow)))

    def start(self, ref: str, *, wait: bool = True) -> VmOut:
        return self._nexus.send(calls.vm_action(ref, "start", None if wait else {"wait": False}))

    def stop(self, ref: str) -> VmOut:
        return self._nexus.send(calls.vm_action(ref, "stop"))

    def pause(self, ref: str) -> VmOut:
        return self._nexus.send(calls.vm_action(ref, "pause"))

    def resume(self, ref: str) -> VmOut:
        return self._nexus.send(calls.vm_action(ref, "resume"))

    def remove(self, ref: str, *, force: bool = False) -> None:
        self._nexus.send(calls.remove_vm(ref, force))

    def history(self, ref: str) -> History:
        return self._nexus.send(calls.history(ref))

    def logs(self, ref: str, *, tail: int | None = None) -> LogsOut:
        return self._nexus.send(calls.logs(ref, tail))

    def tags(self, ref: str) -> Tags:
        return self._nexus.send(calls.list_tags(ref))

    def add_tags(self, ref: str, tags: Tags) -> Tags:
        return self._nexus.send(calls.add_tags(ref, tags))

    def remove_tag(self, ref: str, tag: str) -> None:
        self._nexus.send(calls.remove_tag(ref, tag))

    def fork(self, ref: str, name: str, *, checkpoint: str | None = None) -> VmOut:
        """A new VM running on from a checkpoint of ``ref`` (one taken now unless named); both run on."""
        return self._nexus.send(calls.fork_vm(ref, name, checkpoint))

    def clone(self, ref: str, name: str, *, snapshot: str | None = None) -> VmOut:
        return self._nexus.send(calls.clone_vm(ref, name, snapshot))

    def exec(
        self,
        ref: str,
        command: Command,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout_s: float | None = None,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        """Run ``command`` in VM ``ref`` (a shell string, or an argv without shell) to its end; all of its output is
        returned and, as it comes, passed to ``on_output``."""
        options = _exec_options(cwd, env, stdin, timeout_s)
        return self._nexus.stream(calls.exec_command(ref, command, options), on_output=on_output)

    def files(self, ref: str) -> Files:
        return Files(self._nexus, ref)

    def processes(self, ref: str) -> Processes:
        return Processes(self._nexus, ref)

    def shell(
        self,
        ref: str,
        command: Argv | None = None,
        *,
        rows: int = 24,
        cols: int = 80,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Shell:
        """A terminal in VM ``ref``: ``command`` (an argv; None: the login shell) on a PTY (``nexus.sdk.terminal``)."""
        return open_shell(self._nexus.connection, ref, command, rows=rows, cols=cols, cwd=cwd, env=env)

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
        self.processes = Processes(nexus, info.id)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    def exec(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout_s: float | None = None,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        return self._nexus.vms.exec(
            self.id, command, cwd=cwd, env=env, stdin=stdin, timeout_s=timeout_s, on_output=on_output
        )

    def refresh(self) -> VmOut:
        self.info = self._nexus.vms.get(self.id)
        return self.info


class Files:
    """A VM's files, moved in chunks of ``FILE_CHUNK_BYTES``."""

    def __init__(self, nexus: Nexus, vm: str) -> None:
        self._nexus = nexus
        self._vm = vm

    def chunks(self, path: str) -> Iterator[FileChunk]:
        """The file chunk by chunk (each knows the whole size), so a copy needs no more memory than a chunk."""
        offset = 0
        while True:
            chunk = self._nexus.send(calls.read_file(self._vm, path, offset, FILE_CHUNK_BYTES))
            yield chunk
            offset += len(chunk.data)
            if chunk.eof or not chunk.data:
                return

    def read(self, path: str) -> bytes:
        return b"".join(chunk.data for chunk in self.chunks(path))

    def write_chunks(self, path: str, chunks: Iterable[bytes], *, mode: str | None = None) -> WriteOut:
        """Create or replace a file from ``chunks`` (each at most ``FILE_CHUNK_BYTES``; parents are made)."""
        written: WriteOut | None = None
        for i, chunk in enumerate(chunks):
            written = self._nexus.send(calls.write_file(self._vm, path, chunk, i > 0, mode if i == 0 else None))
        if written is None:
            written = self._nexus.send(calls.write_file(self._vm, path, b"", False, mode))
        return written

    def write(self, path: str, data: bytes | str, *, mode: str | None = None) -> WriteOut:
        return self.write_chunks(path, _chunks(data.encode() if isinstance(data, str) else data), mode=mode)

    def read_archive(self, path: str) -> Generator[bytes, None, None]:
        """The tar stream of the VM's file or tree at ``path`` (one top-level entry named after it), as it comes;
        closing the iterator early ends the transfer."""
        nexus = self._nexus
        with (
            _reaching(nexus.connection.where),
            nexus._http.stream("GET", calls.archive_path(self._vm), params={"path": path}) as response,
        ):
            if response.status_code >= 400:
                response.read()
                calls.check(response)
            try:
                yield from response.iter_bytes()
            except httpx.RemoteProtocolError as exc:
                raise Unavailable(_BROKE_OFF.format(path)) from exc

    def write_archive(self, path: str, chunks: Iterable[bytes], *, cp: bool = False) -> ArchiveOut:
        """Unpack a tar stream (plain or compressed), sent as ``chunks`` come, into the VM's directory ``path``
        (made if missing); ``cp``: ``cp -r`` placement (the archive's one top entry becomes ``path`` unless that is
        an existing directory). A member that would land outside is refused (``Invalid``), naming it."""
        return self._nexus.send(calls.write_archive(self._vm, path, chunks, cp))


class Processes:
    """A VM's background processes: commands that outlive the call that started them (and nexusd's restarts).
    A process is named by its id (``p1``...) or its name."""

    def __init__(self, nexus: Nexus, vm: str) -> None:
        self._nexus = nexus
        self._vm = vm

    def list(self) -> list[ProcessOut]:
        return self._nexus.send(calls.list_processes(self._vm))

    def start(
        self,
        command: Command,
        *,
        name: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        ready_port: int | None = None,
        ready_log: str | None = None,
        ready_timeout_s: float | None = None,
        max_log_bytes: int | None = None,
    ) -> ProcessOut:
        """Start ``command``; with ``ready_port`` (accepts on 127.0.0.1) or ``ready_log`` (a regex matching a line
        of its output) return once it is ready. Not ready in time: ``GuestError`` with its last output (it was
        killed)."""
        fields = {
            "command": command,
            "name": name,
            "cwd": cwd,
            "env": env,
            "ready_port": ready_port,
            "ready_log": ready_log,
            "ready_timeout_s": ready_timeout_s,
            "max_log_bytes": max_log_bytes,
        }
        return self._nexus.send(calls.start_process(self._vm, fields))

    def get(self, process: str) -> ProcessOut:
        return self._nexus.send(calls.get_process(self._vm, process))

    def output(
        self, process: str, *, offset: int | None = None, limit: int | None = None, tail: int | None = None
    ) -> ProcessOutputOut:
        """Bytes from ``offset`` (at most ``limit``), or the last ``tail`` lines (the last 100 when neither)."""
        return self._nexus.send(calls.process_output(self._vm, process, offset, limit, tail))

    def follow(self, process: str, *, offset: int = 0, poll_s: float = 0.5) -> Iterator[ProcessOutputOut]:
        """Its output from ``offset`` as it is written, until it has ended and all of it was read."""
        while True:
            out = self.output(process, offset=offset)
            if out.text:
                yield out
            offset = out.next_offset
            if offset < out.total_bytes:
                continue
            if not out.running:
                return
            self.wait(process, timeout_s=poll_s)  # the pause between looks, cut short when it ends

    def signal(self, process: str, signal: str = "TERM") -> ProcessOut:
        return self._nexus.send(calls.signal_process(self._vm, process, signal))

    def wait(self, process: str, *, timeout_s: float = 30.0) -> ProcessOut:
        """Once it has ended (its exit status), or after ``timeout_s`` with ``timed_out`` true."""
        return self._nexus.send(calls.wait_process(self._vm, process, timeout_s))


class Drives(_Resource):
    def list(self) -> list[DriveOut]:
        return self._nexus.send(calls.list_drives())

    def get(self, ref: str) -> DriveOut:
        return self._nexus.send(calls.get_drive(ref))

    def create(self, name: str, *, image: str | None = None, size_mib: int | None = None) -> DriveOut:
        return self._nexus.send(calls.create_drive(name, image, size_mib))

    def attach(self, ref: str, vm: str, *, mount: str | None = None) -> DriveOut:
        return self._nexus.send(calls.attach_drive(ref, vm, mount))

    def detach(self, ref: str) -> DriveOut:
        return self._nexus.send(calls.detach_drive(ref))

    def resize(self, ref: str, size_mib: int) -> DriveOut:
        return self._nexus.send(calls.resize_drive(ref, size_mib))

    def remove(self, ref: str) -> None:
        self._nexus.send(calls.remove_drive(ref))


class Snapshots(_Resource):
    def list(self, vm: str) -> list[SnapshotOut]:
        return self._nexus.send(calls.list_snapshots(vm))

    def create(self, vm: str, name: str | None = None) -> SnapshotOut:
        return self._nexus.send(calls.create_snapshot(vm, name))

    def rollback(self, vm: str, name: str, *, restart: bool = False) -> VmOut:
        return self._nexus.send(calls.rollback(vm, name, restart))

    def checkpoint(self, vm: str, name: str | None = None) -> SnapshotOut:
        """Save the running VM's memory with its drives (a snapshot that can be restored running)."""
        return self._nexus.send(calls.create_checkpoint(vm, name))

    def restore(self, vm: str, name: str) -> VmOut:
        """Bring the VM back running from checkpoint ``name`` (what runs now is thrown away)."""
        return self._nexus.send(calls.restore(vm, name))

    def remove(self, vm: str, name: str) -> None:
        self._nexus.send(calls.remove_snapshot(vm, name))


class Images(_Resource):
    def list(self) -> list[ImageOut]:
        return self._nexus.send(calls.list_images())

    def get(self, ref: str) -> ImageOut:
        return self._nexus.send(calls.get_image(ref))

    def build(
        self,
        *,
        base: str | None = None,
        name: str | None = None,
        size_mib: int | None = None,
        sha256: str | None = None,
        packages: Sequence[str] | None = None,
        profiles: Sequence[str] | None = None,
        from_vm: str | None = None,
        on_progress: OnProgress | None = None,
    ) -> ImageOut:
        """Build an image (``packages`` and ``profiles`` on a debian base), or with ``from_vm`` save that stopped
        VM's root drive as one (then give only ``name``)."""
        fields = {
            "base": base,
            "name": name,
            "size_mib": size_mib,
            "sha256": sha256,
            "packages": list(packages) if packages is not None else None,
            "profiles": list(profiles) if profiles is not None else None,
            "from_vm": from_vm,
        }
        return self._nexus.stream(calls.build_image(fields), on_progress)

    def remove(self, ref: str) -> None:
        self._nexus.send(calls.remove_image(ref))


class Kernels(_Resource):
    def list(self) -> list[KernelOut]:
        return self._nexus.send(calls.list_kernels())

    def pull(self, version: str | None = None, *, on_progress: OnProgress | None = None) -> KernelOut:
        return self._nexus.stream(calls.pull_kernel(version), on_progress)

    def remove(self, version: str) -> None:
        self._nexus.send(calls.remove_kernel(version))


class FirecrackerBinaries(_Resource):
    def list(self) -> list[FirecrackerOut]:
        return self._nexus.send(calls.list_firecracker())

    def pull(
        self,
        version: str | None = None,
        *,
        path: str | None = None,
        sha256: str | None = None,
        on_progress: OnProgress | None = None,
    ) -> FirecrackerOut:
        return self._nexus.stream(calls.pull_firecracker(version, path, sha256), on_progress)

    def remove(self, version: str) -> None:
        self._nexus.send(calls.remove_firecracker(version))


class Settings(_Resource):
    def list(self) -> list[SettingOut]:
        return self._nexus.send(calls.list_settings())

    def get(self, key: str) -> SettingOut:
        return self._nexus.send(calls.get_setting(key))

    def set(self, key: str, value: Any) -> SettingOut:
        return self._nexus.send(calls.set_setting(key, value))


class Tokens(_Resource):
    def create(self, vm: str, *, expires: str | None = None) -> TokenCreated:
        """A new agent token for ``vm``; its ``token`` is the secret, shown only now."""
        return self._nexus.send(calls.create_token(vm, expires))

    def list(self, *, vm: str | None = None) -> list[TokenOut]:
        return self._nexus.send(calls.list_tokens(vm))

    def remove(self, token_id: str) -> None:
        self._nexus.send(calls.remove_token(token_id))


class Policies(_Resource):
    """The rules that let portal VMs use work VMs through their gateway (default deny)."""

    def allow(self, portal: str, work: str, tools: Iterable[str] = (), **limits: Any) -> PolicyOut:
        """A new rule: portals ``portal`` (a name or tag:TAG) may call ``tools`` on ``work`` (a name, tag:TAG or
        @created); ``limits`` are ``PolicyCreate``'s other fields (calls_per_minute, manage, max_vms, ...)."""
        return self._nexus.send(
            calls.create_policy(PolicyCreate(portal=portal, work=work, tools=list(tools), **limits))
        )

    def list(self) -> list[PolicyOut]:
        return self._nexus.send(calls.list_policies())

    def remove(self, rule_id: int) -> None:
        self._nexus.send(calls.remove_policy(rule_id))


class Pools(_Resource):
    """Warm pools: nexusd keeps ``size`` VMs of a template ready; ``vms.create(..., claim=True)`` with exactly
    that shape (and nothing else asked: no ports, allow-list or lifetime) takes one, answered ready."""

    def list(self) -> list[PoolOut]:
        return self._nexus.send(calls.list_pools())

    def get(self, name: str) -> PoolOut:
        return self._nexus.send(calls.get_pool(name))

    def set(self, name: str, size: int, **options: Any) -> PoolOut:
        """Make or replace pool ``name``; ``options``: ``image``, ``vcpus``, ``mem_mib``, ``network``, ``egress``
        (defaults from settings, resolved now)."""
        return self._nexus.send(calls.set_pool(name, size, options))

    def remove(self, name: str) -> None:
        """Drop pool ``name`` and its idle VMs."""
        self._nexus.send(calls.remove_pool(name))


class Secrets(_Resource):
    """Secrets nexusd adds to a VM's requests on the way out; the VM only ever sees a placeholder. No answer
    carries a value."""

    def set(self, name: str, value: bytes | str) -> SecretOut:
        """Make secret ``name`` or replace its value (UTF-8 text, no control characters, at most 64 KiB)."""
        return self._nexus.send(calls.set_secret(name, value.encode() if isinstance(value, str) else value))

    def get(self, name: str) -> SecretOut:
        return self._nexus.send(calls.get_secret(name))

    def list(self) -> list[SecretOut]:
        return self._nexus.send(calls.list_secrets())

    def remove(self, name: str, *, force: bool = False) -> None:
        """Remove secret ``name``; refused (Conflict) while it is bound, unless ``force`` unbinds it too."""
        self._nexus.send(calls.remove_secret(name, force))

    def bind(
        self,
        name: str,
        host: str,
        *,
        vm: str | None = None,
        tag: str | None = None,
        header: str | None = None,
        bearer: bool = False,
    ) -> BindingOut:
        """Put secret ``name`` in ``header`` (or ``Authorization: Bearer``, ``bearer``) of requests to ``host`` from
        VM ``vm`` or every VM tagged ``tag``."""
        return self._nexus.send(calls.bind_secret(name, host, vm, tag, header, bearer))

    def unbind(self, binding_id: int) -> None:
        self._nexus.send(calls.unbind_secret(binding_id))


class AuditLog(_Resource):
    def list(
        self,
        *,
        vm: str | None = None,
        caller: str | None = None,
        since: datetime | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """One page of entries: newest first (older ones: ``before=page.next_before``), or oldest first above
        ``after``."""
        return self._nexus.send(calls.list_audit(vm, caller, since, before, after, limit))

    def follow(
        self,
        *,
        vm: str | None = None,
        caller: str | None = None,
        since: datetime | None = None,
        after: int | None = None,
    ) -> Iterator[AuditEntryOut]:
        """New entries as they are recorded, after the stored ones above id ``after`` (or from ``since``), until
        the iterator is closed or nexusd stops."""
        reader = calls.EventReader()
        for line in self._nexus.lines(calls.AUDIT_STREAM, calls.audit_stream_params(vm, caller, since, after)):
            entry = reader.feed(line)
            if entry is not None:
                yield entry


class Network(_Resource):
    def cleanup(self) -> CleanupOut:
        return self._nexus.send(calls.cleanup_network())

    def setup_firewall(self) -> SetupFirewallOut:
        return self._nexus.send(calls.setup_firewall())


# == async ======================================================================================================


class AsyncNexus:
    """``Nexus``, async: VMs (with their commands and files), drives and snapshots, awaited."""

    def __init__(
        self,
        socket: str | Path | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        ca_file: str | Path | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        self.connection = _connection(socket, url, token, ca_file)
        self._http = self.connection.async_client(timeout)
        self.vms = AsyncVms(self)
        self.drives = AsyncDrives(self)
        self.snapshots = AsyncSnapshots(self)

    async def __aenter__(self) -> AsyncNexus:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def health(self) -> HealthOut:
        return await self.send(calls.health())

    async def send(self, call: Call[T]) -> T:
        with _reaching(self.connection.where):
            response = await self._http.request(call.method, call.path, **call.request())
        return call.parse(calls.check(response))

    async def stream(
        self, stream: Stream[T], on_progress: OnProgress | None = None, on_output: OnOutput | None = None
    ) -> T:
        reader = StreamReader(stream, on_progress, on_output)
        with _reaching(self.connection.where):
            async with self._http.stream("POST", stream.path, json=dict(stream.body)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    calls.check(response)
                async for line in response.aiter_lines():
                    reader.feed(line)
        return reader.finish()


class _AsyncResource:
    def __init__(self, nexus: AsyncNexus) -> None:
        self._nexus = nexus


class AsyncVms(_AsyncResource):
    async def list(self, *, role: str | None = None, state: str | None = None, tags: tuple[str, ...] = ()) -> VmList:
        return await self._nexus.send(calls.list_vms(role, state, tags))

    async def get(self, ref: str) -> VmOut:
        return await self._nexus.send(calls.get_vm(ref))

    async def create(self, name: str, **options: Any) -> VmOut:
        return await self._nexus.send(calls.create_vm({"name": name, **options}))

    async def start(self, ref: str, *, wait: bool = True) -> VmOut:
        return await self._nexus.send(calls.vm_action(ref, "start", None if wait else {"wait": False}))

    async def stop(self, ref: str) -> VmOut:
        return await self._nexus.send(calls.vm_action(ref, "stop"))

    async def pause(self, ref: str) -> VmOut:
        return await self._nexus.send(calls.vm_action(ref, "pause"))

    async def resume(self, ref: str) -> VmOut:
        return await self._nexus.send(calls.vm_action(ref, "resume"))

    async def remove(self, ref: str, *, force: bool = False) -> None:
        await self._nexus.send(calls.remove_vm(ref, force))

    async def history(self, ref: str) -> History:
        return await self._nexus.send(calls.history(ref))

    async def logs(self, ref: str, *, tail: int | None = None) -> LogsOut:
        return await self._nexus.send(calls.logs(ref, tail))

    async def fork(self, ref: str, name: str, *, checkpoint: str | None = None) -> VmOut:
        return await self._nexus.send(calls.fork_vm(ref, name, checkpoint))

    async def clone(self, ref: str, name: str, *, snapshot: str | None = None) -> VmOut:
        return await self._nexus.send(calls.clone_vm(ref, name, snapshot))

    async def exec(
        self,
        ref: str,
        command: Command,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout_s: float | None = None,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        options = _exec_options(cwd, env, stdin, timeout_s)
        return await self._nexus.stream(calls.exec_command(ref, command, options), on_output=on_output)

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
        command: Command,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout_s: float | None = None,
        on_output: OnOutput | None = None,
    ) -> ExecResult:
        return await self._nexus.vms.exec(
            self.id, command, cwd=cwd, env=env, stdin=stdin, timeout_s=timeout_s, on_output=on_output
        )

    async def refresh(self) -> VmOut:
        self.info = await self._nexus.vms.get(self.id)
        return self.info


class AsyncFiles:
    def __init__(self, nexus: AsyncNexus, vm: str) -> None:
        self._nexus = nexus
        self._vm = vm

    async def read(self, path: str) -> bytes:
        data = bytearray()
        while True:
            chunk = await self._nexus.send(calls.read_file(self._vm, path, len(data), FILE_CHUNK_BYTES))
            data += chunk.data
            if chunk.eof or not chunk.data:
                return bytes(data)

    async def write(self, path: str, data: bytes | str, *, mode: str | None = None) -> WriteOut:
        raw = data.encode() if isinstance(data, str) else data
        written: WriteOut | None = None
        for i, chunk in enumerate(_chunks(raw)):
            written = await self._nexus.send(calls.write_file(self._vm, path, chunk, i > 0, mode if i == 0 else None))
        assert written is not None  # _chunks yields at least one
        return written

    async def read_archive(self, path: str) -> AsyncIterator[bytes]:
        """As ``Files.read_archive``."""
        nexus = self._nexus
        with _reaching(nexus.connection.where):
            async with nexus._http.stream("GET", calls.archive_path(self._vm), params={"path": path}) as response:
                if response.status_code >= 400:
                    await response.aread()
                    calls.check(response)
                try:
                    async for data in response.aiter_bytes():
                        yield data
                except httpx.RemoteProtocolError as exc:
                    raise Unavailable(_BROKE_OFF.format(path)) from exc

    async def write_archive(self, path: str, chunks: AsyncIterable[bytes], *, cp: bool = False) -> ArchiveOut:
        """As ``Files.write_archive``."""
        return await self._nexus.send(calls.write_archive(self._vm, path, chunks, cp))


class AsyncDrives(_AsyncResource):
    async def list(self) -> list[DriveOut]:
        return await self._nexus.send(calls.list_drives())

    async def get(self, ref: str) -> DriveOut:
        return await self._nexus.send(calls.get_drive(ref))

    async def create(self, name: str, *, image: str | None = None, size_mib: int | None = None) -> DriveOut:
        return await self._nexus.send(calls.create_drive(name, image, size_mib))

    async def attach(self, ref: str, vm: str, *, mount: str | None = None) -> DriveOut:
        return await self._nexus.send(calls.attach_drive(ref, vm, mount))

    async def detach(self, ref: str) -> DriveOut:
        return await self._nexus.send(calls.detach_drive(ref))

    async def resize(self, ref: str, size_mib: int) -> DriveOut:
        return await self._nexus.send(calls.resize_drive(ref, size_mib))

    async def remove(self, ref: str) -> None:
        await self._nexus.send(calls.remove_drive(ref))


class AsyncSnapshots(_AsyncResource):
    async def list(self, vm: str) -> list[SnapshotOut]:
        return await self._nexus.send(calls.list_snapshots(vm))

    async def create(self, vm: str, name: str | None = None) -> SnapshotOut:
        return await self._nexus.send(calls.create_snapshot(vm, name))

    async def rollback(self, vm: str, name: str, *, restart: bool = False) -> VmOut:
        return await self._nexus.send(calls.rollback(vm, name, restart))

    async def checkpoint(self, vm: str, name: str | None = None) -> SnapshotOut:
        return await self._nexus.send(calls.create_checkpoint(vm, name))

    async def restore(self, vm: str, name: str) -> VmOut:
        return await self._nexus.send(calls.restore(vm, name))

    async def remove(self, vm: str, name: str) -> None:
        await self._nexus.send(calls.remove_snapshot(vm, name))
