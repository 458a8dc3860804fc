"""The Firecracker driver: launches one ``firecracker`` per VM, configures it over its API socket, hands back its
process.

Owns the Firecracker process (spawned in its own session, reaped by asyncio so no zombie is left), its runtime
dir (API socket, hybrid vsock socket, Firecracker's log and metrics), the API client and the ``GuestListener``
the agent's control stream dials (``<runtime>/vsock.sock_1024``, opened before the guest boots). The guest
link is Firecracker's hybrid vsock: control is guest-initiated (accepted on the listener), MCP host-initiated
(``CONNECT 1025``). A graceful stop is ``SendCtrlAltDel``: the guest's init reboots and, with ``reboot=k`` on the
kernel command line, Firecracker exits on the guest's reboot. Firecracker runs unjailed here; the jailer argv and
chroot plan are built by :mod:`nexus.vmm.firecracker.jailer` but not used by this driver yet. It does not decide
whether Firecracker can run on this host (``nexus.daemon.drivers`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from nexus.channel.vsock import GuestListener, VsockError, connect_hybrid, guest_listener_path
from nexus.domain import DriverError, GuestPort, LaunchSpec, NexusError
from nexus.domain.retry import retry
from nexus.protocol import CONTROL_VSOCK_PORT, MCP_VSOCK_PORT
from nexus.vmm.firecracker.api import FirecrackerApi
from nexus.vmm.firecracker.argv import FIRECRACKER_BINARY, firecracker_argv
from nexus.vmm.firecracker.config import (
    BootSource,
    Logger,
    LogLevel,
    MachineConfig,
    Metrics,
    MicroVmConfig,
    Vsock,
    boot_args,
    data_drive,
    preboot_requests,
    root_drive,
)
from nexus.vmm.process import VmmProcess, kill_group

log = logging.getLogger(__name__)

ACCEL = "kvm"  # Firecracker has no other
GUEST_CID = 3
TRANSPORT_ARG = "nexus.transport=vsock"
STARTUP_TIMEOUT_S = 10.0
API_TIMEOUT_S = 5.0
CONTROL_ACCEPT_S = 1.0  # one wait for the agent's dial; connect_peer retries it until its own deadline
MCP_CONNECT_S = 5.0
STDERR_TAIL_BYTES = 2000
UNIX_PATH_MAX_BYTES = 107  # sun_path is 108 bytes with its NUL


@dataclass(frozen=True, slots=True)
class RuntimeFiles:
    """Where one VM's Firecracker keeps its sockets and files (all inside the VM's runtime dir)."""

    runtime_dir: Path

    @property
    def api_socket(self) -> Path:
        return self.runtime_dir / "api.sock"

    @property
    def vsock_socket(self) -> Path:
        return self.runtime_dir / "vsock.sock"

    @property
    def log_file(self) -> Path:
        return self.runtime_dir / "firecracker.log"

    @property
    def metrics_file(self) -> Path:
        return self.runtime_dir / "metrics.json"

    @property
    def stderr_file(self) -> Path:
        return self.runtime_dir / "firecracker.stderr"

    def longest_socket(self) -> Path:
        """The longest Unix socket path this VM uses (the vsock listener ``<uds>_<port>`` and the agent's side)."""
        return guest_listener_path(self.vsock_socket, 4294967295)


def microvm_config(spec: LaunchSpec, files: RuntimeFiles) -> MicroVmConfig:
    """What ``spec`` asks of Firecracker, before ``InstanceStart`` (pure; exposed for tests)."""
    args = boot_args(extra=(TRANSPORT_ARG, *spec.cmdline_extra))
    return MicroVmConfig(
        machine=MachineConfig(vcpu_count=spec.vcpus, mem_mib=spec.mem_mib),
        boot=BootSource(kernel=spec.kernel, boot_args=args, initrd=spec.initrd),
        drives=(root_drive(spec.root_drive), *(data_drive(d.drive_id, d.path, d.read_only) for d in spec.data_drives)),
        vsock=Vsock(guest_cid=GUEST_CID, uds_path=files.vsock_socket),
        logger=Logger(log_path=files.log_file, level=LogLevel.INFO),
        metrics=Metrics(metrics_path=files.metrics_file),
    )


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


class FirecrackerProcess(VmmProcess):
    """A running Firecracker: control stream from a guest listener, MCP over hybrid vsock, stop by
    SendCtrlAltDel, pause/resume by PATCH /vm. Once reaped, its listener and API client are closed."""

    power_off_name = "SendCtrlAltDel"

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        files: RuntimeFiles,
        api: FirecrackerApi,
        listener: GuestListener,
        connect_timeout_s: float = MCP_CONNECT_S,
    ) -> None:
        self._files = files
        self._api = api
        self._listener = listener
        self._connect_timeout_s = connect_timeout_s
        super().__init__(proc, files.runtime_dir)

    @property
    def accel(self) -> str:
        return ACCEL

    async def connect(self, port: GuestPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.returncode is not None:
            raise DriverError(f"Firecracker pid {self.pid} has exited")
        try:
            if port is GuestPort.CONTROL:  # the agent dials the host; take its next connection
                return await self._listener.accept(CONTROL_ACCEPT_S)
            return await connect_hybrid(self._files.vsock_socket, MCP_VSOCK_PORT, self._connect_timeout_s)
        except VsockError as exc:
            raise DriverError(f"cannot connect to the guest's {port} port: {exc}") from exc

    async def pause(self) -> None:
        await self._vm_state("pause", self._api.pause)

    async def resume(self) -> None:
        await self._vm_state("resume", self._api.resume)

    async def _vm_state(self, what: str, call: Callable[[], Awaitable[None]]) -> None:
        if self.returncode is not None:
            raise DriverError(f"Firecracker pid {self.pid} has exited; nothing to {what}")
        try:
            await asyncio.wait_for(call(), API_TIMEOUT_S)
        except TimeoutError as exc:
            raise DriverError(f"Firecracker pid {self.pid} did not {what} in time") from exc

    async def _request_power_off(self) -> None:
        # x86 Firecracker: the guest reboots on Ctrl-Alt-Del and Firecracker exits with it.
        await self._api.send_ctrl_alt_del()

    async def _release(self) -> None:
        await self._listener.close()
        await self._api.aclose()


class FirecrackerDriver:
    """Launches Firecracker microVMs (KVM only). ``binary`` is the firecracker executable (or a stand-in for it
    that takes the same argv); ``reason`` is why the daemon chose this driver."""

    def __init__(self, binary: str = FIRECRACKER_BINARY, reason: str = "firecracker") -> None:
        self._binary = binary
        self._reason = reason

    @property
    def name(self) -> str:
        return "firecracker"

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def binary(self) -> str:
        return self._binary

    def launch_argv(self, spec: LaunchSpec) -> list[str]:
        """The argv for ``spec`` (pure; exposed for tests)."""
        return firecracker_argv(
            api_sock=RuntimeFiles(spec.runtime_dir).api_socket, vm_id=spec.vm_id, binary=self._binary
        )

    async def launch(self, spec: LaunchSpec) -> FirecrackerProcess:
        files = RuntimeFiles(spec.runtime_dir)
        try:
            argv = self.launch_argv(spec)
            config = microvm_config(spec, files)
        except NexusError as exc:
            raise DriverError(f"cannot configure Firecracker for VM {spec.name}: {exc.message}") from exc
        if len(str(files.longest_socket()).encode()) > UNIX_PATH_MAX_BYTES:
            raise DriverError(
                f"the runtime dir {spec.runtime_dir} is too long for Unix socket paths; use a shorter one"
            )
        if not _is_elf(spec.kernel):
            raise DriverError(f"Firecracker boots an uncompressed ELF vmlinux; {spec.kernel} is not one")
        shutil.rmtree(spec.runtime_dir, ignore_errors=True)
        spec.runtime_dir.mkdir(parents=True, mode=0o700)
        spec.console_log.parent.mkdir(parents=True, exist_ok=True)
        for path in (files.log_file, files.metrics_file):  # Firecracker opens these; it does not create them
            path.touch()
        listener = GuestListener(files.vsock_socket, CONTROL_VSOCK_PORT)
        try:
            await listener.start()  # before boot: the agent dials the host as soon as it runs
        except VsockError as exc:
            shutil.rmtree(spec.runtime_dir, ignore_errors=True)
            raise DriverError(f"cannot listen for the guest's control stream: {exc}") from exc
        try:
            with spec.console_log.open("wb") as console, files.stderr_file.open("wb") as stderr:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=console,  # the guest's serial console
                    stderr=stderr,
                    start_new_session=True,  # a Ctrl-C meant for nexusd must not kill its VMs behind its back
                )
        except OSError as exc:
            await listener.close()
            shutil.rmtree(spec.runtime_dir, ignore_errors=True)
            raise DriverError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        api = FirecrackerApi(files.api_socket, timeout_s=API_TIMEOUT_S)
        try:
            await self._configure(proc, api, config)
        except BaseException as exc:
            kill_group(proc.pid)
            await proc.wait()
            await listener.close()
            with contextlib.suppress(Exception):
                await api.aclose()
            tail = _tail(files.stderr_file)
            shutil.rmtree(spec.runtime_dir, ignore_errors=True)
            if not isinstance(exc, Exception):
                raise
            what = exc.message if isinstance(exc, NexusError) else str(exc) or type(exc).__name__
            raise DriverError(
                f"Firecracker did not start VM {spec.name} (exit status {proc.returncode}): {what}"
                + (f"\nstderr: {tail}" if tail else "")
            ) from None
        log.info("vm %s: firecracker pid %d (%d vCPU, %d MiB)", spec.name, proc.pid, spec.vcpus, spec.mem_mib)
        return FirecrackerProcess(proc, files, api, listener)

    @staticmethod
    async def _configure(proc: asyncio.subprocess.Process, api: FirecrackerApi, config: MicroVmConfig) -> None:
        """Wait for the API socket to answer, send every pre-boot resource, then ``InstanceStart``."""

        def exited() -> DriverError | None:
            return DriverError("Firecracker exited before its API answered") if proc.returncode is not None else None

        await retry(api.describe_instance, retry_on=DriverError, timeout_s=STARTUP_TIMEOUT_S, give_up=exited)
        for request in preboot_requests(config):
            await api.send(request)
        await api.instance_start()


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - STDERR_TAIL_BYTES))
            return fh.read().decode(errors="replace").strip()
    except OSError:
        return ""
