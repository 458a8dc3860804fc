"""The running side of the lifecycle: for each VM with a VMM process, watch the process, the agent's control
stream and its heartbeats, and apply the transitions that follow (see docs/design.md, Lifecycle).

Readiness is pushed by the agent's hello, never guessed. Missing heartbeats make a VM unreachable; a heartbeat
or hello brings it back. Each VM has one control link and one MCP link (requests multiplexed by JSON-RPC id); a
link that closes (EOF, or a new agent process announced by a hello with another pid) fails its calls in flight at
once and is reopened with jittered, capped exponential backoff for as long as the VMM runs; silence closes the MCP
link too, so calls in flight fail instead of hanging. VMM process exit makes it stopped (when a stop was asked) or
crashed, with the exit status in the history. A boot that produces no hello in time fails the VM with the console
tail. Whatever the way out, the process is reaped, the links closed and the runtime record cleared exactly once.

A VMM adopted after a nexusd restart is watched the same way: it counts as unreachable until its agent says hello
on the new links (it does on every new connection) and the MCP link is open again. ``detach_all`` lets go of
every VMM when nexusd exits and leaves them running. No runtime task dies silently: a failed store write is
retried with backoff, the watchdog logs and goes on, and a VM whose exit cannot be recorded yet is released all
the same (its record is written once the store takes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus import __version__
from nexus.domain import (
    AgentLinks,
    Conflict,
    DriverError,
    ExitStatus,
    GatewayHost,
    GuestConnector,
    GuestLink,
    GuestPort,
    InvalidState,
    NexusError,
    NotFound,
    Role,
    Unavailable,
    Vm,
    VmProcess,
    VmState,
    VmStore,
    can_transition,
)
from nexus.domain.retry import Backoff
from nexus.protocol import HEARTBEAT_METHOD, HELLO_METHOD, MCP_LATEST_PROTOCOL_VERSION, Hello
from nexus.services.lifecycle import transition

log = logging.getLogger(__name__)

STABLE_LINK_S = 5.0  # an MCP link that lived this long starts its reconnect backoff afresh
GATEWAY_INBOX = 1024  # gateway messages waiting to be served before the portal counts as flooding its link
EXIT_RECORD_WAIT_S = 2.0
HELLO_ASK_S = 5.0  # how long a VMM's exit waits for the store before the VM is released regardless
VmHook = Callable[[str], Awaitable[None]]
ReadyHook = Callable[[str, AgentLinks], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RuntimeTimeouts:
    boot_s: float = 90.0  # start → agent hello (TCG boots take ~4-10 s; slow CI hosts more)
    heartbeat_s: float = 6.0  # silence after which a ready VM is unreachable (agent beats every 2 s)
    stop_s: float = 15.0  # graceful power-off before the VMM is killed
    connect_s: float = 10.0  # reaching a guest stream's socket


@dataclass(eq=False)
class _Running:
    vm_id: str
    name: str
    process: VmProcess
    console_log: Path
    ready: asyncio.Future[None]
    hello: Hello | None = None
    last_seen: float = 0.0
    control: GuestLink | None = None
    mcp: GuestLink | None = None
    reachable: asyncio.Event = field(default_factory=asyncio.Event)  # set by hello/heartbeats, cleared by silence
    stop_requested: bool = False
    kill_requested: bool = False
    resumed: bool = False  # from a saved state: its agent never saw the host go, so it must be asked to say hello
    silence: str | None = None  # why the agent counts as unreachable, until it is heard from again
    failure: str | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _enqueue(inbox: asyncio.Queue[tuple[str, Any]], overflow: asyncio.Event) -> Callable[[str, Any], None]:
    """Queue a gateway notification; a full queue (a portal sending faster than it is served) sets ``overflow``."""

    def enqueue(method: str, params: Any) -> None:
        try:
            inbox.put_nowait((method, params))
        except asyncio.QueueFull:
            overflow.set()

    return enqueue


def console_tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return "\n".join(line.rstrip("\n") for line in deque(fh, maxlen=lines))
    except OSError:
        return "(no console output)"


class VmRuntime:
    """Owns every running VM's process handle, guest links and watchers."""

    def __init__(
        self,
        store: VmStore,
        *,
        connect: GuestConnector,
        timeouts: RuntimeTimeouts = RuntimeTimeouts(),
        on_ready: ReadyHook | None = None,
        on_exit: VmHook | None = None,
    ) -> None:
        """``connect`` opens the guest links.

        ``on_ready(vm_id, links)`` runs once the agent's MCP link is open, before the VM counts as ready (the
        guest's DNS, egress environment and CA are set then, through ``links``); ``on_exit(vm_id)`` once its VMM
        is reaped (its TAP goes then). Their failures are logged, never fatal to the lifecycle."""
        self._store = store
        self._connect = connect
        self._timeouts = timeouts
        self._on_ready = on_ready
        self._on_exit_hook = on_exit
        self._gateway: GatewayHost | None = None
        self._running: dict[str, _Running] = {}
        self._recording: set[asyncio.Task[None]] = set()  # exits still waiting for the store to take them

    def serve_gateways(self, gateway: GatewayHost) -> None:
        """Serve portal VMs' gateway links with ``gateway`` (set once at wiring, before any VM is watched: the
        gateway is built on the services that are built on this runtime)."""
        self._gateway = gateway

    def is_running(self, vm_id: str) -> bool:
        return vm_id in self._running

    def running(self) -> list[str]:
        """The ids of the VMs whose VMM this runtime watches."""
        return list(self._running)

    def watch(self, vm: Vm, process: VmProcess, console_log: Path, resumed: bool = False) -> None:
        """Take ownership of ``process`` for ``vm``: a VMM just launched (``vm`` is ``starting``; ``resumed``: from
        a saved state), or one adopted from an earlier nexusd (its links are reopened; it is ready again once its
        agent answers; a boot timeout counts from here)."""
        run = _Running(vm.id, vm.name, process, console_log, asyncio.get_running_loop().create_future())
        run.resumed = resumed
        run.ready.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)  # never "unretrieved"
        self._running[vm.id] = run
        run.tasks = [
            asyncio.create_task(self._on_exit(run), name=f"vm-exit-{vm.name}"),
            asyncio.create_task(self._control(run), name=f"vm-control-{vm.name}"),
            asyncio.create_task(self._mcp_link(run), name=f"vm-mcp-{vm.name}"),
            asyncio.create_task(self._watchdog(run), name=f"vm-watchdog-{vm.name}"),
        ]
        if vm.role is Role.PORTAL and self._gateway is not None:
            run.tasks.append(asyncio.create_task(self._gateway_link(run, self._gateway), name=f"vm-gw-{vm.name}"))

    async def wait_ready(self, vm_id: str) -> None:
        """Return once the agent said hello; raise DriverError if the VM failed or crashed first."""
        run = self._require(vm_id)
        await asyncio.shield(run.ready)

    async def stop(self, vm_id: str, kill: bool = False, reason: str = "stop requested") -> None:
        """Power the VM off (graceful, then kill; at once with ``kill``) and return once its process is reaped and
        recorded."""
        run = self._running.get(vm_id)
        if run is None:
            return
        run.stop_requested = True
        run.kill_requested = kill
        was_paused = self._store.get(vm_id).state is VmState.PAUSED
        self._transition(run, VmState.STOPPING, reason)
        if kill:
            await run.process.kill()
        else:
            if was_paused:  # a frozen guest cannot answer the power button
                with contextlib.suppress(DriverError):
                    await run.process.resume()
            await run.process.shutdown(self._timeouts.stop_s)
        await run.done.wait()

    async def save_state(self, vm_id: str, directory: Path, reason: str) -> bool:
        """Pause the VM and have its VMM save its memory and device state into ``directory``; the VM stays paused.
        True when it was ready (the caller resumes it once its drives are copied), False when it was paused."""
        run = self._require(vm_id)
        state = self._store.get(vm_id).state
        if state is VmState.READY:
            if not self._transition(run, VmState.PAUSED, reason):
                raise InvalidState(f"VM {run.name} is {self._store.get(vm_id).state}; it cannot be checkpointed now")
        elif state is not VmState.PAUSED:
            raise InvalidState(f"VM {run.name} is {state}; only a ready or paused VM can be checkpointed")
        try:
            await run.process.checkpoint(directory)
        except DriverError:
            if state is VmState.READY:
                with contextlib.suppress(DriverError):
                    await self.resume(vm_id, f"{reason} failed")
            raise
        return state is VmState.READY

    async def pause(self, vm_id: str) -> None:
        run = self._require(vm_id)
        if not self._transition(run, VmState.PAUSED, "pause requested"):
            raise InvalidState(f"VM {run.name} is {self._store.get(vm_id).state}; only a running VM can pause")
        try:
            await run.process.pause()
        except DriverError:
            self._transition(run, VmState.READY, "pause failed")
            raise

    async def resume(self, vm_id: str, reason: str = "resumed") -> None:
        run = self._require(vm_id)
        if self._store.get(vm_id).state is not VmState.PAUSED:
            raise InvalidState(f"VM {run.name} is not paused")
        await run.process.resume()
        run.last_seen = time.monotonic()  # heartbeats were frozen, not missed
        self._transition(run, VmState.READY, reason)

    def _require(self, vm_id: str) -> _Running:
        run = self._running.get(vm_id)
        if run is None:
            raise InvalidState("the VM is not running")
        return run

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(vm_id) for vm_id in list(self._running)), return_exceptions=True)
        await self._drain_records()

    async def detach_all(self) -> list[str]:
        """Let go of every VMM and leave it running (nexusd is exiting); returns the names of those VMs."""
        names = []
        for run in list(self._running.values()):
            for task in run.tasks:
                task.cancel()
            await asyncio.gather(*run.tasks, return_exceptions=True)
            for peer in (run.control, run.mcp):
                if peer is not None:
                    await peer.close("nexusd is exiting; the VM runs on")
            await run.process.detach()
            if not run.ready.done():
                run.ready.set_exception(Unavailable(f"VM {run.name}: nexusd is exiting"))
            del self._running[run.vm_id]
            run.done.set()
            names.append(run.name)
        await self._drain_records()
        return names

    async def _drain_records(self) -> None:
        """Give exits still waiting for the store a last moment; what does not land is settled at the next start."""
        if self._recording:
            await asyncio.wait(self._recording, timeout=EXIT_RECORD_WAIT_S)
            for task in self._recording:
                task.cancel()

    async def agent_request(self, vm_id: str, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        """One request on the VM's control stream (e.g. nexus/freeze); the link's domain errors as they come
        (Unavailable when the link is down or the agent gives no answer in time, GuestError for its own error)."""
        run = self._require(vm_id)
        if run.control is None or run.control.closed:
            raise Unavailable(f"VM {run.name}: its agent's control link is not open")
        return await run.control.call(method, params, timeout_s)

    def links(self, vm_id: str) -> AgentLinks:
        """The open control and MCP links of a ready VM (to tell its agent something again, e.g. its new name)."""
        run = self._require(vm_id)
        if run.control is None or run.control.closed or run.mcp is None or run.mcp.closed:
            raise Unavailable(f"VM {run.name} is not ready: its agent links are not open")
        return AgentLinks(control=run.control, mcp=run.mcp)

    def rename(self, vm_id: str, name: str) -> None:
        """A running VM was renamed (claimed from a warm pool): its messages and logs say the new name."""
        self._require(vm_id).name = name

    def mcp(self, vm_id: str) -> GuestLink:
        """The open MCP link of a ready VM."""
        run = self._require(vm_id)
        if self._store.get(vm_id).state is VmState.PAUSED:
            raise InvalidState(f"VM {run.name} is paused; resume it first")
        if run.mcp is None or run.mcp.closed:
            raise Unavailable(f"VM {run.name} is not ready: its agent link is not open")
        return run.mcp

    # -- watchers ---------------------------------------------------------------------------------------

    async def _on_exit(self, run: _Running) -> None:
        status = await run.process.wait()
        for peer in (run.control, run.mcp):
            if peer is not None:
                await peer.close(f"the VMM exited ({status})")
        for task in run.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        new, reason = self._exit_outcome(run, status)
        if not run.ready.done():
            run.ready.set_exception(
                DriverError(f"VM {run.name} did not become ready: {reason}\nconsole:\n{console_tail(run.console_log)}")
            )
        record = asyncio.create_task(self._record_exit(run, new, reason), name=f"vm-exit-record-{run.name}")
        self._recording.add(record)
        record.add_done_callback(self._recording.discard)
        await asyncio.wait({record}, timeout=EXIT_RECORD_WAIT_S)  # usually at once; never wait on a stuck store
        if self._on_exit_hook is not None:
            await self._guarded(run, "releasing its resources", self._on_exit_hook(run.vm_id))
        del self._running[run.vm_id]
        run.done.set()
        log.info("vm %s: %s", run.name, reason)

    def _exit_outcome(self, run: _Running, status: ExitStatus) -> tuple[VmState, str]:
        try:
            state: VmState | None = self._store.get(run.vm_id).state
        except Exception:  # the store is unavailable: judge by what this runtime knows
            state = None
        if run.failure is not None and not (run.stop_requested or state is VmState.STOPPING):
            return VmState.FAILED, run.failure
        if run.stop_requested or state is VmState.STOPPING:
            if run.kill_requested:
                return VmState.STOPPED, f"killed as asked (VMM exit {status})"
            if status.code is not None and status.code < 0:  # killed: it did not power off when asked
                return VmState.STOPPED, f"stopped by force (VMM exit {status}): the guest did not power off in time"
            return VmState.STOPPED, f"powered off (VMM exit {status})"
        if state is VmState.STARTING:  # it never came up: the start failed, it did not crash
            return VmState.FAILED, f"VMM exited during boot ({status})"
        return VmState.CRASHED, f"VMM exited unexpectedly ({status})"

    async def _record_exit(self, run: _Running, new: VmState, reason: str) -> None:
        """Write the VM's end state and clear its runtime record, retrying until the store takes both."""
        backoff = Backoff()
        warned = False
        while True:
            try:
                current = self._store.get(run.vm_id).state
                if current.has_process:
                    if not can_transition(current, new):  # e.g. paused -> stopped: through stopping
                        transition(self._store, run.vm_id, current, VmState.STOPPING, reason)
                        current = VmState.STOPPING
                    transition(self._store, run.vm_id, current, new, reason)
                    log.info("vm %s: %s -> %s (%s)", run.name, current, new, reason)
                self._store.set_runtime(run.vm_id, None)
                return
            except Conflict:
                continue  # changed under us: look again
            except NotFound:
                return  # removed meanwhile: nothing left to record
            except Exception as exc:
                if not warned:
                    log.warning("vm %s: cannot record its exit yet (%s); retrying", run.name, exc)
                    warned = True
                await backoff.sleep()

    async def _control(self, run: _Running) -> None:
        """Keep a control link open and feed hello/heartbeats into the lifecycle."""

        def on_message(method: str, params: Any) -> None:
            if method == HELLO_METHOD:
                try:
                    hello = Hello.from_params(params)
                except ValueError as exc:
                    log.warning("vm %s: bad hello: %s", run.name, exc)
                    return
                self._seen(run, f"agent {hello.agent_version} said hello")
                restarted = run.hello is not None and run.hello.pid != hello.pid
                run.hello = hello
                if restarted and run.mcp is not None:  # its MCP session died with it; _mcp_link opens a new one
                    run.tasks.append(asyncio.create_task(run.mcp.close("the guest agent restarted")))
            elif method == HEARTBEAT_METHOD:
                self._seen(run, "heartbeats resumed")

        backoff = Backoff()
        while run.process.exit_status is None:
            try:
                run.control = await self._connect(
                    run.process, GuestPort.CONTROL, run.name, on_message, self._timeouts.connect_s
                )
            except NexusError as exc:
                if run.process.exit_status is None:
                    log.warning("vm %s: control link: %s", run.name, exc)
                    await backoff.sleep()
                continue
            backoff.reset()
            if run.resumed:
                run.resumed = False
                run.tasks.append(asyncio.create_task(self._ask_hello(run, run.control, on_message)))
            await run.control.wait_closed()

    @staticmethod
    async def _ask_hello(run: _Running, link: GuestLink, on_message: Callable[[str, Any], None]) -> None:
        """A guest resumed from a saved state kept its connection as it was when saved: it does not know a new host
        side is there, so it says hello only when asked (else its next heartbeat would do, seconds later)."""
        try:
            on_message(HELLO_METHOD, await link.call(HELLO_METHOD, timeout_s=HELLO_ASK_S))
        except NexusError as exc:
            log.info("vm %s: asked for hello: %s (its heartbeats will do)", run.name, exc.message)

    async def _gateway_link(self, run: _Running, gateway: GatewayHost) -> None:
        """A portal's gateway: keep its link open and let ``gateway`` serve what the agent tunnels over it. An
        agent without a gateway never connects (QEMU) or dials (Firecracker): this retries quietly."""
        backoff = Backoff()
        while run.process.exit_status is None:
            await run.reachable.wait()
            inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(GATEWAY_INBOX)
            overflow = asyncio.Event()
            try:
                link = await self._connect(
                    run.process,
                    GuestPort.GATEWAY,
                    run.name,
                    _enqueue(inbox, overflow),
                    self._timeouts.connect_s,
                )
            except NexusError as exc:
                log.debug("vm %s: gateway link: %s", run.name, exc)
                await backoff.sleep()
                continue
            opened = asyncio.get_running_loop().time()
            serving = asyncio.create_task(gateway.serve(run.vm_id, link, inbox), name=f"vm-gw-serve-{run.name}")
            flooded = asyncio.create_task(overflow.wait())
            try:
                await asyncio.wait({serving, flooded}, return_when=asyncio.FIRST_COMPLETED)
                if flooded.done():
                    log.warning("vm %s: its gateway sends faster than nexusd serves it; link closed", run.name)
                    await link.close("the portal flooded its gateway")
                await serving
            except Exception:  # a fault of the gateway's must not end this VM's gateway for good
                log.exception("vm %s: serving its gateway failed; reopening", run.name)
            finally:
                flooded.cancel()
                serving.cancel()
                await link.close("the gateway stopped serving")
            if asyncio.get_running_loop().time() - opened > STABLE_LINK_S:  # one that keeps dying backs off
                backoff.reset()
            await backoff.sleep()

    async def _mcp_link(self, run: _Running) -> None:
        """While the agent is heard from: keep one initialized MCP session open, reopening it whenever it closes."""
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        while run.process.exit_status is None:
            await run.reachable.wait()
            try:
                peer = await self._open_mcp(run)
            except NexusError as exc:
                log.warning("vm %s: MCP link failed: %s", run.name, exc)
                await backoff.sleep()
                continue
            opened = loop.time()
            run.mcp = peer
            if self._on_ready is not None and run.control is not None:
                links = AgentLinks(control=run.control, mcp=peer)
                await self._guarded(run, "setting up the guest", self._on_ready(run.vm_id, links))
            if await self._persist(run, VmState.READY, self._ready_reason(run)) and not run.ready.done():
                run.ready.set_result(None)
            await peer.wait_closed()
            run.mcp = None
            if run.process.exit_status is None:
                log.info("vm %s: MCP link closed (%s); reopening", run.name, peer.close_reason)
                if loop.time() - opened > STABLE_LINK_S:  # a link that keeps dying at once backs off further
                    backoff.reset()
                await backoff.sleep()

    async def _open_mcp(self, run: _Running) -> GuestLink:
        peer = await self._connect(run.process, GuestPort.MCP, run.name, None, self._timeouts.connect_s)
        try:
            await peer.call(
                "initialize",
                {
                    "protocolVersion": MCP_LATEST_PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "nexusd", "version": __version__},
                },
            )
            await peer.notify("notifications/initialized")
        except BaseException:
            await peer.close("MCP initialize failed")
            raise
        return peer

    @staticmethod
    async def _guarded(run: _Running, what: str, hook: Awaitable[None]) -> None:
        """Await a hook; its failure is logged, never fatal to the lifecycle."""
        try:
            await hook
        except Exception as exc:
            log.warning("vm %s: %s failed: %s", run.name, what, getattr(exc, "message", None) or exc)

    @staticmethod
    def _ready_reason(run: _Running) -> str:
        hello = run.hello
        if hello is None:
            return "agent ready"
        boot_s = max(0.0, time.time() - hello.boot_time)
        return f"agent {hello.agent_version} ready, guest up {boot_s:.1f}s"

    @staticmethod
    def _seen(run: _Running, reason: str) -> None:
        """The agent was heard from: an unreachable VM is ready again once ``_mcp_link`` has its MCP link open."""
        if not run.reachable.is_set():
            log.info("vm %s: %s", run.name, reason)
        run.silence = None
        run.last_seen = time.monotonic()
        run.reachable.set()

    async def _watchdog(self, run: _Running) -> None:
        """Boot and heartbeat timeouts. Survives store errors: it logs them and looks again on the next tick."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        failing = False
        while True:
            await asyncio.sleep(0.5)
            try:
                await self._watch_once(run, loop.time() - started)
            except Exception as exc:
                if not failing:
                    log.warning("vm %s: watchdog: %s; retrying", run.name, exc)
                failing = True
            else:
                failing = False

    async def _watch_once(self, run: _Running, watched_s: float) -> None:
        if run.failure is not None:
            return
        try:
            state: VmState | None = self._store.get(run.vm_id).state
        except Exception as exc:
            state, store_error = None, exc
        silent_s = time.monotonic() - run.last_seen
        if state in (VmState.READY, None) and run.reachable.is_set() and silent_s > self._timeouts.heartbeat_s:
            run.silence = f"no heartbeat for {silent_s:.0f}s"
            run.reachable.clear()
            if run.mcp is not None:  # calls in flight fail now instead of waiting on a silent agent
                await run.mcp.close(f"the agent is unreachable ({run.silence})")
        if state is None:
            raise store_error
        if state is VmState.READY and run.silence is not None and not run.reachable.is_set():
            self._transition(run, VmState.UNREACHABLE, run.silence)
        if state is VmState.STARTING and watched_s > self._timeouts.boot_s:
            run.failure = (
                f"no agent hello within {self._timeouts.boot_s:.0f}s; console:\n{console_tail(run.console_log)}"
            )
            await run.process.kill()  # _on_exit records the failure and releases everything

    async def _persist(self, run: _Running, new: VmState, reason: str) -> bool:
        """``_transition``, retried with backoff while the store fails and the VMM runs."""
        backoff = Backoff()
        warned = False
        while run.process.exit_status is None:
            try:
                return self._transition(run, new, reason)
            except Exception as exc:
                if not warned:
                    log.warning("vm %s: cannot record %s yet (%s); retrying", run.name, new, exc)
                    warned = True
                await backoff.sleep()
        return False

    def _transition(self, run: _Running, new: VmState, reason: str) -> bool:
        """Apply ``new`` if the table allows it from the current state (an event such as a heartbeat applies only
        in some states); False when it does not apply."""
        current = self._store.get(run.vm_id).state
        if not can_transition(current, new):
            return False
        try:
            transition(self._store, run.vm_id, current, new, reason)
        except Conflict:
            return False
        log.info("vm %s: %s -> %s (%s)", run.name, current, new, reason)
        return True


__all__ = ["ReadyHook", "RuntimeTimeouts", "VmHook", "VmRuntime", "console_tail"]
