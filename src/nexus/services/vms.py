"""VM use cases: create, inspect, start, stop, remove, tag, history, logs.

The only code that coordinates the store, the settings and the VMM driver. It does not know HTTP or the CLI.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path

from nexus.domain import (
    Conflict,
    DriverError,
    Invalid,
    InvalidState,
    LaunchSpec,
    Layout,
    NexusError,
    Progress,
    Role,
    SavedState,
    StateChange,
    Unavailable,
    Vm,
    VmFilter,
    VmmDriver,
    VmmGone,
    VmProcess,
    VmSpec,
    VmState,
    VmStore,
    utcnow,
)
from nexus.domain.egress import EgressMode, HostPattern
from nexus.domain.validation import check_lifetime, check_mem_mib, check_name, check_tag, check_vcpus
from nexus.protocol import encode_mounts
from nexus.services.assets import AssetService, BootFiles
from nexus.services.drives import DriveService
from nexus.services.lifecycle import transition
from nexus.services.locks import VmLocks
from nexus.services.network import NetworkService
from nexus.services.runtime import VmRuntime
from nexus.services.settings import SettingsService

log = logging.getLogger(__name__)

KERNEL_KEY = "kernel"  # in a VMM record's detail: the kernel version it booted, which a checkpoint must match


@dataclass(frozen=True, slots=True)
class Resume:
    """Start a VM by resuming a checkpoint's saved state instead of booting."""

    directory: Path  # the driver's state files
    state: SavedState
    reason: str  # for the history: "restoring checkpoint X"


def check_resumable(vm: Vm, driver: str, kernel: str, state: SavedState, what: str) -> None:
    """Conflict unless ``vm``, booting ``kernel`` under ``driver``, has the shape ``state`` was saved from."""
    wanted = (
        ("VMM", state.vmm, driver),
        ("kernel", state.kernel, kernel),
        ("vCPUs", str(state.vcpus), str(vm.vcpus)),
        ("memory (MiB)", str(state.mem_mib), str(vm.mem_mib)),
    )
    for item, saved, now in wanted:
        if saved != now:
            raise Conflict(f"{what} was saved with {item} {saved}; VM {vm.name} has {now}")


def new_vm_id() -> str:
    return secrets.token_hex(6)


class VmService:
    def __init__(
        self,
        *,
        repo: VmStore,
        settings: SettingsService,
        layout: Layout,
        driver: VmmDriver | None,
        runtime: VmRuntime,
        assets: AssetService,
        drives: DriveService,
        kill_orphan: Callable[[int, str, Path], bool],
        network: NetworkService,
        no_driver_reason: str = "no VMM driver available",
        adopters: Mapping[str, VmmDriver] | None = None,
        locks: VmLocks | None = None,
        proxy: Callable[[IPv4Address], Awaitable[None]] | None = None,
    ) -> None:
        """``adopters``: a driver by name for every kind of VMM an earlier nexusd may have left running (the
        current ``driver`` among them), so a VM keeps running under the VMM it was launched with. ``proxy(gateway)``
        makes sure the egress proxy listens on a VM network's gateway before a ``proxy`` VM boots there."""
        self._repo = repo
        self._settings = settings
        self._layout = layout
        self._driver = driver
        self._runtime = runtime
        self._assets = assets
        self._drives = drives
        self._kill_orphan = kill_orphan
        self._net = network
        self._no_driver_reason = no_driver_reason
        self._locks = locks or VmLocks()
        self._adopters = dict(adopters or {})
        self._proxy = proxy
        if driver is not None:
            self._adopters.setdefault(driver.name, driver)
        self._tasks: set[asyncio.Task[None]] = set()  # stops that an earlier nexusd began and this one finishes
        self._waker: Callable[[str], Awaitable[None]] | None = None

    def resume_suspended_with(self, waker: Callable[[str], Awaitable[None]]) -> None:
        """How a start of an idle-suspended VM resumes it (set at wiring: the lifetime service is built on this)."""
        self._waker = waker

    def resolve(self, spec: VmSpec) -> Vm:
        """The VM ``spec`` asks for, checked and with every default resolved, not stored (Invalid if it cannot be)."""
        check_name(spec.name)
        tags = tuple(sorted({check_tag(t) for t in spec.tags}))
        vcpus = check_vcpus(spec.vcpus if spec.vcpus is not None else self._settings.int_value("default_vcpus"))
        mem_mib = check_mem_mib(
            spec.mem_mib if spec.mem_mib is not None else self._settings.int_value("default_mem_mib")
        )
        network = self._net.wants_network(spec.network, spec.publish)
        egress = spec.egress or EgressMode(self._settings.str_value("default_egress"))
        if egress is EgressMode.PROXY and not network:
            raise Invalid("egress=proxy reaches the outside through nexusd's proxy on the VM network: leave network on")
        created = utcnow()
        return Vm(
            id=new_vm_id(),
            name=spec.name,
            role=spec.role,
            vcpus=vcpus,
            mem_mib=mem_mib,
            image=spec.image or self._settings.str_value("default_image"),
            kernel=spec.kernel or self._settings.str_value("default_kernel"),
            state=VmState.CREATED,
            created_at=created,
            updated_at=created,
            tags=tags,
            network=network,
            created_by=spec.created_by,
            egress=egress,
            lifetime=check_lifetime(spec.lifetime),
            pool=spec.pool,
        )

    def create(self, spec: VmSpec, admit: Callable[[Vm], None] | None = None) -> Vm:
        """Store a new VM. ``admit`` sees it with every default resolved before it is stored, and may refuse it by
        raising (a portal's management rights are checked so, on the exact image, size and count)."""
        vm = self.resolve(spec)
        if admit is not None:
            admit(vm)
        self._repo.insert(vm, reason="created")
        if spec.allow:
            self._repo.set_egress(vm.id, vm.egress, spec.allow)
        if vm.network:
            try:
                self._net.reserve(vm.id, spec.publish)
            except BaseException:
                self._repo.delete(vm.id)
                raise
        log.info("vm created id=%s name=%s", vm.id, vm.name)
        return vm

    def get(self, ref: str) -> Vm:
        return self._repo.get(ref)

    def egress(self, ref: str) -> tuple[Vm, tuple[HostPattern, ...]]:
        """The VM and the hosts its egress proxy lets through."""
        vm = self._repo.get(ref)
        return vm, self._repo.allow_list(vm.id)

    def set_egress(self, ref: str, mode: EgressMode | None, allow: tuple[HostPattern, ...] | None) -> Vm:
        """Change how a stopped VM reaches the outside (``None``: keep that part as it is)."""
        vm = self._repo.get(ref)
        with self._locks.hold(vm.id, vm.name, "changing its egress"):
            vm = self._repo.get(vm.id)
            if vm.state.has_process:
                raise InvalidState(f"VM {vm.name} is {vm.state}; stop it to change its egress")
            mode = mode or vm.egress
            if mode is EgressMode.PROXY and not vm.network:
                raise Invalid(f"VM {vm.name} has no NIC: egress=proxy needs one")
            self._repo.set_egress(vm.id, mode, self._repo.allow_list(vm.id) if allow is None else allow)
            log.info("vm %s: egress %s", vm.name, mode)
            return self._repo.get(vm.id)

    def find(self, flt: VmFilter) -> list[Vm]:
        return self._repo.find(flt)

    def generation(self) -> int:
        """Changes whenever any VM, tag, lease or port changes (they share one store)."""
        return self._repo.generation()

    def count(self) -> int:
        return self._repo.count()

    async def remove(self, ref: str, force: bool) -> None:
        vm = self._repo.get(ref)
        with self._locks.hold(vm.id, vm.name, "being removed"):
            vm = self._repo.get(vm.id)
            if vm.state.has_process:
                if not force:
                    raise InvalidState(f"VM {vm.name} is {vm.state}; stop it first or remove it with force")
                await self.stop(vm.id)
            await self._net.detach(vm.id)
            await self._drives.drop_vm(vm)
            self._repo.delete(vm.id)  # its address lease and published ports go with it
            shutil.rmtree(self._layout.vm_dir(vm.id), ignore_errors=True)
        log.info("vm removed id=%s name=%s", vm.id, vm.name)

    async def prepare(self, ref: str, progress: Progress) -> BootFiles:
        """Fetch or build what the VM boots with, reporting progress; a later start then boots at once."""
        self._require_driver()  # no point fetching what nothing can boot
        return await self._assets.boot_files(self._repo.get(ref), progress)

    async def start(self, ref: str, wait: bool = True, resume: Resume | None = None) -> Vm:
        """Boot the VM (or, with ``resume``, bring it back running from a checkpoint); with ``wait``, return once its
        agent said hello (else once the VMM runs). The VM's lock is held until its VMM runs and is watched; the wait
        for the agent is outside it (a stop may end the boot)."""
        vm = self._repo.get(ref)
        with self._locks.hold(vm.id, vm.name, "starting"):
            vm = self._repo.get(vm.id)
            if vm.state.has_process:
                raise InvalidState(f"VM {vm.name} is already {vm.state}")
            expires = vm.expires_at
            if expires is not None and utcnow() >= expires:
                raise InvalidState(
                    f"VM {vm.name} expired at {expires:%Y-%m-%d %H:%M:%S} UTC (its ttl); it stays stopped"
                )
            if vm.suspended and resume is None and self._waker is not None:
                await self._waker(vm.id)  # resumes it where it was, through a checkpoint restore (and this start)
                return self._repo.get(vm.id)
            driver = self._require_driver()
            if resume is not None:
                await self.check_resume(vm, resume)
            transition(self._repo, vm.id, vm.state, VmState.STARTING, resume.reason if resume else "start requested")
            started = time.monotonic()
            try:
                process = await self._launch(vm, driver, resume.directory if resume else None)
            except NexusError as exc:
                self._launch_failed(vm, exc.message)
                raise
            except asyncio.CancelledError:  # e.g. an MCP client cancelled vm_start: the driver killed what it spawned
                self._launch_failed(vm, "the start was cancelled")
                raise
            except Exception as exc:  # e.g. no space left for the root drive: still never leave it "starting"
                self._launch_failed(vm, str(exc))
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise Unavailable(f"VM {vm.name} could not be started: no space left ({exc})") from exc
                raise DriverError(f"VM {vm.name} could not be started: {exc}") from exc
            self._runtime.watch(vm, process, self._layout.console_log(vm.id), resumed=resume is not None)
        launched = time.monotonic()
        if wait:
            await self._runtime.wait_ready(vm.id)
            log.info(
                "vm %s: launched in %.2fs, ready %.2fs later", vm.name, launched - started, time.monotonic() - launched
            )
        return self._repo.get(vm.id)

    async def check_resume(self, vm: Vm, resume: Resume) -> None:
        """Conflict unless ``vm`` would boot the VMM and kernel the state was saved with, in its shape."""
        driver = self._require_driver()
        files = await self._assets.boot_files(vm)
        check_resumable(vm, driver.name, files.kernel.version, resume.state, resume.reason.capitalize())

    def _launch_failed(self, vm: Vm, why: str) -> None:
        transition(self._repo, vm.id, VmState.STARTING, VmState.FAILED, f"start failed: {why}")
        self._repo.set_runtime(vm.id, None)  # the driver killed what it had spawned

    async def _launch(self, vm: Vm, driver: VmmDriver, resume_from: Path | None) -> VmProcess:
        files = await self._assets.boot_files(vm)
        drives = await self._drives.boot_drives(vm, files.image)
        net = await self._net.attach(vm.id, vm.egress) if vm.network else None
        try:
            if net is not None and vm.egress is EgressMode.PROXY and self._proxy is not None:
                await self._proxy(net.gateway)  # the proxy listens on the gateway before the guest asks for it
            return await driver.launch(
                LaunchSpec(
                    vm_id=vm.id,
                    name=vm.name,
                    vcpus=vm.vcpus,
                    mem_mib=vm.mem_mib,
                    kernel=files.kernel.boot_file,
                    kernel_version=files.kernel.version,
                    initrd=files.initrd,
                    root_drive=drives.root,
                    console_log=self._layout.console_log(vm.id),
                    runtime_dir=self._layout.vm_runtime_dir(vm.id),
                    cmdline_extra=(encode_mounts(list(drives.mounts)),),
                    data_drives=drives.data,
                    net=net,
                    gateway=vm.role is Role.PORTAL,
                    resume_from=resume_from,
                ),
                on_spawn=lambda record: self._repo.set_runtime(
                    vm.id, replace(record, detail={**record.detail, KERNEL_KEY: files.kernel.version})
                ),
            )
        except BaseException:
            await self._net.detach(vm.id)
            raise

    async def stop(self, ref: str, kill: bool = False, reason: str = "stop requested") -> Vm:
        """Power the VM off (``kill``: at once, when what runs in it is to be thrown away)."""
        vm = self._repo.get(ref)
        with self._locks.hold(vm.id, vm.name, "stopping"):
            vm = self._repo.get(vm.id)
            if not vm.state.has_process:
                raise InvalidState(f"VM {vm.name} is {vm.state}; there is nothing to stop")
            if self._runtime.is_running(vm.id):
                await self._runtime.stop(vm.id, kill=kill, reason=reason)
            else:  # its VMM is gone and the store had not taken that yet (it was busy)
                if vm.state is not VmState.STOPPING:
                    transition(self._repo, vm.id, vm.state, VmState.STOPPING, "stop requested")
                transition(self._repo, vm.id, VmState.STOPPING, VmState.STOPPED, "no VMM process was running")
        return self._repo.get(vm.id)

    async def pause(self, ref: str) -> Vm:
        vm = self._repo.get(ref)
        with self._locks.hold(vm.id, vm.name, "pausing"):
            if not self._runtime.is_running(vm.id):
                raise InvalidState(f"VM {vm.name} is {self._repo.get(vm.id).state}; only a running VM can pause")
            await self._runtime.pause(vm.id)
        return self._repo.get(vm.id)

    async def resume(self, ref: str) -> Vm:
        vm = self._repo.get(ref)
        with self._locks.hold(vm.id, vm.name, "resuming"):
            if not self._runtime.is_running(vm.id):
                raise InvalidState(f"VM {vm.name} is {self._repo.get(vm.id).state}, not paused")
            await self._runtime.resume(vm.id)
        return self._repo.get(vm.id)

    async def recover(self) -> None:
        """At daemon start: adopt every VMM an earlier nexusd left running (the VM runs on, untouched), settle
        the VMs whose VMM is gone, keep the network of the adopted ones and remove the rest."""
        adopted: list[tuple[Vm, VmProcess]] = []
        for vm in self._repo.find(VmFilter(include_pool=True)):
            if vm.state.has_process:
                process = await self._adopt(vm)
                if process is not None:
                    adopted.append((vm, process))
        try:
            await self._net.restore({vm.id: vm.egress for vm, _ in adopted if vm.network})
            proxied = [vm for vm, _ in adopted if vm.network and vm.egress is EgressMode.PROXY]
            lease = self._net.info(proxied[0].id) if proxied else None
            if lease is not None and self._proxy is not None:
                await self._proxy(lease.gateway)
        except NexusError as exc:  # VMs without network still work; a networked start will say why not
            log.warning("could not restore networking: %s", exc.message)
        for vm, process in adopted:
            self._runtime.watch(vm, process, self._layout.console_log(vm.id))
            if vm.state is VmState.STOPPING:  # the stop an earlier nexusd began
                task = asyncio.create_task(self._runtime.stop(vm.id), name=f"vm-stop-{vm.name}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if adopted:
            log.info("adopted %d running VM(s): %s", len(adopted), ", ".join(vm.name for vm, _ in adopted))

    async def _adopt(self, vm: Vm) -> VmProcess | None:
        """The VM's running VMM, reattached; None when there is none (the VM is then settled)."""
        record = self._repo.runtime_record(vm.id)
        driver = self._adopters.get(vm.vmm or "")
        if record is None or driver is None:
            # Never spawned (nexusd died before), or recorded by pid alone by a nexusd before live restore.
            killed = vm.pid is not None and self._kill_orphan(vm.pid, vm.id, self._layout.vm_runtime_dir(vm.id))
            if driver is not None:
                driver.forget(vm.id, None)
            self._settle(
                vm,
                f"nexusd restarted and killed the VM's VMM (pid {vm.pid}), which it could not adopt"
                if killed
                else "nexusd restarted and found no VMM process",
            )
            return None
        try:
            process = await driver.adopt(vm.id, vm.name, record)
        except VmmGone as gone:
            driver.forget(vm.id, record)
            log.info("vm %s: not adopted: %s", vm.name, gone.what)
            self._settle(vm, f"VMM exited while nexusd was down ({gone.status})")
            return None
        except DriverError as exc:  # it runs but cannot be reattached: end it, or it runs on unmanaged
            runtime_dir = Path(record.detail.get("runtime_dir") or self._layout.vm_runtime_dir(vm.id))
            killed = self._kill_orphan(record.pid, vm.id, runtime_dir)
            driver.forget(vm.id, record)
            what = (
                f"killed its VMM (pid {record.pid}), which it could not re-attach to"
                if killed
                else "could not re-attach to its VMM"
            )
            self._settle(vm, f"nexusd restarted and {what}: {exc.message}")
            return None
        if vm.state is VmState.READY:  # ready again once its agent answers on new links
            reason = f"nexusd restarted; re-attaching to VMM pid {record.pid}"
            transition(self._repo, vm.id, vm.state, VmState.UNREACHABLE, reason)
        return process

    def _settle(self, vm: Vm, reason: str) -> None:
        """End the record of a VM whose VMM is gone: stopped if it was stopping, failed if it was starting."""
        outcome = {VmState.STOPPING: VmState.STOPPED, VmState.STARTING: VmState.FAILED}.get(vm.state, VmState.CRASHED)
        transition(self._repo, vm.id, vm.state, outcome, reason)
        self._repo.set_runtime(vm.id, None)
        log.warning("vm %s: %s -> %s (%s)", vm.name, vm.state, outcome, reason)

    def history(self, ref: str) -> list[StateChange]:
        return self._repo.history(self._repo.get(ref).id)

    def logs(self, ref: str, tail: int | None) -> list[str]:
        """The VM's console log lines (the last ``tail`` of them when given); empty before its first boot."""
        vm = self._repo.get(ref)
        try:
            with self._layout.console_log(vm.id).open(encoding="utf-8", errors="replace") as fh:
                lines = deque(fh, maxlen=tail) if tail is not None else list(fh)
        except FileNotFoundError:
            return []
        return [line.rstrip("\n") for line in lines]

    def add_tags(self, ref: str, tags: list[str]) -> Vm:
        vm = self._repo.get(ref)
        self._repo.add_tags(vm.id, sorted({check_tag(t) for t in tags}))
        return self._repo.get(vm.id)

    def remove_tags(self, ref: str, tags: list[str]) -> Vm:
        vm = self._repo.get(ref)
        self._repo.remove_tags(vm.id, tags)
        return self._repo.get(vm.id)

    def use_driver(self, driver: VmmDriver | None, reason: str) -> None:
        """Launch the VMs started from now on with ``driver`` (None: none can start, for ``reason``). Running VMs
        keep the VMM they were launched with; a driver of the same kind stays the one that adopts them."""
        self._driver = driver
        self._no_driver_reason = reason
        if driver is not None:
            self._adopters.setdefault(driver.name, driver)
        log.info("VMs started from now on: %s", reason)

    def driver_status(self) -> tuple[str | None, str]:
        """The VMM driver's name (None without one) and why it was chosen or why there is none."""
        if self._driver is None:
            return None, self._no_driver_reason
        return self._driver.name, self._driver.reason

    def _require_driver(self) -> VmmDriver:
        if self._driver is None:
            raise Unavailable(f"no VMM driver available: {self._no_driver_reason}")
        return self._driver
