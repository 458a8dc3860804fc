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
from pathlib import Path

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from nexus.domain import DriverError, GuestPort, LaunchSpec
from nexus.domain.retry import retry
from nexus.protocol import CONTROL_PORT_NAME, MCP_PORT_NAME
from nexus.vmm.process import VmmProcess
from nexus.vmm.qemu.accel import AccelChoice, choose_accel
from nexus.vmm.qemu.argv import QEMU_BINARY, Accel, NetIface, QemuLaunch, SerialPort, qemu_argv

log = logging.getLogger(__name__)
# qemu.qmp logs every connection attempt and end-of-file on its own; the driver reports what matters.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

PORT_NAMES = {GuestPort.CONTROL: CONTROL_PORT_NAME, GuestPort.MCP: MCP_PORT_NAME}
STARTUP_TIMEOUT_S = 10.0
STDERR_TAIL_BYTES = 2000


def _socket_paths(runtime_dir: Path) -> dict[GuestPort, Path]:
    return {port: runtime_dir / f"{port.value}.sock" for port in GuestPort}


class QemuProcess(VmmProcess):
    """A running QEMU: its guest ports are virtio-serial Unix sockets, power-off and pause go through QMP."""

    power_off_name = "system_powerdown"

    def __init__(self, proc: asyncio.subprocess.Process, accel: Accel, runtime_dir: Path, qmp: QMPClient) -> None:
        self._accel = accel
        self._sockets = _socket_paths(runtime_dir)
        self._qmp = qmp
        super().__init__(proc, runtime_dir)

    @property
    def accel(self) -> str:
        return self._accel.value

    async def connect(self, port: GuestPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(self._sockets[port]), limit=1024 * 1024)
        except OSError as exc:
            raise DriverError(f"cannot connect to the guest's {port} port: {exc.strerror or exc}") from exc

    async def pause(self) -> None:
        await self._qmp_command("stop")

    async def resume(self) -> None:
        await self._qmp_command("cont")

    async def _qmp_command(self, command: str) -> None:
        try:
            await asyncio.wait_for(self._qmp.execute(command), 5.0)
        except (QMPError, OSError, TimeoutError) as exc:
            raise DriverError(f"QEMU pid {self.pid} did not {command}: {exc}") from exc

    async def _request_power_off(self) -> None:
        await self._qmp.execute("system_powerdown")  # an ACPI power-button press on microvm

    async def _release(self) -> None:
        await self._qmp.disconnect()


class QemuDriver:
    """Launches QEMU microVMs. KVM or TCG is decided by a boot probe per QEMU + kernel version (cached on
    disk by ``nexus.vmm.qemu.accel``), so the first boot with a new kernel pays a few seconds once."""

    def __init__(self, accel_cache: Path, tsc_khz: int | None, binary: str = QEMU_BINARY) -> None:
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
            return "qemu; KVM or TCG is decided by a probe at the first boot"
        return f"qemu with {self._choice.accel.value}: {self._choice.reason}"

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
                qmp_socket=spec.runtime_dir / "qmp.sock",
                console_log=spec.console_log,
                accel=accel,
                vcpus=spec.vcpus,
                mem_mib=spec.mem_mib,
                ports=tuple(SerialPort(PORT_NAMES[p], sockets[p]) for p in GuestPort),
                tsc_khz=self._tsc_khz,
                name=spec.name,
                cmdline_extra=spec.kernel_args,
                net=NetIface(spec.net.tap, spec.net.mac) if spec.net is not None else None,
                binary=self._binary,
                data_drives=spec.data_drives,
            )
        )

    def forget(self, vm_id: str) -> None:
        """QEMU keeps nothing outside the VM's runtime dir."""

    async def launch(self, spec: LaunchSpec) -> QemuProcess:
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
        qmp = QMPClient(f"vm-{spec.name}")
        try:
            await self._connect_qmp(proc, qmp, spec.runtime_dir / "qmp.sock")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            tail = _tail(stderr_path)
            shutil.rmtree(spec.runtime_dir, ignore_errors=True)
            raise DriverError(f"QEMU did not start (exit status {proc.returncode}): {tail}") from None
        log.info("vm %s: qemu pid %d (%s, %d vCPU, %d MiB)", spec.name, proc.pid, accel.value, spec.vcpus, spec.mem_mib)
        return QemuProcess(proc, accel, spec.runtime_dir, qmp)

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
