"""The Firecracker driver: launches one ``firecracker`` per VM, configures it over its API socket, hands back its
process.

Owns the Firecracker process (spawned in its own session, reaped by asyncio so no zombie is left), its runtime
dir (API socket, hybrid vsock socket, Firecracker's log and metrics), the API client and the ``GuestListener``s
the agent's control and gateway streams dial (``<runtime>/vsock.sock_1024`` and ``_1026``, opened before the guest
boots). The guest link is Firecracker's hybrid vsock: control and gateway are guest-initiated (accepted on the
listeners), MCP host-initiated
(``CONNECT 1025``). A graceful stop is ``SendCtrlAltDel``: the guest's init reboots and, with ``reboot=k`` on the
kernel command line, Firecracker exits on the guest's reboot. A checkpoint is ``PUT /snapshot/create`` into the
checkpoint dir; a launch with ``resume_from`` loads it into a new Firecracker instead of configuring and booting one
(:mod:`nexus.vmm.firecracker.snapshot`). Every name Firecracker is given is the same for every VM (relative to the
runtime dir it runs in, or in-chroot), so a snapshot names the files of whichever VM loads it. With
:class:`JailerOptions` Firecracker runs through
the jailer: kernel, initrd and drives are hard-linked into ``<chroot_base>/<binary name>/<vm id>/root``, the
writable ones and Firecracker's log, metrics and the listeners are handed to the jailed uid, every path sent
over the API is the in-chroot one, and the chroot is removed once Firecracker is reaped. It does not decide
whether Firecracker can run on this host (``nexus.daemon.drivers`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from nexus.channel.vsock import GuestListener, VsockError, connect_hybrid, guest_listener_path
from nexus.domain import DriverError, ExitStatus, GuestPort, LaunchSpec, NexusError, SpawnHook, VmmRecord
from nexus.domain.retry import retry
from nexus.protocol import CONTROL_VSOCK_PORT, GATEWAY_VSOCK_PORT, MCP_VSOCK_PORT
from nexus.vmm.firecracker import snapshot
from nexus.vmm.firecracker.api import FirecrackerApi
from nexus.vmm.firecracker.argv import FIRECRACKER_BINARY, firecracker_argv
from nexus.vmm.firecracker.config import (
    BootSource,
    Logger,
    LogLevel,
    MachineConfig,
    Metrics,
    MicroVmConfig,
    NetworkInterface,
    SnapshotFiles,
    SnapshotLoad,
    Vsock,
    boot_args,
    data_drive,
    preboot_requests,
    restore_requests,
    root_drive,
    supports_vsock_override,
)
from nexus.vmm.firecracker.jailer import (
    ChrootLayout,
    ChrootPlan,
    JailerLaunch,
    JailerOptions,
    PlacedFile,
    cgroup_dirs,
    chroot_layout,
    jailer_argv,
    place_files,
    plan_chroot,
    plan_links,
)
from nexus.vmm.process import VmmProcess, child_exit, claim, kill_group, pidfd_exit, runs_vm, start_time

log = logging.getLogger(__name__)

ACCEL = "kvm"  # Firecracker has no other
GUEST_CID = 3
NET_IFACE_ID = "eth0"
TRANSPORT_ARG = "nexus.transport=vsock"
STARTUP_TIMEOUT_S = 10.0
API_TIMEOUT_S = 5.0
SNAPSHOT_TIMEOUT_S = 300.0  # writing or mapping the whole guest memory
CONTROL_ACCEPT_S = 1.0  # one wait for the agent's dial; connect_peer retries it until its own deadline
MCP_CONNECT_S = 5.0
STDERR_TAIL_BYTES = 2000
UNIX_PATH_MAX_BYTES = 107  # sun_path is 108 bytes with its NUL
# Keys of the VmmRecord's detail: where this VM's files are, as launched (a changed config must not move them).
RUNTIME_DIR_KEY = "runtime_dir"
FILES_DIR_KEY = "files_dir"
INNER_DIR_KEY = "inner_dir"
CHROOT_KEY = "chroot"
GATEWAY_KEY = "gateway"  # "1": a portal, whose agent dials the gateway port too
OWNER_KEY = "owner"  # uid:gid the control listener belongs to (jailed)
CGROUPS_KEY = "cgroups"  # the jailer's cgroup dirs for this VM, ":"-separated (removed once Firecracker is gone)
PROC_MOUNTS = Path("/proc/mounts")


@dataclass(frozen=True, slots=True)
class RuntimeFiles:
    """Where one VM's Firecracker keeps its sockets, log, metrics and links to its drives: ``files_dir`` on the host,
    which Firecracker itself sees as ``inner_dir`` (``.``, its working dir, when it runs directly; ``/`` of its chroot
    under the jailer). Either way the names Firecracker is given are the same for every VM, so a snapshot, which
    records them, names the files of whichever VM loads it. nexusd's own files for the VM (Firecracker's stderr)
    stay in ``runtime_dir``."""

    runtime_dir: Path
    files_dir: Path
    inner_dir: PurePosixPath

    @classmethod
    def direct(cls, runtime_dir: Path) -> RuntimeFiles:
        return cls(runtime_dir, runtime_dir, PurePosixPath("."))

    @classmethod
    def jailed(cls, runtime_dir: Path, chroot: ChrootLayout) -> RuntimeFiles:
        return cls(runtime_dir, chroot.root, PurePosixPath("/"))

    def inner(self, host_path: Path) -> PurePosixPath:
        """``host_path`` (inside ``files_dir``) as Firecracker names it."""
        return self.inner_dir / host_path.relative_to(self.files_dir)

    @property
    def api_socket(self) -> Path:
        return self.files_dir / "api.sock"

    @property
    def vsock_socket(self) -> Path:
        return self.files_dir / "vsock.sock"

    @property
    def log_file(self) -> Path:
        return self.files_dir / "firecracker.log"

    @property
    def metrics_file(self) -> Path:
        return self.files_dir / "metrics.json"

    @property
    def stderr_file(self) -> Path:
        return self.runtime_dir / "firecracker.stderr"

    def longest_socket(self) -> Path:
        """The longest Unix socket path this VM uses (the vsock listener ``<uds>_<port>`` and the agent's side)."""
        return guest_listener_path(self.vsock_socket, 4294967295)


def microvm_config(spec: LaunchSpec, files: RuntimeFiles) -> MicroVmConfig:
    """What ``spec`` asks of Firecracker, before ``InstanceStart`` (pure; exposed for tests). Kernel, initrd and
    drives are host paths; a jailed launch rewrites them with :func:`plan_chroot`."""
    args = boot_args(extra=(TRANSPORT_ARG, *spec.kernel_args))
    net = spec.net
    return MicroVmConfig(
        machine=MachineConfig(vcpu_count=spec.vcpus, mem_mib=spec.mem_mib),
        boot=BootSource(kernel=spec.kernel, boot_args=args, initrd=spec.initrd),
        drives=(root_drive(spec.root_drive), *(data_drive(d.drive_id, d.path, d.read_only) for d in spec.data_drives)),
        network=(NetworkInterface(NET_IFACE_ID, net.tap, net.mac),) if net is not None else (),
        vsock=Vsock(guest_cid=GUEST_CID, uds_path=files.inner(files.vsock_socket)),
        logger=Logger(log_path=files.inner(files.log_file), level=LogLevel.INFO),
        metrics=Metrics(metrics_path=files.inner(files.metrics_file)),
    )


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


DIALED = {GuestPort.CONTROL: CONTROL_VSOCK_PORT, GuestPort.GATEWAY: GATEWAY_VSOCK_PORT}  # the agent dials these


class Listeners:
    """The host ports the agent dials (control, and a portal's gateway): opened before boot, handed to the jailed
    uid and closed together."""

    def __init__(self, vsock_socket: Path, gateway: bool) -> None:
        ports = DIALED if gateway else {GuestPort.CONTROL: CONTROL_VSOCK_PORT}  # only a portal has a gateway
        self.by_port = {port: GuestListener(vsock_socket, number) for port, number in ports.items()}

    @property
    def paths(self) -> list[Path]:
        return [listener.path for listener in self.by_port.values()]

    async def start(self) -> None:
        for listener in self.by_port.values():
            await listener.start()

    async def close(self) -> None:
        for listener in self.by_port.values():
            await listener.close()

    def chown(self, uid: int, gid: int) -> None:
        for path in self.paths:
            os.chown(path, uid, gid)


class FirecrackerProcess(VmmProcess):
    """A running Firecracker: control stream from a guest listener, MCP over hybrid vsock, stop by
    SendCtrlAltDel, pause/resume by PATCH /vm. Once it exits, its listener and API client are closed and its
    chroot removed."""

    power_off_name = "SendCtrlAltDel"

    def __init__(
        self,
        record: VmmRecord,
        exited: Awaitable[ExitStatus],
        files: RuntimeFiles,
        api: FirecrackerApi,
        listeners: Listeners,
        chroot: Path | None = None,
        connect_timeout_s: float = MCP_CONNECT_S,
        cgroups: tuple[Path, ...] = (),
    ) -> None:
        self._files = files
        self._api = api
        self._listeners = listeners
        self._chroot = chroot
        self._cgroups = cgroups
        self._connect_timeout_s = connect_timeout_s
        super().__init__(record, exited, files.runtime_dir)

    @property
    def accel(self) -> str:
        return ACCEL

    async def connect(self, port: GuestPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.exit_status is not None:
            raise DriverError(f"Firecracker pid {self.pid} has exited")
        try:
            if port in DIALED:  # the agent dials the host; take its next connection
                listener = self._listeners.by_port.get(port)
                if listener is None:
                    raise DriverError(f"VM has no {port} port")
                return await listener.accept(CONTROL_ACCEPT_S)
            return await connect_hybrid(self._files.vsock_socket, MCP_VSOCK_PORT, self._connect_timeout_s)
        except VsockError as exc:
            raise DriverError(f"cannot connect to the guest's {port} port: {exc}") from exc

    async def pause(self) -> None:
        await self._vm_state("pause", self._api.pause)

    async def resume(self) -> None:
        await self._vm_state("resume", self._api.resume)

    async def checkpoint(self, directory: Path) -> None:
        if self._chroot is None and self._files.inner_dir.is_absolute():
            # Launched by an older nexusd with absolute paths: its snapshot would name this VM's own drives.
            raise DriverError(
                f"Firecracker pid {self.pid} was started by an older nexusd; restart the VM to checkpoint it"
            )
        await self.pause()
        staged = self._stage_snapshot()
        target = (
            snapshot.in_directory(directory)
            if staged is None
            else SnapshotFiles(self._files.inner(Path(staged.snapshot_path)), self._files.inner(Path(staged.mem_path)))
        )
        try:
            await self._api.create_snapshot(target, timeout_s=SNAPSHOT_TIMEOUT_S)
            if staged is not None:
                snapshot.collect(staged, directory)
            size = await asyncio.to_thread(snapshot.seal, directory)
        except OSError as exc:
            raise DriverError(f"cannot keep the snapshot of Firecracker pid {self.pid}: {exc}") from exc
        finally:
            if staged is not None:
                snapshot.discard(staged)
        log.info("firecracker pid %d: snapshot taken (%d MiB)", self.pid, size // 2**20)

    def _stage_snapshot(self) -> SnapshotFiles | None:
        """Jailed (an owner on record): the files in the chroot that Firecracker writes its snapshot into."""
        owner = self.record.detail.get(OWNER_KEY)
        if not owner:
            return None
        uid, gid = (int(x) for x in owner.split(":"))
        try:
            return snapshot.stage(self._files.files_dir, uid, gid)
        except OSError as exc:
            raise DriverError(f"cannot prepare the snapshot files of Firecracker pid {self.pid}: {exc}") from exc

    async def _vm_state(self, what: str, call: Callable[[], Awaitable[None]]) -> None:
        if self.exit_status is not None:
            raise DriverError(f"Firecracker pid {self.pid} has exited; nothing to {what}")
        try:
            await asyncio.wait_for(call(), API_TIMEOUT_S)
        except TimeoutError as exc:
            raise DriverError(f"Firecracker pid {self.pid} did not {what} in time") from exc

    async def _request_power_off(self) -> None:
        # x86 Firecracker: the guest reboots on Ctrl-Alt-Del and Firecracker exits with it.
        await self._api.send_ctrl_alt_del()

    async def _disconnect(self) -> None:
        await self._listeners.close()
        await self._api.aclose()

    async def _release(self) -> None:
        await self._disconnect()
        if self._chroot is not None:  # only hard links (and Firecracker's own copy): the VM's drives stay
            shutil.rmtree(self._chroot, ignore_errors=True)
        remove_cgroups(self._cgroups)


@dataclass(frozen=True, slots=True)
class _Plan:
    """One launch, decided before anything is touched."""

    argv: list[str]
    files: RuntimeFiles
    config: MicroVmConfig  # with every path as Firecracker names it
    chroot: ChrootPlan | None  # jailed: what to hard-link into the chroot
    links: tuple[PlacedFile, ...]  # direct: the drives' symlinks in the runtime dir
    resume: SnapshotFiles | None = None  # the snapshot to load instead of booting, as Firecracker names it


class FirecrackerDriver:
    """Launches Firecracker microVMs (KVM only). ``binary`` is the firecracker executable (or a stand-in for it
    that takes the same argv); with ``jailer`` every VM's Firecracker runs through the jailer, chrooted and as an
    unprivileged uid. ``reason`` is why the daemon chose this driver."""

    def __init__(
        self, binary: str = FIRECRACKER_BINARY, reason: str = "firecracker", jailer: JailerOptions | None = None
    ) -> None:
        self._binary = binary
        self._reason = reason
        self._jailer = jailer

    @property
    def name(self) -> str:
        return "firecracker"

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def binary(self) -> str:
        return self._binary

    def chroot(self, vm_id: str) -> ChrootLayout | None:
        """Where the jailer builds ``vm_id``'s chroot (None when Firecracker runs directly)."""
        if self._jailer is None:
            return None
        return chroot_layout(self._jailer.chroot_base, Path(self._binary), vm_id)

    def runtime_files(self, spec: LaunchSpec) -> RuntimeFiles:
        chroot = self.chroot(spec.vm_id)
        return (
            RuntimeFiles.direct(spec.runtime_dir) if chroot is None else RuntimeFiles.jailed(spec.runtime_dir, chroot)
        )

    def launch_argv(self, spec: LaunchSpec) -> list[str]:
        """The argv for ``spec`` (pure; exposed for tests)."""
        launch = self._jailer_launch(spec)
        if launch is None:
            files = self.runtime_files(spec)
            return firecracker_argv(api_sock=files.api_socket, vm_id=spec.vm_id, binary=self._binary)
        return jailer_argv(launch)

    def _jailer_launch(self, spec: LaunchSpec) -> JailerLaunch | None:
        if self._jailer is None:
            return None
        files = self.runtime_files(spec)
        jailer = self._jailer
        return JailerLaunch(
            vm_id=spec.vm_id,
            exec_file=Path(self._binary),
            uid=jailer.uid,
            gid=jailer.gid,
            chroot_base=jailer.chroot_base,
            api_sock=files.inner(files.api_socket),
            jailer_binary=jailer.binary,
            cgroup_version=jailer.cgroup_version,
            cgroups=jailer.cgroups,
            # Named, not left to the jailer's default, so the dirs to remove afterwards are known for certain.
            parent_cgroup=jailer.parent_cgroup or (Path(self._binary).name if jailer.cgroups else None),
            new_pid_ns=jailer.new_pid_ns,
        )

    def forget(self, vm_id: str, record: VmmRecord | None) -> None:
        if record is not None:
            for key in (RUNTIME_DIR_KEY, CHROOT_KEY):
                if record.detail.get(key):
                    shutil.rmtree(record.detail[key], ignore_errors=True)
            remove_cgroups(_recorded_cgroups(record))
            return
        chroot = self.chroot(vm_id)  # recorded by pid alone, by an older nexusd: where this config puts it
        if chroot is not None:
            shutil.rmtree(chroot.instance_dir, ignore_errors=True)

    async def adopt(self, vm_id: str, name: str, record: VmmRecord) -> FirecrackerProcess:
        detail = record.detail
        files = RuntimeFiles(
            Path(detail[RUNTIME_DIR_KEY]), Path(detail[FILES_DIR_KEY]), PurePosixPath(detail[INNER_DIR_KEY])
        )
        chroot = Path(detail[CHROOT_KEY]) if detail.get(CHROOT_KEY) else None
        fd = claim(record, vm_id, files.runtime_dir)
        exited = pidfd_exit(fd, record.pid)
        api = FirecrackerApi(files.api_socket, timeout_s=API_TIMEOUT_S)
        listeners = Listeners(files.vsock_socket, gateway=detail.get(GATEWAY_KEY) == "1")
        try:
            await api.describe_instance()  # it answers: the API socket is this VM's
            await listeners.start()  # the agent redials the host until someone listens here again
            if detail.get(OWNER_KEY):
                uid, gid = (int(x) for x in detail[OWNER_KEY].split(":"))
                listeners.chown(uid, gid)
        except (OSError, VsockError, NexusError) as exc:
            exited.cancel()
            await listeners.close()
            await api.aclose()
            what = exc.message if isinstance(exc, NexusError) else str(exc)
            raise DriverError(f"cannot reattach to Firecracker pid {record.pid}: {what}") from exc
        log.info("vm %s: adopted firecracker pid %d", name, record.pid)
        return FirecrackerProcess(record, exited, files, api, listeners, chroot, cgroups=_recorded_cgroups(record))

    def _plan(self, spec: LaunchSpec) -> _Plan:
        files = self.runtime_files(spec)
        argv = self.launch_argv(spec)
        config = microvm_config(spec, files)
        chroot = self.chroot(spec.vm_id)
        if chroot is None:
            links, drives = plan_links(files.files_dir, config.drives)
            resume = None if spec.resume_from is None else snapshot.in_directory(spec.resume_from)
            return _Plan(argv, files, replace(config, drives=drives), None, links, resume)
        plan = plan_chroot(chroot, config.boot, config.drives)
        config = replace(config, boot=plan.boot, drives=plan.drives)
        if spec.resume_from is None:
            return _Plan(argv, files, config, plan, ())
        placed = snapshot.placement(spec.resume_from, chroot)
        resume = SnapshotFiles(placed[0].in_chroot, placed[1].in_chroot)
        return _Plan(argv, files, config, replace(plan, files=(*plan.files, *placed)), (), resume)

    def _cgroups(self, spec: LaunchSpec) -> tuple[Path, ...]:
        launch = self._jailer_launch(spec)
        if launch is None or not launch.cgroups:
            return ()
        try:
            mounts = PROC_MOUNTS.read_text()
        except OSError as exc:
            raise DriverError(f"cannot read {PROC_MOUNTS} to find the cgroup hierarchy: {exc.strerror}") from exc
        return cgroup_dirs(launch, mounts)

    async def launch(self, spec: LaunchSpec, on_spawn: SpawnHook) -> FirecrackerProcess:
        try:
            planned = self._plan(spec)
            argv, files, config, plan = planned.argv, planned.files, planned.config, planned.chroot
            cgroups = self._cgroups(spec)
            if spec.resume_from is not None:
                snapshot.check(spec.resume_from)
        except NexusError as exc:
            raise DriverError(f"cannot configure Firecracker for VM {spec.name}: {exc.message}") from exc
        if len(str(files.longest_socket()).encode()) > UNIX_PATH_MAX_BYTES:
            where = "jailer_chroot_base" if plan is not None else f"the runtime dir {spec.runtime_dir}"
            raise DriverError(
                f"{where} is too long for Unix socket paths ({files.longest_socket()}); use a shorter one"
            )
        if not _is_elf(spec.kernel):
            raise DriverError(f"Firecracker boots an uncompressed ELF vmlinux; {spec.kernel} is not one")
        chroot = None if plan is None else plan.layout.instance_dir

        def discard() -> None:
            shutil.rmtree(spec.runtime_dir, ignore_errors=True)
            if chroot is not None:
                shutil.rmtree(chroot, ignore_errors=True)
            remove_cgroups(cgroups)

        discard()  # whatever a VMM of this VM that died with its daemon left behind
        listeners = Listeners(files.vsock_socket, gateway=spec.gateway)
        try:
            spec.runtime_dir.mkdir(parents=True, mode=0o700)
            spec.console_log.parent.mkdir(parents=True, exist_ok=True)
            files.files_dir.mkdir(parents=True, exist_ok=True)
            if plan is not None:
                place_files(plan.files)
            place_files(planned.links, link=os.symlink)
            for path in (files.log_file, files.metrics_file):  # Firecracker opens these; it does not create them
                path.touch()
            await listeners.start()  # before boot: the agent dials the host as soon as it runs
            if self._jailer is not None and plan is not None:
                _hand_over(self._jailer, plan, files, listeners.paths)
        except (OSError, VsockError, NexusError) as exc:
            await listeners.close()
            discard()
            what = exc.message if isinstance(exc, NexusError) else str(exc)
            raise DriverError(f"cannot prepare Firecracker's files for VM {spec.name}: {what}") from exc
        try:
            with spec.console_log.open("wb") as console, files.stderr_file.open("wb") as stderr:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=console,  # the guest's serial console
                    stderr=stderr,
                    start_new_session=True,  # a Ctrl-C meant for nexusd must not kill its VMs behind its back
                    cwd=files.files_dir if plan is None else None,  # what its relative paths are relative to
                )
        except OSError as exc:
            await listeners.close()
            discard()
            raise DriverError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        api = FirecrackerApi(files.api_socket, timeout_s=API_TIMEOUT_S)
        vmm: tuple[int, asyncio.Future[ExitStatus]] | None = None
        try:
            vmm = await self._firecracker_of(proc, files, spec.vm_id)
            pid, exited = vmm
            record = VmmRecord(
                pid=pid,
                start_time=start_time(pid),
                driver=self.name,
                accel=ACCEL,
                detail={
                    RUNTIME_DIR_KEY: str(files.runtime_dir),
                    FILES_DIR_KEY: str(files.files_dir),
                    INNER_DIR_KEY: str(files.inner_dir),
                    CHROOT_KEY: str(chroot or ""),
                    OWNER_KEY: f"{self._jailer.uid}:{self._jailer.gid}" if self._jailer is not None else "",
                    GATEWAY_KEY: "1" if spec.gateway else "",
                    CGROUPS_KEY: ":".join(str(c) for c in cgroups),
                },
            )
            on_spawn(record)
            await self._configure(exited, api, config, planned.resume)
        except BaseException as exc:
            # The jailer's process group holds Firecracker too, even in a PID namespace of its own.
            kill_group(proc.pid)
            if vmm is not None:
                kill_group(vmm[0])
                await asyncio.wait({vmm[1]})
            await proc.wait()
            await listeners.close()
            with contextlib.suppress(Exception):
                await api.aclose()
            tail = _tail(files.stderr_file)
            discard()
            if not isinstance(exc, Exception) or (isinstance(exc, NexusError) and not isinstance(exc, DriverError)):
                raise  # cancelled, or the store could not record the process: not Firecracker's fault
            what = exc.message if isinstance(exc, NexusError) else str(exc) or type(exc).__name__
            status = _exit_status(vmm[1]) if vmm is not None else ExitStatus(proc.returncode)
            did = "start" if spec.resume_from is None else "resume"
            raise DriverError(
                f"Firecracker did not {did} VM {spec.name} (exit {status}): {what}"
                + (f"\nstderr: {tail}" if tail else "")
            ) from None
        jailed = "" if self._jailer is None else f", jailed as uid {self._jailer.uid}"
        how = "" if spec.resume_from is None else ", resumed from a snapshot"
        log.info(
            "vm %s: firecracker pid %d (%d vCPU, %d MiB%s%s)",
            spec.name,
            record.pid,
            spec.vcpus,
            spec.mem_mib,
            jailed,
            how,
        )
        return FirecrackerProcess(record, exited, files, api, listeners, chroot, cgroups=cgroups)

    async def _firecracker_of(
        self, proc: asyncio.subprocess.Process, files: RuntimeFiles, vm_id: str
    ) -> tuple[int, asyncio.Future[ExitStatus]]:
        """The pid of the Firecracker process and its exit: ``proc`` itself (directly, or jailed: the jailer execs
        Firecracker), except under ``--new-pid-ns``, where the jailer forks Firecracker into the new namespace,
        writes its pid to ``<chroot>/<exec name>.pid`` and exits; nexusd then watches that pid through a pidfd."""
        if self._jailer is None or not self._jailer.new_pid_ns:
            return proc.pid, asyncio.ensure_future(child_exit(proc))
        try:
            status = await asyncio.wait_for(proc.wait(), STARTUP_TIMEOUT_S)
        except TimeoutError:
            raise DriverError(f"the jailer did not hand over to Firecracker in {STARTUP_TIMEOUT_S:.0f} s") from None
        if status != 0:
            raise DriverError(f"the jailer exited with {ExitStatus(status)}")
        pid_file = files.files_dir / f"{Path(self._binary).name}.pid"
        try:
            pid = int(pid_file.read_text().strip())
            fd = os.pidfd_open(pid)
        except (OSError, ValueError) as exc:
            raise DriverError(f"cannot find the Firecracker the jailer started from {pid_file}: {exc}") from exc
        if not runs_vm(pid, vm_id, files.runtime_dir):
            os.close(fd)
            raise DriverError(f"pid {pid} in {pid_file} is not this VM's Firecracker")
        return pid, pidfd_exit(fd, pid)

    @staticmethod
    async def _configure(
        exited: asyncio.Future[ExitStatus], api: FirecrackerApi, config: MicroVmConfig, resume: SnapshotFiles | None
    ) -> None:
        """Wait for the API socket to answer, then send every pre-boot resource and ``InstanceStart``, or (``resume``)
        load the snapshot onto this VM's TAP and vsock socket and let it run."""

        def gone() -> DriverError | None:
            return DriverError("Firecracker exited before its API answered") if exited.done() else None

        info = await retry(api.describe_instance, retry_on=DriverError, timeout_s=STARTUP_TIMEOUT_S, give_up=gone)
        if resume is None:
            for request in preboot_requests(config):
                await api.send(request)
            await api.instance_start()
            return
        # The vsock socket's name is the same for every VM already; where the version can be told so, it is.
        vsock = config.vsock.uds_path if config.vsock is not None else None
        load = SnapshotLoad(
            resume,
            network_overrides=config.network,
            vsock_override=vsock if supports_vsock_override(info.vmm_version) else None,
        )
        for request in restore_requests(config, load):
            await api.call(request.method, request.path, request.body, timeout_s=SNAPSHOT_TIMEOUT_S)


def _hand_over(jailer: JailerOptions, plan: ChrootPlan, files: RuntimeFiles, listeners: list[Path]) -> None:
    """Give the jailed uid what Firecracker writes to (its drives, log, metrics and the listeners the agent dials),
    and let it read what it only reads (kernel, initrd, read-only drives): the real Firecracker opens each of them
    as that uid when it is configured, and refuses the request when it cannot."""
    writable = [f.target for f in plan.files if f.writable]
    for path in (*writable, files.log_file, files.metrics_file, *listeners):
        os.chown(path, jailer.uid, jailer.gid)
    for placed in plan.files:
        if not placed.writable and not _readable_by(placed.target, jailer.uid, jailer.gid):
            # A hard link shares the inode: group read for the jailer's gid, never write, never the world's read.
            os.chown(placed.target, -1, jailer.gid)
            os.chmod(placed.target, stat.S_IMODE(placed.target.stat().st_mode) | stat.S_IRGRP)


def _exit_status(exited: asyncio.Future[ExitStatus]) -> ExitStatus:
    if exited.done() and not exited.cancelled() and exited.exception() is None:
        return exited.result()
    return ExitStatus(None)


def remove_cgroups(dirs: tuple[Path, ...]) -> None:
    """Remove the jailer's cgroups of one VM (empty once Firecracker is gone; the shared parent stays)."""
    for path in dirs:
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", path, exc.strerror)


def _recorded_cgroups(record: VmmRecord) -> tuple[Path, ...]:
    return tuple(Path(p) for p in record.detail.get(CGROUPS_KEY, "").split(":") if p)


def _readable_by(path: Path, uid: int, gid: int) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - STDERR_TAIL_BYTES))
            return fh.read().decode(errors="replace").strip()
    except OSError:
        return ""
