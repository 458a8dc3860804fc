"""The QEMU ``-M microvm`` driver: launches one qemu-system-x86_64 per VM and hands back its process.

Owns the QEMU process (spawned in its own session, reaped by asyncio so no zombie is left), its runtime dir
(QMP, virtio-serial and pid sockets), and the QMP connection used for graceful power-off. It does not decide
KVM vs TCG (``accel``), build images or watch the guest agent: those belong to their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable
from pathlib import Path

from qemu.qmp import QMPClient, Runstate
from qemu.qmp.error import QMPError

from nexus.domain import DriverError, ExitStatus, GuestPort, LaunchSpec, NexusError, SpawnHook, VmmRecord
from nexus.domain.retry import retry
from nexus.protocol import CONTROL_PORT_NAME, GATEWAY_PORT_NAME, MCP_PORT_NAME
from nexus.vmm.process import VmmProcess, child_exit, claim, pidfd_exit, start_time
from nexus.vmm.qemu.accel import AccelChoice, choose_accel
from nexus.vmm.qemu.argv import QEMU_BINARY, Accel, NetIface, QemuLaunch, SerialPort, qemu_argv
from nexus.vmm.qemu.migration import load_state, save_state

log = logging.getLogger(__name__)
# qemu.qmp logs every connection attempt and end-of-file on its own; the driver reports what matters.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

PORT_NAMES = {GuestPort.CONTROL: CONTROL_PORT_NAME, GuestPort.MCP: MCP_PORT_NAME, GuestPort.GATEWAY: GATEWAY_PORT_NAME}
STARTUP_TIMEOUT_S = 10.0
STDERR_TAIL_BYTES = 2000
QMP_SOCKET = "qmp.sock"
RUNTIME_DIR_KEY = "runtime_dir"  # in the VmmRecord's detail


def _socket_paths(runtime_dir: Path) -> dict[GuestPort, Path]:
    return {port: runtime_dir / f"{port.value}.sock" for port in GuestPort}


class QemuProcess(VmmProcess):
    """A running QEMU: its guest ports are virtio-serial Unix sockets, power-off and pause go through QMP. QMP is
    (re)connected on first need, so an adopted QEMU is reattached without touching it."""

    power_off_name = "system_powerdown"

    def __init__(
        self,
        record: VmmRecord,
        exited: Awaitable[ExitStatus],
        runtime_dir: Path,
        name: str,
        qmp: QMPClient | None = None,
    ) -> None:
        self._sockets = _socket_paths(runtime_dir)
        self._qmp_socket = runtime_dir / QMP_SOCKET
        self._name = name
        self._qmp = qmp
        self._qmp_lock = asyncio.Lock()
        super().__init__(record, exited, runtime_dir)

    @property
    def accel(self) -> str:
        return self.record.accel

    async def connect(self, port: GuestPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(self._sockets[port]), limit=1024 * 1024)
        except OSError as exc:
            raise DriverError(f"cannot connect to the guest's {port} port: {exc.strerror or exc}") from exc

    async def pause(self) -> None:
        await self._qmp_command("stop")

    async def resume(self) -> None:
        await self._qmp_command("cont")

    async def checkpoint(self, directory: Path) -> None:
        try:
            size = await save_state(await self._client(), directory)
        except (QMPError, OSError) as exc:
            raise DriverError(f"QEMU pid {self.pid} could not save its state: {exc}") from exc
        log.info("vm %s: state saved (%d MiB)", self._name, size // 2**20)

    async def _client(self) -> QMPClient:
        async with self._qmp_lock:
            if self._qmp is None or self._qmp.runstate != Runstate.RUNNING:
                if self._qmp is not None:
                    with contextlib.suppress(Exception):
                        await self._qmp.disconnect()
                qmp = QMPClient(f"vm-{self._name}")
                await qmp.connect(str(self._qmp_socket))
                self._qmp = qmp
            return self._qmp

    async def _qmp_command(self, command: str) -> None:
        try:
            await asyncio.wait_for(self._execute(command), 5.0)
        except (QMPError, OSError, TimeoutError) as exc:
            raise DriverError(f"QEMU pid {self.pid} did not {command}: {exc}") from exc

    async def _execute(self, command: str) -> None:
        await (await self._client()).execute(command)

    async def _request_power_off(self) -> None:
        await self._execute("system_powerdown")  # an ACPI power-button press on microvm

    async def _disconnect(self) -> None:
        if self._qmp is not None:
            await self._qmp.disconnect()


class QemuDriver:
    """Launches QEMU microVMs. KVM or TCG is decided by a boot probe per QEMU + kernel version (cached on
    disk by ``nexus.vmm.qemu.accel``), so the first boot with a new kernel pays a few seconds once."""

    def __init__(
        self, accel_cache: Path, tsc_khz: int | None, binary: str = QEMU_BINARY, note: str | None = None
    ) -> None:
        """``note``: what whoever chose this driver adds to its reason (e.g. why not Firecracker)."""
        self._note = f" ({note})" if note else ""
        self._accel_cache = accel_cache
        self._tsc_khz = tsc_khz
        self._binary = binary
        self._choice: AccelChoice | None = None
        self._choices: dict[str, AccelChoice] = {}  # by kernel version: the probe cache without its I/O

    @property
    def name(self) -> str:
        return "qemu"

    @property
    def reason(self) -> str:
        if self._choice is None:
            return f"qemu; KVM or TCG is decided by a probe at the first boot{self._note}"
        return f"qemu with {self._choice.accel.value}: {self._choice.reason}{self._note}"

    async def choose_accel(self, spec: LaunchSpec) -> Accel:
        choice = self._choices.get(spec.kernel_version)
        if choice is None:
            choice = await asyncio.to_thread(
                choose_accel, self._accel_cache, spec.kernel, spec.initrd, spec.kernel_version, binary=self._binary
            )
            self._choices[spec.kernel_version] = choice
        self._choice = choice
        return choice.accel

    def launch_argv(self, spec: LaunchSpec, accel: Accel) -> list[str]:
        """The argv for ``spec`` (pure; exposed for tests and benchmarks)."""
        sockets = _socket_paths(spec.runtime_dir)
        return qemu_argv(
            QemuLaunch(
                kernel=spec.kernel,
                initrd=spec.initrd,
                root_drive=spec.root_drive,
                qmp_socket=spec.runtime_dir / QMP_SOCKET,
                console_log=spec.console_log,
                accel=accel,
                vcpus=spec.vcpus,
                mem_mib=spec.mem_mib,
                ports=tuple(
                    SerialPort(PORT_NAMES[p], sockets[p])
                    for p in GuestPort
                    if spec.gateway or p is not GuestPort.GATEWAY
                ),
                tsc_khz=self._tsc_khz,
                name=spec.name,
                cmdline_extra=spec.kernel_args,
                net=NetIface(spec.net.tap, spec.net.mac) if spec.net is not None else None,
                binary=self._binary,
                data_drives=spec.data_drives,
                incoming=spec.resume_from is not None,
            )
        )

    def forget(self, vm_id: str, record: VmmRecord | None) -> None:
        """QEMU keeps nothing outside the VM's runtime dir."""
        if record is not None and RUNTIME_DIR_KEY in record.detail:
            shutil.rmtree(record.detail[RUNTIME_DIR_KEY], ignore_errors=True)

    async def adopt(self, vm_id: str, name: str, record: VmmRecord) -> QemuProcess:
        runtime_dir = Path(record.detail[RUNTIME_DIR_KEY])
        fd = claim(record, vm_id, runtime_dir)
        log.info("vm %s: adopted qemu pid %d (%s)", name, record.pid, record.accel)
        return QemuProcess(record, pidfd_exit(fd, record.pid), runtime_dir, name)

    async def launch(self, spec: LaunchSpec, on_spawn: SpawnHook) -> QemuProcess:
        accel = await self.choose_accel(spec)
        argv = self.launch_argv(spec, accel)
        shutil.rmtree(spec.runtime_dir, ignore_errors=True)
        spec.runtime_dir.mkdir(parents=True, mode=0o700)
        spec.console_log.parent.mkdir(parents=True, exist_ok=True)
        stderr_path = spec.runtime_dir / "qemu.stderr"
        try:
            with stderr_path.open("wb") as stderr:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,  # a Ctrl-C meant for nexusd must not kill its VMs behind its back
                )
        except OSError as exc:
            shutil.rmtree(spec.runtime_dir, ignore_errors=True)
            raise DriverError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        record = VmmRecord(
            pid=proc.pid,
            start_time=start_time(proc.pid),
            driver=self.name,
            accel=accel.value,
            detail={RUNTIME_DIR_KEY: str(spec.runtime_dir)},
        )
        qmp = QMPClient(f"vm-{spec.name}")
        try:
            on_spawn(record)
            await self._connect_qmp(proc, qmp, spec.runtime_dir / QMP_SOCKET)
            if spec.resume_from is not None:
                await load_state(qmp, spec.resume_from)
                await qmp.execute("cont")
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            with contextlib.suppress(Exception):  # a QEMU that died under QMP leaves the client's reader failed
                await qmp.disconnect()
            tail = _tail(stderr_path)
            shutil.rmtree(spec.runtime_dir, ignore_errors=True)
            if not isinstance(exc, Exception) or (isinstance(exc, NexusError) and not isinstance(exc, DriverError)):
                raise  # cancelled, or the store could not record the process: not QEMU's fault
            what = "resume from its saved state" if spec.resume_from is not None else "start"
            raise DriverError(f"QEMU did not {what} (exit status {proc.returncode}): {tail}") from None
        log.info("vm %s: qemu pid %d (%s, %d vCPU, %d MiB)", spec.name, proc.pid, accel.value, spec.vcpus, spec.mem_mib)
        return QemuProcess(record, child_exit(proc), spec.runtime_dir, spec.name, qmp)

    @staticmethod
    async def _connect_qmp(proc: asyncio.subprocess.Process, qmp: QMPClient, path: Path) -> None:
        """QEMU creates its sockets before it starts the guest: once QMP answers, it runs."""

        def exited() -> DriverError | None:
            return DriverError("QEMU exited") if proc.returncode is not None else None

        await retry(
            lambda: qmp.connect(str(path)), retry_on=(QMPError, OSError), timeout_s=STARTUP_TIMEOUT_S, give_up=exited
        )


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - STDERR_TAIL_BYTES))
            text = fh.read().decode(errors="replace").strip()
    except OSError:
        return "(no stderr)"
    return text or "(no stderr)"
