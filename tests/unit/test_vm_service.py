"""VmService start/stop/remove/recover and their failure paths, against the fake VMM (tests/fakes/vmm.py).

Real SQLite, VmRuntime, VmLocks, DriveService (copy backend), AssetService and NetworkService; fakes only for the
VMM, the guest agent, the kernel source and the host's links and firewall. Every VM's history is checked against
the lifecycle table after each test, and no log line may mention an illegal transition.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from nexus.domain import (
    TRANSITIONS,
    Conflict,
    DriverError,
    ExitStatus,
    GuestGuard,
    Image,
    ImageOrigin,
    ImageRequest,
    InvalidState,
    Kernel,
    Layout,
    NotFound,
    OwnedLink,
    PortForward,
    Progress,
    Unavailable,
    Vm,
    VmFilter,
    VmmGone,
    VmmRecord,
    VmSpec,
    VmState,
    utcnow,
)
from nexus.services import (
    AssetService,
    DriveService,
    NetworkService,
    RuntimeTimeouts,
    SettingsService,
    VmRuntime,
    VmService,
)
from nexus.services.locks import VmLocks
from nexus.store import DriveRepo, ImageRepo, NetRepo, SettingsRepo, SnapshotRepo, VmRepo, connect, migrate
from nexus.workspaces import CopyBackend
from tests.fakes.vmm import DRIVER, Boot, FakeVmmDriver, FakeVmProcess, connect_fake_guest

pytestmark = pytest.mark.anyio

# boot_s below the watchdog's 0.5 s tick: a silent boot fails at the first tick
TIMEOUTS = RuntimeTimeouts(boot_s=0.3, heartbeat_s=1.0, stop_s=0.2, connect_s=0.5)
S = ExitStatus


class FakeKernels:
    """One cached kernel, whatever is asked for; nothing is ever pulled."""

    def __init__(self, root: Path) -> None:
        self.kernel = Kernel(
            "6.1.0-test", "cloud-amd64", root / "vmlinuz", root / "config", root, "0" * 64, 1, utcnow()
        )

    def list(self) -> list[Kernel]:
        return [self.kernel]

    def get(self, ref: str) -> Kernel:
        return self.kernel

    def pull(self, ref: str | None, progress: Callable[[str, float], None]) -> Kernel:
        raise AssertionError("unit tests pull no kernel")

    def remove(self, version: str) -> None:
        raise AssertionError("unit tests remove no kernel")

    def initrd(self, kernel: Kernel) -> Path:
        return kernel.dir / "initrd.img"


class NoBuilder:
    def build(self, request: ImageRequest, out_dir: Path, progress: Callable[[str, float], None]) -> Image:
        raise AssertionError("unit tests build no image")

    def seal_copy(self, copy: Path, name: str, origin: ImageOrigin, out_dir: Path, progress: Progress) -> Image:
        raise AssertionError("unit tests seal no image")


class FakeLinks:
    def __init__(self) -> None:
        self.links: dict[str, OwnedLink] = {}

    async def ensure_bridge(self, name: str, gateway: IPv4Interface) -> None:
        self.links.setdefault(name, OwnedLink(name, "bridge", "nexus"))

    async def exists(self, name: str) -> bool:
        return name in self.links

    async def add_tap(self, name: str, bridge: str, alias: str) -> None:
        self.links[name] = OwnedLink(name, "tun", alias)

    async def delete(self, name: str) -> bool:
        return self.links.pop(name, None) is not None

    async def owned(self) -> list[OwnedLink]:
        return list(self.links.values())

    async def forget_neighbour(self, bridge: str, address: IPv4Address) -> None:
        return None

    def taps(self) -> list[str]:
        return [link.name for link in self.links.values() if link.kind == "tun"]


class FakeFirewall:
    def __init__(self) -> None:
        self.forwards: tuple[PortForward, ...] | None = None

    def apply(
        self,
        bridge: str,
        subnet: IPv4Network,
        forwards: Sequence[PortForward],
        guests: Sequence[GuestGuard] = (),
        proxy_port: int | None = None,
    ) -> None:
        self.forwards = tuple(forwards)

    def exists(self) -> bool:
        return self.forwards is not None

    def remove(self) -> bool:
        existed, self.forwards = self.forwards is not None, None
        return existed


class SpawnRecordFails(VmRepo):
    """A store that refuses to record spawned VMMs while ``refuse`` (as a locked database does): ``on_spawn`` fails."""

    refuse = False

    def set_runtime(self, vm_id: str, record: VmmRecord | None) -> None:
        if record is not None and self.refuse:
            raise Unavailable("the state database is busy")
        super().set_runtime(vm_id, record)


def make_vm_service(
    repo: VmRepo,
    settings: SettingsService,
    layout: Layout,
    driver: FakeVmmDriver,
    runtime: VmRuntime,
    assets: AssetService,
    drives: DriveService,
    network: NetworkService,
    locks: VmLocks,
    kill_orphan: Callable[[int, str, Path], bool],
) -> VmService:
    """The one place this module builds a VmService (its constructor's signature is about to change)."""
    return VmService(
        repo=repo,
        settings=settings,
        layout=layout,
        driver=driver,
        runtime=runtime,
        assets=assets,
        drives=drives,
        kill_orphan=kill_orphan,
        network=network,
        adopters={driver.name: driver},
        locks=locks,
    )


@dataclass
class World:
    vms: VmService
    repo: SpawnRecordFails
    runtime: VmRuntime
    driver: FakeVmmDriver
    links: FakeLinks
    layout: Layout
    locks: VmLocks
    orphans: list[int] = field(default_factory=list)  # pids kill_orphan was asked to kill
    kill_answers: bool = False  # what kill_orphan answers (True: the pid was the VM's VMM and is killed)

    def create(self, name: str = "web", network: bool = True) -> Vm:
        return self.vms.create(VmSpec(name=name, image="img", network=network))

    def process(self, vm: Vm) -> FakeVmProcess:
        return self.driver.processes[vm.id]

    def states(self, vm: Vm) -> list[VmState]:
        return [change.to_state for change in self.repo.history(vm.id)]

    def last_reason(self, vm: Vm) -> str:
        return self.repo.history(vm.id)[-1].reason

    def place(self, vm: Vm, *states: VmState, record: VmmRecord | None = None) -> None:
        """Walk ``vm`` through ``states`` (lawful steps), as an earlier nexusd would have left it."""
        current = self.repo.get(vm.id).state
        for state in states:
            self.repo.set_state(vm.id, current, state, "left by an earlier nexusd")
            current = state
        self.repo.set_runtime(vm.id, record)


@pytest.fixture
async def world(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[World]:
    caplog.set_level(logging.INFO)
    conn = connect(":memory:")
    migrate(conn)
    layout = Layout(tmp_path / "state", tmp_path / "run")
    layout.images_dir.mkdir(parents=True)
    image_file = layout.images_dir / "img.ext4"
    image_file.write_bytes(b"ext4" * 1024)
    images = ImageRepo(conn, layout.state_dir)
    images.insert(Image("i1", "img", "test", image_file, 16, "0" * 64, "busybox", "fake", utcnow()))
    repo = SpawnRecordFails(conn)
    settings = SettingsService(SettingsRepo(conn))
    links = FakeLinks()
    net = NetworkService(
        store=NetRepo(conn),
        settings=settings,
        links=links,
        firewall=FakeFirewall(),
        host_dns=lambda: ["192.0.2.53"],
        resolv_conf=lambda servers: "".join(f"nameserver {s}\n" for s in servers),
        setup_host=lambda bridge: [],
    )
    runtime = VmRuntime(
        repo, connect=connect_fake_guest, timeouts=TIMEOUTS, on_ready=net.configure_guest, on_exit=net.detach
    )
    locks = VmLocks()
    backend = CopyBackend("unit test")
    drives = DriveService(
        drives=DriveRepo(conn),
        snapshots=SnapshotRepo(conn),
        vms=repo,
        images=images,
        backend=backend,
        layout=layout,
        format_drive=lambda _: None,
        grow_filesystem=lambda _: None,
        is_running=runtime.is_running,
        locks=locks,
    )
    assets = AssetService(
        kernels=FakeKernels(tmp_path / "kernel"),
        builder=NoBuilder(),
        images=images,
        vms=repo,
        layout=layout,
        storage=backend,
        drives=DriveRepo(conn),
        locks=locks,
    )
    driver = FakeVmmDriver()

    def kill_orphan(pid: int, vm_id: str, runtime_dir: Path) -> bool:
        w.orphans.append(pid)
        return w.kill_answers

    vms = make_vm_service(repo, settings, layout, driver, runtime, assets, drives, net, locks, kill_orphan)
    w = World(vms, repo, runtime, driver, links, layout, locks)
    yield w
    await asyncio.wait_for(runtime.stop_all(), 5)
    for vm in repo.find(VmFilter()):
        assert_lawful(w, vm)
    illegal = [r.getMessage() for r in caplog.records if "lifecycle table" in r.getMessage()]
    assert not illegal, f"illegal transitions were attempted: {illegal}"
    conn.close()


def assert_lawful(w: World, vm: Vm) -> None:
    """Every step of the VM's history is in the lifecycle table."""
    history = w.repo.history(vm.id)
    assert history[0].from_state is None and history[0].to_state is VmState.CREATED
    for change in history[1:]:
        assert change.from_state is not None
        assert change.to_state in TRANSITIONS[change.from_state], (
            f"{change.from_state} -> {change.to_state} ({change.reason})"
        )


async def state_becomes(w: World, vm: Vm, state: VmState, within_s: float = 2.0) -> None:
    deadline = time.monotonic() + within_s
    while w.repo.get(vm.id).state is not state:
        assert time.monotonic() < deadline, f"still {w.repo.get(vm.id).state}, wanted {state}"
        await asyncio.sleep(0.01)


async def released(w: World, vm: Vm, within_s: float = 2.0) -> None:
    """The runtime let go of the VM (its exit recorded, its TAP gone)."""
    deadline = time.monotonic() + within_s
    while w.runtime.is_running(vm.id):
        assert time.monotonic() < deadline, "the runtime still watches the VM"
        await asyncio.sleep(0.01)


def assert_released(w: World, vm: Vm) -> None:
    """Nothing of the VM's run is left: no runtime record, no TAP, no lock, no runtime watcher."""
    assert w.repo.runtime_record(vm.id) is None
    got = w.repo.get(vm.id)
    assert (got.pid, got.vmm) == (None, None)
    assert w.links.taps() == []
    assert w.locks.busy(vm.id) is None
    assert not w.runtime.is_running(vm.id)


# -- start ---------------------------------------------------------------------------------------------------


async def test_start_reaches_ready_through_the_agent(world: World) -> None:
    vm = world.create()
    got = await asyncio.wait_for(world.vms.start("web"), 2)
    assert got.state is VmState.READY
    assert world.states(vm) == [VmState.CREATED, VmState.STARTING, VmState.READY]
    assert world.last_reason(vm).startswith("agent fake ready")
    assert (got.vmm, got.accel, got.pid) == (DRIVER, "none", world.process(vm).pid)
    record = world.process(vm).record  # and the kernel it booted, which a checkpoint of it must match
    assert world.repo.runtime_record(vm.id) == replace(record, detail={**record.detail, "kernel": "6.1.0-test"})
    assert len(world.links.taps()) == 1  # attached before the launch
    spec = world.driver.launched[-1]
    assert spec.net is not None and spec.root_drive.exists()  # root drive made from the image
    assert [t for t, _ in world.process(vm).tool_calls] == ["file_write"]  # resolv.conf, through the MCP link
    assert world.locks.busy(vm.id) is None
    with pytest.raises(InvalidState, match="already ready"):
        await world.vms.start("web")


async def test_start_without_wait_returns_while_starting(world: World) -> None:
    vm = world.create()
    assert (await world.vms.start("web", wait=False)).state is VmState.STARTING
    await world.runtime.wait_ready(vm.id)
    assert world.repo.get(vm.id).state is VmState.READY


@pytest.mark.parametrize(
    "boot",
    [
        pytest.param(Boot(fail_before_spawn=DriverError("qemu: no such machine")), id="before-spawn"),
        pytest.param(Boot(fail_after_spawn=DriverError("qemu: no such machine")), id="after-spawn"),
    ],
)
async def test_launch_failure_fails_the_vm_and_releases_everything(world: World, boot: Boot) -> None:
    vm = world.create()
    world.driver.boots.append(boot)
    with pytest.raises(DriverError, match="no such machine"):
        await world.vms.start("web")
    assert world.repo.get(vm.id).state is VmState.FAILED
    assert world.last_reason(vm) == "start failed: qemu: no such machine"
    assert_released(world, vm)
    if boot.fail_after_spawn is not None:
        assert world.process(vm).events == ["kill"]  # the driver left nothing running
    assert (await asyncio.wait_for(world.vms.start("web"), 2)).state is VmState.READY  # a second start works
    assert world.states(vm)[-4:] == [VmState.STARTING, VmState.FAILED, VmState.STARTING, VmState.READY]


async def test_no_space_is_unavailable(world: World) -> None:
    vm = world.create()
    world.driver.boots.append(Boot(fail_before_spawn=OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(Unavailable, match="could not be started: no space left"):
        await world.vms.start("web")
    assert world.repo.get(vm.id).state is VmState.FAILED
    assert "No space left on device" in world.last_reason(vm)
    assert_released(world, vm)


async def test_other_os_error_is_a_driver_error(world: World) -> None:
    vm = world.create()
    world.driver.boots.append(Boot(fail_before_spawn=PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(DriverError, match=r"could not be started: .*Permission denied"):
        await world.vms.start("web")
    assert world.repo.get(vm.id).state is VmState.FAILED
    assert_released(world, vm)


async def test_failing_on_spawn_kills_the_vmm_and_fails_the_vm(world: World) -> None:
    vm = world.create()
    world.repo.refuse = True
    with pytest.raises(Unavailable, match="busy"):
        await world.vms.start("web")
    world.repo.refuse = False
    assert world.process(vm).events == ["kill"]
    assert world.repo.get(vm.id).state is VmState.FAILED
    assert_released(world, vm)


async def test_exit_during_boot_fails_the_start(world: World) -> None:
    vm = world.create()
    world.driver.boots.append(Boot(exit_during_boot=1))
    with pytest.raises(DriverError, match=r"did not become ready: VMM exited during boot \(status 1\)"):
        await asyncio.wait_for(world.vms.start("web"), 2)
    await state_becomes(world, vm, VmState.FAILED)
    await released(world, vm)
    assert_released(world, vm)


async def test_boot_timeout_fails_with_the_console_tail(world: World) -> None:
    vm = world.create()
    world.driver.boots.append(Boot(says_hello=False, console="fake kernel: panic: VFS unable to mount root\n"))
    with pytest.raises(DriverError, match="no agent hello within 0s") as raised:
        await asyncio.wait_for(world.vms.start("web"), 3)
    assert "panic: VFS unable to mount root" in str(raised.value)
    await state_becomes(world, vm, VmState.FAILED)
    assert world.process(vm).events == ["kill"]
    assert "panic: VFS unable to mount root" in world.last_reason(vm)
    await released(world, vm)
    assert_released(world, vm)


# -- stop ------------------------------------------------------------------------------------------------------


async def test_stop_powers_off_gracefully(world: World) -> None:
    vm = world.create()
    await world.vms.start("web")
    got = await asyncio.wait_for(world.vms.stop("web"), 2)
    assert got.state is VmState.STOPPED
    assert world.last_reason(vm) == "powered off (VMM exit status 0)"
    assert world.process(vm).events == ["shutdown"]
    assert_released(world, vm)
    with pytest.raises(InvalidState, match="nothing to stop"):
        await world.vms.stop("web")


async def test_stop_kills_a_guest_that_does_not_power_off(world: World) -> None:
    vm = world.create()
    world.driver.boots.append(Boot(ignores_shutdown=True))
    await world.vms.start("web")
    got = await asyncio.wait_for(world.vms.stop("web"), 2)
    assert got.state is VmState.STOPPED
    assert world.last_reason(vm).startswith("stopped by force (VMM exit signal 9)")
    assert world.process(vm).events == ["shutdown", "kill"]
    assert_released(world, vm)


async def test_stop_of_a_paused_vm_resumes_it_first(world: World) -> None:
    vm = world.create()
    await world.vms.start("web")
    assert (await world.vms.pause("web")).state is VmState.PAUSED
    assert (await asyncio.wait_for(world.vms.stop("web"), 2)).state is VmState.STOPPED
    assert world.process(vm).events == ["pause", "resume", "shutdown"]


async def test_stop_during_boot_stops_and_the_waiting_start_fails(world: World) -> None:
    vm = world.create()
    world.driver.boots.append(Boot(says_hello=False))
    await world.vms.start("web", wait=False)
    assert (await asyncio.wait_for(world.vms.stop("web"), 2)).state is VmState.STOPPED
    assert world.states(vm)[-3:] == [VmState.STARTING, VmState.STOPPING, VmState.STOPPED]


async def test_crash_after_ready_is_crashed(world: World) -> None:
    vm = world.create()
    await world.vms.start("web")
    world.process(vm).exit(-11)
    await state_becomes(world, vm, VmState.CRASHED)
    assert world.last_reason(vm) == "VMM exited unexpectedly (signal 11)"
    await released(world, vm)
    assert_released(world, vm)
    with pytest.raises(InvalidState, match="nothing to stop"):
        await world.vms.stop("web")
    assert (await asyncio.wait_for(world.vms.start("web"), 2)).state is VmState.READY  # crashed -> starting


@pytest.mark.parametrize("state", [VmState.READY, VmState.STOPPING, VmState.PAUSED])
async def test_stop_of_a_vm_whose_vmm_is_gone(world: World, state: VmState) -> None:
    """The store says a process runs, the runtime watches none (its exit was not recorded yet)."""
    vm = world.create()
    path = {
        VmState.READY: (VmState.STARTING, VmState.READY),
        VmState.STOPPING: (VmState.STARTING, VmState.READY, VmState.STOPPING),
        VmState.PAUSED: (VmState.STARTING, VmState.READY, VmState.PAUSED),
    }[state]
    world.place(vm, *path)
    got = await world.vms.stop("web")
    assert got.state is VmState.STOPPED
    assert world.last_reason(vm) == "no VMM process was running"
    assert world.states(vm)[-2:] == [VmState.STOPPING, VmState.STOPPED]


# -- locks -----------------------------------------------------------------------------------------------------


async def test_stop_while_a_start_holds_the_lock_is_busy(world: World) -> None:
    vm = world.create()
    gate = asyncio.Event()
    world.driver.boots.append(boot := Boot(gate=gate))
    start = asyncio.create_task(world.vms.start("web"))
    await boot.reached.wait()
    with pytest.raises(Conflict, match="busy starting") as busy:
        await world.vms.stop("web")
    assert busy.value.code == "conflict"
    with pytest.raises(Conflict, match="busy starting"):
        await world.vms.remove("web", force=True)
    gate.set()
    assert (await asyncio.wait_for(start, 2)).state is VmState.READY
    assert (await world.vms.stop("web")).state is VmState.STOPPED
    assert world.locks.busy(vm.id) is None


async def test_start_while_a_stop_holds_the_lock_is_busy(world: World) -> None:
    vm = world.create()
    world.driver.boots.append(Boot(ignores_shutdown=True))  # the stop waits out its timeout
    await world.vms.start("web")
    stop = asyncio.create_task(world.vms.stop("web"))
    await asyncio.sleep(0.05)
    assert world.locks.busy(vm.id) == "stopping"
    results = await asyncio.gather(world.vms.start("web"), stop, return_exceptions=True)
    assert isinstance(results[0], Conflict) and "busy stopping" in str(results[0])
    assert isinstance(results[1], Vm) and results[1].state is VmState.STOPPED


# -- remove ----------------------------------------------------------------------------------------------------


async def test_remove_refuses_a_running_vm_unless_forced(world: World) -> None:
    vm = world.create()
    await world.vms.start("web")
    with pytest.raises(InvalidState, match="stop it first") as refused:
        await world.vms.remove("web", force=False)
    assert isinstance(refused.value, Conflict)  # InvalidState is a Conflict: 409
    assert world.repo.get(vm.id).state is VmState.READY
    root = world.driver.launched[-1].root_drive
    await asyncio.wait_for(world.vms.remove("web", force=True), 2)
    with pytest.raises(NotFound):
        world.vms.get("web")
    assert world.process(vm).events == ["shutdown"]
    assert not root.parent.exists() and world.links.taps() == [] and not world.runtime.is_running(vm.id)


async def test_remove_of_a_stopped_vm_deletes_its_drive_and_row(world: World) -> None:
    vm = world.create()
    await world.vms.start("web")
    await world.vms.stop("web")
    root = world.driver.launched[-1].root_drive
    assert root.exists()
    world.layout.console_log(vm.id).parent.mkdir(parents=True, exist_ok=True)
    await world.vms.remove("web", force=False)
    with pytest.raises(NotFound):
        world.vms.get(vm.id)
    assert not root.parent.exists()
    assert list(world.layout.drives_dir.iterdir()) == []
    assert not world.layout.vm_dir(vm.id).exists()
    assert world.repo.history(vm.id) == []


async def test_remove_of_a_vm_never_started(world: World) -> None:
    vm = world.create()
    await world.vms.remove("web", force=False)
    assert world.repo.find(VmFilter()) == []
    assert world.driver.launched == [] and vm.id not in world.driver.processes


async def test_forced_remove_of_a_vm_whose_vmm_is_gone(world: World) -> None:
    vm = world.create()
    world.place(vm, VmState.STARTING, VmState.READY)
    await world.vms.remove("web", force=True)
    assert world.repo.find(VmFilter()) == []


# -- recover ---------------------------------------------------------------------------------------------------


def _record(pid: int = 777) -> VmmRecord:
    return VmmRecord(pid, pid * 7, DRIVER, "none", {"runtime_dir": "/nonexistent"})


async def test_recover_adopts_a_running_vmm(world: World) -> None:
    vm = world.create()
    world.place(vm, VmState.STARTING, VmState.READY, record=_record())
    await world.vms.recover()
    assert world.runtime.is_running(vm.id)
    await state_becomes(world, vm, VmState.READY)  # once its agent said hello on the new links
    reasons = [c.reason for c in world.repo.history(vm.id)]
    assert "nexusd restarted; re-attaching to VMM pid 777" in reasons
    assert world.states(vm)[-2:] == [VmState.UNREACHABLE, VmState.READY]
    assert world.repo.runtime_record(vm.id) == _record()
    assert world.driver.forgotten == [] and world.orphans == []
    assert (await asyncio.wait_for(world.vms.stop("web"), 2)).state is VmState.STOPPED


async def test_recover_finishes_a_stop_an_earlier_nexusd_began(world: World) -> None:
    vm = world.create()
    world.place(vm, VmState.STARTING, VmState.READY, VmState.STOPPING, record=_record())
    await world.vms.recover()
    await state_becomes(world, vm, VmState.STOPPED)
    assert world.process(vm).events == ["shutdown"]
    await released(world, vm)
    assert world.repo.runtime_record(vm.id) is None


@pytest.mark.parametrize(
    ("left", "fault", "outcome", "reason"),
    [
        (VmState.READY, VmmGone("gone", S(-9)), VmState.CRASHED, "VMM exited while nexusd was down (signal 9)"),
        (VmState.STOPPING, VmmGone("gone", S(0)), VmState.STOPPED, "VMM exited while nexusd was down (status 0)"),
        (VmState.STARTING, VmmGone("pid reused"), VmState.FAILED, "VMM exited while nexusd was down (status unknown)"),
        (VmState.PAUSED, VmmGone("gone", S(-9)), VmState.CRASHED, "VMM exited while nexusd was down (signal 9)"),
        (
            VmState.UNREACHABLE,
            DriverError("its API does not answer"),
            VmState.CRASHED,
            "nexusd restarted and could not re-attach to its VMM: its API does not answer",
        ),
    ],
)
async def test_recover_settles_a_vm_whose_vmm_is_gone(
    world: World, left: VmState, fault: Exception, outcome: VmState, reason: str
) -> None:
    vm = world.create()
    path = {
        VmState.STARTING: (VmState.STARTING,),
        VmState.READY: (VmState.STARTING, VmState.READY),
        VmState.UNREACHABLE: (VmState.STARTING, VmState.READY, VmState.UNREACHABLE),
        VmState.PAUSED: (VmState.STARTING, VmState.READY, VmState.PAUSED),
        VmState.STOPPING: (VmState.STARTING, VmState.READY, VmState.STOPPING),
    }[left]
    world.place(vm, *path, record=_record())
    world.driver.adopt_faults[vm.id] = fault
    await world.vms.recover()
    assert world.repo.get(vm.id).state is outcome
    assert world.last_reason(vm) == reason
    assert world.driver.forgotten == [(vm.id, _record())]
    assert world.repo.runtime_record(vm.id) is None and not world.runtime.is_running(vm.id)
    assert (await asyncio.wait_for(world.vms.start("web"), 2)).state is VmState.READY


async def test_recover_settles_a_vm_never_spawned_and_leaves_stopped_ones(world: World) -> None:
    starting, stopped = world.create("a"), world.create("b")
    world.place(starting, VmState.STARTING)  # nexusd died before the VMM was spawned: no record
    await world.vms.start("b")
    await world.vms.stop("b")
    await world.vms.recover()
    assert world.repo.get(starting.id).state is VmState.FAILED
    assert world.last_reason(starting) == "nexusd restarted and found no VMM process"
    assert world.driver.forgotten == []  # no record names a driver
    assert world.repo.get(stopped.id).state is VmState.STOPPED
    assert world.orphans == []  # no pid on record: nothing to kill


async def test_recover_with_another_drivers_record_kills_the_orphan_by_pid(world: World) -> None:
    vm = world.create()
    world.place(vm, VmState.STARTING, VmState.READY, record=VmmRecord(4321, 1, "qemu", "tcg"))
    await world.vms.recover()  # no "qemu" adopter here
    assert world.orphans == [4321]
    assert world.repo.get(vm.id).state is VmState.CRASHED
    assert world.last_reason(vm) == "nexusd restarted and found no VMM process"


async def test_a_cancelled_start_never_leaves_the_vm_starting(world: World) -> None:
    """A start cancelled while launching (an MCP client's notifications/cancelled, nexusd shutting down) fails the
    VM as any other launch failure does: a VM left "starting" with no VMM refuses the next start."""
    vm = world.create()
    world.driver.boots.append(boot := Boot(gate=asyncio.Event()))
    start = asyncio.create_task(world.vms.start("web"))
    await boot.reached.wait()
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert world.repo.get(vm.id).state is VmState.FAILED
    assert world.last_reason(vm) == "start failed: the start was cancelled"
    assert_released(world, vm)
    assert (await asyncio.wait_for(world.vms.start("web"), 2)).state is VmState.READY


async def test_recover_ends_a_vmm_it_cannot_reattach_to(world: World) -> None:
    """adopt's DriverError means the VMM runs but cannot be reattached (ports.VmmDriver.adopt): it must be killed,
    or it runs on unmanaged while the VM counts as crashed, and the next start boots a second VMM on its drive."""
    vm = world.create()
    world.place(vm, VmState.STARTING, VmState.READY, record=_record())
    world.driver.adopt_faults[vm.id] = DriverError("its API does not answer")
    world.kill_answers = True
    await world.vms.recover()
    assert world.orphans == [777]
    assert world.repo.get(vm.id).state is VmState.CRASHED
    assert world.last_reason(vm) == (
        "nexusd restarted and killed its VMM (pid 777), which it could not re-attach to: its API does not answer"
    )


async def test_recover_adopts_a_vm_left_starting_and_its_agent_makes_it_ready(world: World) -> None:
    vm = world.create()
    world.place(vm, VmState.STARTING, record=_record())
    await world.vms.recover()
    await asyncio.wait_for(world.runtime.wait_ready(vm.id), 2)
    assert world.states(vm)[-2:] == [VmState.STARTING, VmState.READY]
