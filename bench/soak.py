"""Soak: many create → start → exec → stop → rm cycles of real QEMU VMs through a real nexusd that is killed with
SIGKILL and started again (live restore) several times during the run; leak counters before and after.

One nexusd (``--no-network``) on a state dir of its own whose kernel cache links to the e2e one
($NEXUS_E2E_STATE, default /var/tmp/nexus-e2e) and whose database knows the e2e images, the image with this
checkout's agent (else the e2e default image) being the default. ``--concurrency`` workers run ``--cycles``
cycles, each on a VM of its own. Every ``cycles/(kills+1)`` completed cycles nexusd is SIGKILLed — while a worker
is in the step that kill aims at (start, stop, rm, exec, create in turn), a random part of that step's median
duration into it — and started again at once on the same state dir: the VMs it left run on and the new nexusd
adopts them. A cycle tolerates what that does to it — the daemon unreachable while it is down (the step is retried
once it is back, after looking at the VM's state), a VM not ready while it is re-adopted, a start or stop cut
short — and counts each by kind; a cycle that cannot finish for another reason, or whose VM crashed, is a failure
(its VM is then removed with force).

The bench process is a child subreaper (as systemd is for nexusd.service): the VMMs of a killed nexusd become its
children, and it reaps them once they exit (after a grace period with a nexusd up, so that nexusd can read the exit
status from the zombie first). Leak counters (VMM processes, zombies, nexusd's fds and RSS, TAPs, leases, runtime
dirs, drive files, database rows) are measured with the daemon up and no VM before the cycles, and again after them
once idle; the run exits 1 when one did not return to its baseline, a cycle failed, or nexusd died unasked.
nexusd's RSS is compared loosely (the process measured after is the one the last kill started, not the first).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from tests.api_client import NexusClient

import nexus
from bench.common import link_cache, percentile, print_table
from nexus.client import DaemonUnreachable
from nexus.domain import Conflict, DriverError, InvalidState, Layout, NexusError, NotFound
from nexus.images.agentinstall import agent_digest
from nexus.services import SettingsService
from nexus.store import ImageRepo, SettingsRepo, open_database

T = TypeVar("T")

SHARED = Path(os.environ.get("NEXUS_E2E_STATE", "/var/tmp/nexus-e2e"))
E2E_AGENT_PREFIX = "e2e-agent-"
PR_SET_CHILD_SUBREAPER = 36
CONFIG = "boot_timeout_s = 90\nheartbeat_timeout_s = 6\nstop_timeout_s = 10\n"
BOOT_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
MEM_MIB = 256
API_TIMEOUT_S = 300.0  # a start waits for the agent's hello
DAEMON_UP_TIMEOUT_S = 120.0  # a restarted nexusd re-adopts every VM before it answers
ATTEMPTS = 8  # tries of one step before the cycle fails
REAP_GRACE_S = 3.0  # an orphaned VMM stays a zombie this long, so the new nexusd reads its exit status
IDLE_S = 5.0  # quiet time before the "after" counters
RSS_TOLERANCE = 1.5  # RSS counts as leaked past this factor of the baseline (a different process: see above)
TRANSIENT_STATES = ("starting", "unreachable")
STEPS = ("create", "start", "exec", "stop", "rm")  # the methods of _Ctx, in a cycle's order
KILL_STEPS = ("start", "stop", "rm", "exec", "create")  # what the k-th kill aims at, in turn
KILL_AIM_TIMEOUT_S = 120.0
LIVE_STATES = ("starting", "ready", "unreachable", "paused", "stopping")


class CycleFailed(Exception):
    pass


class MissingAssets(Exception):
    pass


# -- processes --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int


def proc_stat(pid: int) -> ProcStat | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    rest = data[data.rindex(")") + 2 :].split()
    return ProcStat(pid, comm, rest[0], int(rest[1]))


def all_pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def vmm_pids(run_dir: Path) -> list[int]:
    """Live QEMU processes whose command line names ``run_dir`` (a zombie's command line is empty)."""
    needle = str(run_dir).encode()
    found = []
    for pid in all_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith(b"qemu-system") and any(needle in a for a in argv):
            found.append(pid)
    return found


def zombies(parents: set[int]) -> list[ProcStat]:
    return [s for pid in all_pids() if (s := proc_stat(pid)) and s.state == "Z" and s.ppid in parents]


def describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"signal {-code}" if code < 0 else f"exit {code}"


class Reaper:
    """Reaps this process's zombie children that nobody else waits for: the VMMs a killed nexusd left (we are
    their subreaper). Each is left a zombie for ``REAP_GRACE_S`` with a nexusd up first, so the nexusd that adopted
    it (or settles it at its start) can read its exit status from /proc."""

    def __init__(self, exclude: Callable[[], set[int]], hold: Callable[[], bool]) -> None:
        self._exclude, self._hold = exclude, hold
        self._seen: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.reaped: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.reap_once(REAP_GRACE_S)

    def reap_once(self, grace_s: float) -> None:
        with self._lock:
            now = time.monotonic()
            excluded, hold = self._exclude(), self._hold()
            for z in zombies({os.getpid()}):
                if z.pid in excluded:
                    continue
                if hold and grace_s:  # no nexusd to read its exit status yet: the grace starts once one is up
                    self._seen[z.pid] = now
                    continue
                if now - self._seen.setdefault(z.pid, now) < grace_s:
                    continue
                try:
                    done, status = os.waitpid(z.pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if done == z.pid:
                    self._seen.pop(z.pid, None)
                    what = "VMM" if z.comm.startswith("qemu") else z.comm
                    self.reaped[f"{what} {describe_status(status)}"] += 1


# -- the shared assets and our state dir ---------------------------------------------------------------------------


def link_state(base: Path) -> tuple[Path, str]:
    """A state dir of our own linked to the e2e assets (as tests/e2e/conftest.py's ``linked_state``): kernel cache
    linked (initramfs copied: nexusd may rebuild it), the e2e images known, vmm qemu, and a default image: the one
    with this checkout's agent if built, else the e2e default. Raises MissingAssets when they are not there."""
    kernels = SHARED / "cache" / "kernels"
    kdirs = [d for d in kernels.iterdir() if not d.name.startswith(".")] if kernels.is_dir() else []
    if not any((d / "kernel.json").exists() for d in kdirs):
        raise MissingAssets(f"no kernel in {kernels}")
    if not (SHARED / "nexus.db").exists():
        raise MissingAssets(f"no database in {SHARED}")
    shared = Layout(state_dir=SHARED, runtime_dir=base / "unused")
    layout = Layout(state_dir=base / "state", runtime_dir=base / "run")
    link_cache(shared.cache_dir, layout.cache_dir)
    shared_conn, conn = open_database(shared.database), open_database(layout.database)
    try:
        images = [i for i in ImageRepo(shared_conn, shared.state_dir).find() if Path(i.path).exists()]
        names = {i.name for i in images}
        wanted = E2E_AGENT_PREFIX + agent_digest(Path(nexus.__file__).parent)
        shared_default = SettingsService(SettingsRepo(shared_conn)).str_value("default_image")
        image = wanted if wanted in names else shared_default if shared_default in names else None
        if image is None:
            raise MissingAssets(f"no usable image in {SHARED} (wanted {wanted} or the default {shared_default!r})")
        for img in images:
            ImageRepo(conn).insert(img)
        settings = SettingsService(SettingsRepo(conn))
        settings.set("vmm", "qemu")
        settings.set("default_image", image)
    finally:
        shared_conn.close()
        conn.close()
    return layout.state_dir, image


# -- nexusd ---------------------------------------------------------------------------------------------------------


class Daemon:
    """nexusd as our child, started, SIGKILLed and restarted on the same state dir; every incarnation logs to the
    same file, after a marker line. ``up`` is clear while it is down."""

    def __init__(self, base: Path, state: Path) -> None:
        self.state, self.run_dir, self.socket = state, base / "run", base / "nexusd.sock"
        self.config, self.log = base / "nexusd.toml", base / "nexusd.log"
        self.config.write_text(CONFIG)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: set[int] = set()
        self.generation = 0  # incarnations started
        self.up = threading.Event()
        self.lock = threading.RLock()
        self.killing = False
        self.unasked_exits: list[str] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Start nexusd and return the seconds until it answered."""
        with self.lock:
            t = time.monotonic()
            with self.log.open("ab") as fh:
                fh.write(f"### soak: starting nexusd #{self.generation + 1} at {time.strftime('%X')}\n".encode())
                fh.flush()
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "nexus.daemon.main",
                        "--state-dir",
                        str(self.state),
                        "--runtime-dir",
                        str(self.run_dir),
                        "--socket",
                        str(self.socket),
                        "--no-network",
                        "--config",
                        str(self.config),
                        "--log-level",
                        "info",
                    ],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C of the bench reaches the bench only; we stop it by pid
                )
            self.pids.add(self.proc.pid)
            self.generation += 1
            deadline = time.monotonic() + DAEMON_UP_TIMEOUT_S
            while True:
                try:
                    with NexusClient(self.socket, timeout_s=5) as c:
                        if c.health().get("status") == "ok":
                            break
                except (NexusError, httpx.HTTPError, OSError):
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nexusd did not come up (exit {self.proc.poll()}); see {self.log}")
                time.sleep(0.05)
            self.up.set()
            return time.monotonic() - t

    def kill(self) -> None:
        with self.lock:
            assert self.proc is not None
            self.killing = True
            self.up.clear()
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.killing = False

    def terminate(self, timeout_s: float = 60) -> int | None:
        """SIGTERM and wait; SIGKILL past ``timeout_s``. The exit code (None if it had to be killed)."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                return None if self.proc is None else self.proc.returncode
            self.up.clear()
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None

    def check_alive(self) -> None:
        """Restart a nexusd that died without being asked to (and note it: that is a bug)."""
        with self.lock:
            if self.proc is None or self.killing or not self.up.is_set() or self.proc.poll() is None:
                return
            self.up.clear()
            self.unasked_exits.append(f"nexusd #{self.generation} pid {self.proc.pid} exited {self.proc.returncode}")
            self.start()

    def wait_up(self) -> None:
        if not self.up.wait(DAEMON_UP_TIMEOUT_S):
            raise CycleFailed(f"nexusd did not come back within {DAEMON_UP_TIMEOUT_S:.0f}s")

    def fds(self) -> list[str]:
        out = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                out.append(re.sub(r"\[\d+\]$", "", os.readlink(f"/proc/{self.pid}/fd/{fd}")))
        return out

    def status_field(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {key} in /proc/{self.pid}/status")


# -- counters ---------------------------------------------------------------------------------------------------------


def _entries(path: Path) -> int:
    return len(os.listdir(path)) if path.is_dir() else 0


def _rows(db: Path, table: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def _taps() -> int | str:
    try:
        links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, check=True, text=True).stdout)
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        return f"? ({exc})"
    return sum(1 for link in links if str(link.get("ifalias", "")).startswith("nexus"))


@dataclass
class Counters:
    values: dict[str, Any]
    fds: list[str]


def measure(daemon: Daemon) -> Counters:
    layout = Layout(state_dir=daemon.state, runtime_dir=daemon.run_dir)
    fds = daemon.fds()
    values: dict[str, Any] = {
        "VMM processes": len(vmm_pids(daemon.run_dir)),
        "zombies (children of bench or nexusd)": len(zombies({os.getpid(), daemon.pid})),
        "nexusd open fds": len(fds),
        "nexusd RSS (MiB)": round(daemon.status_field("VmRSS") / 1024, 1),
        "nexusd threads": daemon.status_field("Threads"),
        "TAPs (ifalias nexus*)": _taps(),
        "leases (net_leases rows)": _rows(layout.database, "net_leases"),
        "nftables rules": "n/a (--no-network)",
        "runtime dirs (R/vms)": _entries(daemon.run_dir / "vms"),
        "drive files (S/drives)": _entries(layout.drives_dir),
        "VM state dirs (S/vms)": _entries(daemon.state / "vms"),
        "snapshot dirs (S/snapshots)": _entries(layout.snapshots_dir),
        "DB vms rows": _rows(layout.database, "vms"),
        "DB drives rows": _rows(layout.database, "drives"),
        "DB snapshots rows": _rows(layout.database, "snapshots"),
        "DB vm_state_history rows": _rows(layout.database, "vm_state_history"),
    }
    return Counters(values, fds)


def leak_verdict(key: str, before: Any, after: Any) -> str:
    if key == "DB vm_state_history rows":
        return "(grows: not counted)"
    if key == "nexusd threads":
        return "(info)"
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        return "-" if before == after else "?"
    if key == "nexusd RSS (MiB)":
        return "YES" if after > before * RSS_TOLERANCE else "no"
    return "YES" if after > before else "no"


# -- the cycles -----------------------------------------------------------------------------------------------------


@dataclass
class CycleResult:
    index: int
    name: str
    ok: bool = False
    duration_s: float = 0.0
    failure: str | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class KillRecord:
    number: int
    after_cycles: int
    target: str  # the step it aimed at
    delay_s: float  # into that step
    in_flight: str
    with_vmm: dict[str, str]  # name → state, of the VMs that had a VMM at the kill
    incarnation: int = 0
    ready_at_kill: int = 0
    down_s: float = 0.0
    ready_again_s: float | None = None  # until every VM that was ready at the kill is ready again
    settled_s: float | None = None  # until every VM with a VMM at the kill is out of starting/unreachable
    lost: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, daemon: Daemon, cycles: int, concurrency: int, kills: int, seed: int | None) -> None:
        self.daemon = daemon
        self.cycles, self.concurrency, self.kills = cycles, concurrency, kills
        self.prefix = f"soak-{uuid.uuid4().hex[:6]}-"
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)  # notified when a worker enters a step
        self.step_s: dict[str, list[float]] = {step: [] for step in STEPS}
        self.next_index = 0
        self.completed = 0
        self.results: list[CycleResult] = []
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # the first error message of each kind
        self.boot_s: list[float] = []  # start → ready, starts no kill interrupted
        self.cut_boot_s: list[float] = []  # start → ready, starts a kill interrupted
        self.kill_records: list[KillRecord] = []
        self.seed = seed if seed is not None else random.randrange(1 << 32)
        self.rng = random.Random(self.seed)
        self.in_flight: dict[int, tuple[int, str]] = {}
        self.done = threading.Event()
        self.abort = threading.Event()
        self.t_start = self.t_end = 0.0

    # -- running

    def run(self) -> None:
        self.t_start = time.monotonic()
        workers = [threading.Thread(target=self._worker, args=(w,), name=f"w{w}") for w in range(self.concurrency)]
        killer = threading.Thread(target=self._killer, name="killer")
        for t in [*workers, killer]:
            t.start()
        try:
            while any(t.is_alive() for t in workers):
                for t in workers:
                    t.join(timeout=0.5)
                self.daemon.check_alive()
        except BaseException:
            self.abort.set()
            raise
        finally:
            self.t_end = time.monotonic()
            self.done.set()
            killer.join()
            for t in workers:
                t.join()

    def _worker(self, w: int) -> None:
        while not self.abort.is_set():
            with self.lock:
                if self.next_index >= self.cycles:
                    self.in_flight.pop(w, None)
                    return
                i = self.next_index
                self.next_index += 1
            result = self._cycle(i, w)
            with self.lock:
                self.results.append(result)
                self.completed += 1
                done, failed = self.completed, sum(1 for r in self.results if not r.ok)
            if not result.ok:
                print(f"  cycle {i} ({result.name}) FAILED: {result.failure}", flush=True)
            if done % 10 == 0 or done == self.cycles:
                mins = (time.monotonic() - self.t_start) / 60
                print(
                    f"  [{mins:5.1f} min] {done}/{self.cycles} cycles ({failed} failed), "
                    f"{len(self.kill_records)} kills, {sum(self.errors.values())} tolerated errors",
                    flush=True,
                )

    def _killer(self) -> None:
        """Kill k is due once ``cycles*k/(kills+1)`` cycles are done; it then waits for a worker to be in the step
        it aims at (start, stop, rm, exec, create in turn) and kills nexusd after a random part of that step's
        median duration, so that every step gets cut short somewhere."""
        marks = [round(self.cycles * (k + 1) / (self.kills + 1)) for k in range(self.kills)]
        for k, mark in enumerate(marks, 1):
            while self.completed < mark:
                if self.done.wait(0.1):
                    return
            target = KILL_STEPS[(k - 1) % len(KILL_STEPS)]
            with self.cond:
                self.cond.wait_for(
                    lambda: self.done.is_set() or any(s == target for _, s in self.in_flight.values()),  # noqa: B023
                    timeout=KILL_AIM_TIMEOUT_S,
                )
                samples = list(self.step_s[target])
            if self.done.is_set():
                return
            delay = self.rng.uniform(0, statistics.median(samples)) if samples else 0.0
            time.sleep(delay)
            vms = self._vms()
            with self.lock:
                in_flight = Counter(step for _, step in self.in_flight.values())
            record = KillRecord(
                k,
                self.completed,
                target,
                delay,
                ", ".join(f"{s} x{n}" for s, n in sorted(in_flight.items())),
                {name: state for name, (state, pid) in vms.items() if pid},
            )
            t = time.monotonic()
            self.daemon.kill()
            try:
                self.daemon.start()
            except RuntimeError as exc:
                print(f"  kill #{k}: {exc}", flush=True)
                self.abort.set()
                return
            record.down_s = time.monotonic() - t
            record.incarnation = self.daemon.generation
            self._await_readoption(record)
            self.kill_records.append(record)
            print(
                f"  kill #{k} after {record.after_cycles} cycles, {delay:.2f}s into {target} (in flight: "
                f"{record.in_flight or '-'}; {len(record.with_vmm)} VMM(s)): nexusd back in {record.down_s:.2f}s"
                + (
                    f", the VMs ready at the kill ready again {record.ready_again_s:.2f}s later"
                    if record.ready_again_s is not None
                    else ""
                )
                + (f"; lost: {record.lost}" if record.lost else ""),
                flush=True,
            )

    def _vms(self) -> dict[str, tuple[str, int | None]]:
        try:
            with NexusClient(self.daemon.socket, timeout_s=10) as c:
                return {v["name"]: (v["state"], v.get("pid")) for v in c.list_vms()}
        except NexusError:
            return {}

    def _await_readoption(self, record: KillRecord) -> None:
        """Until every VM that had a VMM at the kill is out of starting/unreachable (ready, or moved on by its
        cycle); VMs it left crashed or failed are lost."""
        t = time.monotonic()
        deadline = t + BOOT_TIMEOUT_S + 30
        was_ready = [n for n, s in record.with_vmm.items() if s in ("ready", "unreachable")]
        record.ready_at_kill = len(was_ready)
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {n: s for n, (s, _) in self._vms().items()}
            if not states and self.daemon.up.is_set():
                time.sleep(0.2)
                continue
            if (
                was_ready
                and record.ready_again_s is None
                and not any(states.get(n) in TRANSIENT_STATES for n in was_ready)
            ):
                record.ready_again_s = time.monotonic() - t
            if not any(states.get(n) in TRANSIENT_STATES for n in record.with_vmm):
                record.settled_s = time.monotonic() - t
                break
            time.sleep(0.1)
        record.lost = [f"{n}: {states[n]}" for n in record.with_vmm if states.get(n) in ("crashed", "failed")]

    # -- one cycle

    def _cycle(self, i: int, w: int) -> CycleResult:
        res = CycleResult(i, self.prefix + f"{i:04d}")
        client = [NexusClient(self.daemon.socket, timeout_s=API_TIMEOUT_S)]

        def api() -> NexusClient:
            return client[0]

        def fresh() -> None:  # a new connection pool after the daemon came back
            client[0].close()
            client[0] = NexusClient(self.daemon.socket, timeout_s=API_TIMEOUT_S)

        ctx = _Ctx(self, res, w, api, fresh)
        t = time.monotonic()
        try:
            for step in STEPS:
                with self.cond:
                    self.in_flight[w] = (i, step)
                    self.cond.notify_all()
                ctx.step = step
                t_step = time.monotonic()
                getattr(ctx, step)()
                with self.lock:
                    self.step_s[step].append(time.monotonic() - t_step)
            res.ok = not any(e.startswith("ANOMALY") for e in res.errors)
            if not res.ok:
                res.failure = "; ".join(e for e in res.errors if e.startswith("ANOMALY"))
        except (CycleFailed, NexusError, httpx.HTTPError) as exc:
            res.failure = f"{ctx.step}: {type(exc).__name__}: {exc}"
            with self.lock:
                self.in_flight[w] = (i, "cleanup")
            ctx.cleanup()
        finally:
            res.duration_s = time.monotonic() - t
            client[0].close()
            with self.lock:
                self.in_flight.pop(w, None)
        return res


class _Ctx:
    """One cycle's steps. Each step tries up to ATTEMPTS times; after an error it looks at the VM's state to decide
    what is left to do. Errors are counted as "step: kind"."""

    def __init__(
        self, soak: Soak, res: CycleResult, w: int, api: Callable[[], NexusClient], fresh: Callable[[], None]
    ) -> None:
        self.soak, self.res, self.w, self.api, self.fresh = soak, res, w, api, fresh
        self.name = res.name
        self.step = "create"
        self.gen0 = soak.daemon.generation  # the incarnation this cycle began with

    # -- helpers

    def note(self, kind: str, exc: BaseException | None = None, anomaly: bool = False) -> None:
        key = f"{self.step}: {kind}"
        detail = f"{key}" + (f" ({type(exc).__name__}: {str(exc)[:300]})" if exc is not None else "")
        with self.soak.lock:
            self.soak.errors[key] += 1
            if exc is not None:
                self.soak.examples.setdefault(key, f"{self.name}: {type(exc).__name__}: {str(exc)[:300]}")
        self.res.errors.append(("ANOMALY " if anomaly else "") + detail)

    def killed_since(self, gen: int) -> bool:
        return self.soak.daemon.generation != gen or not self.soak.daemon.up.is_set()

    def unreachable(self, exc: BaseException, gen: int) -> None:
        """Count a daemon-unreachable error and wait for nexusd to be back."""
        if isinstance(exc, httpx.TimeoutException) or "did not answer in time" in str(exc):
            kind = "client timeout"
        else:
            kind = "daemon unreachable" + (" (killed)" if self.killed_since(gen) else " (NOT killed)")
        if isinstance(exc, httpx.TransportError):
            kind += f" [raw {type(exc).__name__} escaped NexusClient]"
        self.note(kind, exc)
        self.soak.daemon.wait_up()
        self.fresh()

    def retrying(self, fn: Callable[[NexusClient], T]) -> T:
        """``fn`` until it gets an answer (or an error that is not the daemon being unreachable)."""
        for _ in range(ATTEMPTS):
            gen = self.soak.daemon.generation
            try:
                return fn(self.api())
            except (DaemonUnreachable, httpx.TransportError) as exc:
                self.unreachable(exc, gen)
        raise CycleFailed(f"nexusd unreachable {ATTEMPTS} times in a row")

    def state(self) -> str | None:
        def get(c: NexusClient) -> str | None:
            try:
                return str(c.get_vm(self.name)["state"])
            except NotFound:
                return None

        return self.retrying(get)

    def wait_state(self, leave: tuple[str, ...], timeout_s: float) -> str | None:
        """Poll until the VM's state is not in ``leave`` (or it is gone); the state then."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state()
            if state not in leave or time.monotonic() > deadline:
                return state
            time.sleep(0.25)

    # -- steps

    def create(self) -> None:
        for attempt in range(ATTEMPTS):
            gen = self.soak.daemon.generation
            try:
                self.api().create_vm(name=self.name, mem_mib=MEM_MIB)
                return
            except (DaemonUnreachable, httpx.TransportError) as exc:
                self.unreachable(exc, gen)
                if self.state() is not None:
                    self.note("the cut-short create had landed")
                    return
            except Conflict as exc:
                if attempt and self.state() is not None:
                    return
                raise CycleFailed(f"create: {exc}") from exc
        raise CycleFailed(f"create: no success in {ATTEMPTS} attempts")

    def start(self) -> None:
        t0, gen0 = time.monotonic(), self.soak.daemon.generation
        for _ in range(ATTEMPTS):
            gen = self.soak.daemon.generation
            state: str | None
            try:
                state = str(self.api().start_vm(self.name)["state"])
            except (DaemonUnreachable, httpx.TransportError) as exc:
                self.unreachable(exc, gen)
                state = self.state()
            except InvalidState as exc:  # e.g. "already starting": the cut-short start goes on
                state = self.state()
                self.note(f"refused: already {state}", exc if not self.killed_since(gen0) else None)
            except Conflict as exc:  # busy: the VM's lock is held (a restarted nexusd settling it)
                self.note("busy", exc)
                time.sleep(1)
                continue
            except DriverError as exc:
                if not self.killed_since(gen):
                    raise CycleFailed(f"start: {exc}") from exc
                self.note("start failed across a kill", exc)
                state = self.state()
            if state in TRANSIENT_STATES:
                state = self.wait_state(TRANSIENT_STATES, BOOT_TIMEOUT_S + 30)
            if state == "ready":
                took = time.monotonic() - t0
                with self.soak.lock:
                    (self.soak.boot_s if self.soak.daemon.generation == gen0 else self.soak.cut_boot_s).append(took)
                return
            if state is None:
                raise CycleFailed("start: the VM is gone")
            if state == "crashed":
                self.note("VM crashed", anomaly=True)
            else:
                self.note(f"VM {state} once nexusd was back; starting (again)")
        raise CycleFailed(f"start: not ready after {ATTEMPTS} attempts")

    def exec(self) -> None:
        token = f"soak {self.name}"
        for _ in range(ATTEMPTS):
            gen = self.soak.daemon.generation
            try:
                out = self.api().call_tool(self.name, "run_command", {"command": ["echo", token]})
            except (DaemonUnreachable, httpx.TransportError) as exc:
                self.unreachable(exc, gen)
            except NexusError as exc:
                state = self.state()
                if state not in ("ready", *TRANSIENT_STATES):
                    raise CycleFailed(f"exec: {type(exc).__name__}: {exc} (VM {state})") from exc
                killed = self.killed_since(self.gen0)
                self.note(f"VM {state}" + (" after a kill" if killed else " (no kill)"), None if killed else exc)
            else:
                stdout = (out.get("structuredContent") or {}).get("stdout")
                if stdout != token + "\n":
                    raise CycleFailed(f"exec: unexpected answer {json.dumps(out)[:300]}")
                return
            if self.wait_state(TRANSIENT_STATES, BOOT_TIMEOUT_S) != "ready":
                raise CycleFailed(f"exec: VM {self.state()}, not ready again")
        raise CycleFailed(f"exec: no answer in {ATTEMPTS} attempts")

    def stop(self) -> None:
        for _ in range(ATTEMPTS):
            gen = self.soak.daemon.generation
            state: str | None
            try:
                state = str(self.api().stop_vm(self.name)["state"])
            except (DaemonUnreachable, httpx.TransportError) as exc:
                self.unreachable(exc, gen)
                state = self.state()
            except InvalidState:  # "nothing to stop": a cut-short stop had finished
                state = self.state()
                self.note(f"refused: already {state}")
            except Conflict as exc:
                self.note("busy", exc if not self.killed_since(self.gen0) else None)
                time.sleep(1)
                state = self.state()
            if state == "stopping":
                state = self.wait_state(("stopping",), STOP_TIMEOUT_S + 30)
            if state == "stopped":
                return
            if state == "crashed":
                self.note("VM crashed", anomaly=True)
                return
            if state is None:
                raise CycleFailed("stop: the VM is gone")
            if state in ("created", "failed"):
                raise CycleFailed(f"stop: VM {state}")
        raise CycleFailed(f"stop: not stopped after {ATTEMPTS} attempts")

    def rm(self) -> None:
        for attempt in range(ATTEMPTS):
            gen = self.soak.daemon.generation
            try:
                self.api().remove_vm(self.name)
            except (DaemonUnreachable, httpx.TransportError) as exc:
                self.unreachable(exc, gen)
            except NotFound:
                if not attempt:
                    raise
            except InvalidState as exc:  # it runs again?
                self.note("refused", exc)
                self.stop()
                continue
            except Conflict as exc:
                self.note("busy", exc if not self.killed_since(self.gen0) else None)
                time.sleep(1)
            if self.state() is None:
                return
        raise CycleFailed(f"rm: still there after {ATTEMPTS} attempts")

    def cleanup(self) -> None:
        """A failed cycle's VM, removed with force (stopped first by nexusd)."""
        for _ in range(ATTEMPTS):
            try:
                if self.state() is None:
                    return
                self.api().remove_vm(self.name, force=True)
                return
            except (DaemonUnreachable, httpx.TransportError, CycleFailed):
                self.soak.daemon.wait_up()
                self.fresh()
            except NexusError as exc:
                self.res.failure = f"{self.res.failure}; cleanup: {exc}"
                time.sleep(1)


# -- report ---------------------------------------------------------------------------------------------------------


def log_summary(log: Path) -> list[tuple[str, int]]:
    """WARNING/ERROR lines of the nexusd log, grouped with ids and numbers masked; tracebacks counted."""
    groups: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (\S+): (.*)$", line)
        if m:
            msg = re.sub(r"soak-[0-9a-f]{6}-\d{4}", "<vm>", m.group(3))
            msg = re.sub(r"\b[0-9a-f]{12}\b", "<id>", msg)
            msg = re.sub(r"\d+(\.\d+)?", "N", msg)[:150]
            groups[f"{m.group(1)} {m.group(2)}: {msg}"] += 1
        elif line.startswith("Traceback"):
            groups["Traceback"] += 1
    return groups.most_common()


def _recovery_log(log: Path, incarnation: int) -> str:
    """nexusd #``incarnation``'s log up to "serving on" (what it did at its start)."""
    text = log.read_text(errors="replace")
    segment = text.split(f"### soak: starting nexusd #{incarnation} ", 1)[-1].split("### soak: starting nexusd #")[0]
    return segment.split(" serving on ", 1)[0]


def restart_notes(log: Path, incarnation: int) -> tuple[str, str]:
    """How many VMs nexusd #``incarnation`` adopted at its start, and what it settled: VMs moved to failed/crashed/
    stopped, and drive volumes without a row that an earlier nexusd had not reported yet."""
    recovery = _recovery_log(log, incarnation)
    adopted = re.search(r"adopted (\d+) running VM", recovery)
    settled: Counter[str] = Counter(re.findall(r"WARNING nexus\.services\.vms: vm \S+: \w+ -> (\w+) \(", recovery))
    orphan = re.compile(r"drive volume (\S+) has no drive in the database")
    seen_before = set(orphan.findall(_recovery_log(log, incarnation - 1))) if incarnation > 1 else set()
    new = set(orphan.findall(recovery)) - seen_before
    if new:
        settled["new drive volume without row"] = len(new)
    return adopted.group(1) if adopted else "0", ", ".join(f"{k} {n}" for k, n in sorted(settled.items()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("soak (python -m bench soak)")
    group.add_argument("--cycles", type=int, default=200, help="create→start→exec→stop→rm cycles (default 200)")
    group.add_argument("--concurrency", type=int, default=4, help="cycles at once (default 4)")
    group.add_argument("--kills", type=int, default=5, help="SIGKILLs of nexusd spread over the run (default 5)")
    group.add_argument("--seed", type=int, help="seed of the kills' random delays (default: random, printed)")
    group.add_argument("--keep", action="store_true", help="keep the soak's state dir (kept anyway on failure)")


def run(args: argparse.Namespace) -> int:
    if shutil.which("qemu-system-x86_64") is None:
        print("soak: qemu-system-x86_64 is missing", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"soak: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="nxsoak-", dir="/var/tmp"))
    try:
        state, image = link_state(base)
    except MissingAssets as exc:
        print(
            f"soak: the e2e assets are not there yet ({exc}); make them with "
            "`./scripts/test.sh tests/e2e -k lifecycle`",
            file=sys.stderr,
        )
        shutil.rmtree(base, ignore_errors=True)
        return 2
    daemon = Daemon(base, state)
    reaper = Reaper(lambda: set(daemon.pids), lambda: not daemon.up.is_set())
    reaper.start()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM'd bench still cleans up
    soak = Soak(daemon, args.cycles, args.concurrency, args.kills, args.seed)
    print(
        f"soak: {args.cycles} cycles (create→start→exec→stop→rm, {MEM_MIB} MiB VMs, image {image}), "
        f"concurrency {args.concurrency}, {args.kills} SIGKILLs of nexusd (seed {soak.seed}); files in {base}",
        flush=True,
    )
    healthy = True
    leftover_vms: list[str] = []
    leftover_vmms: list[int] = []
    before = after = None
    terminate_code: int | None = None
    try:
        daemon.start()
        time.sleep(1)
        before = measure(daemon)
        soak.run()
        leftover_vms = _remove_leftovers(daemon, soak.prefix)
        time.sleep(IDLE_S)
        daemon.check_alive()
        reaper.reap_once(REAP_GRACE_S)
        after = measure(daemon)
    except KeyboardInterrupt:
        print("soak: interrupted; cleaning up", file=sys.stderr)
        soak.abort.set()
        healthy = False
        with contextlib.suppress(Exception):
            _remove_leftovers(daemon, soak.prefix)
    finally:
        terminate_code = daemon.terminate()
        leftover_vmms = vmm_pids(daemon.run_dir)
        for pid in leftover_vmms:  # last resort: a VMM nexusd left behind (reported as a leak)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while vmm_pids(daemon.run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        reaper.stop()
        reaper.reap_once(0)
        signal.signal(signal.SIGTERM, previous)

    if before is None or after is None:
        print(f"soak: no complete run; nexusd log: {daemon.log}")
        return 1
    healthy &= _report(soak, daemon, reaper, before, after, leftover_vms, leftover_vmms, terminate_code)
    if healthy and not args.keep:
        shutil.rmtree(base / "state", ignore_errors=True)
        shutil.rmtree(base / "run", ignore_errors=True)
        print(f"nexusd log kept: {daemon.log}")
    else:
        print(f"state kept in {base} (nexusd log: {daemon.log})")
    return 0 if healthy else 1


def _remove_leftovers(daemon: Daemon, prefix: str) -> list[str]:
    daemon.wait_up()
    with NexusClient(daemon.socket, timeout_s=API_TIMEOUT_S) as c:
        left = [v for v in c.list_vms() if v["name"].startswith(prefix)]
        for vm in left:
            c.remove_vm(vm["id"], force=True)
    return [f"{v['name']} ({v['state']})" for v in left]


def _report(
    soak: Soak,
    daemon: Daemon,
    reaper: Reaper,
    before: Counters,
    after: Counters,
    leftover_vms: list[str],
    leftover_vmms: list[int],
    terminate_code: int | None,
) -> bool:
    healthy = True
    rows = []
    for key, b in before.values.items():
        a = after.values[key]
        verdict = leak_verdict(key, b, a)
        healthy &= verdict != "YES"
        rows.append((key, b, a, verdict))
    rows.append(("VMs left by the cycles (force-removed)", "", len(leftover_vms), "YES" if leftover_vms else "no"))
    rows.append(("VMMs left after nexusd's exit (SIGKILLed)", "", len(leftover_vmms), "YES" if leftover_vmms else "no"))
    healthy &= not leftover_vms and not leftover_vmms
    print_table(
        "Leak counters (daemon up, no VM; after: all cycles done, idle 5 s)",
        ["counter", "before", "after", "leak?"],
        rows,
    )
    if Counter(after.fds) != Counter(before.fds):
        print(f"nexusd fds gained: {sorted((Counter(after.fds) - Counter(before.fds)).elements())}")
        print(f"nexusd fds lost:   {sorted((Counter(before.fds) - Counter(after.fds)).elements())}")
    if leftover_vms:
        print(f"VMs left by the cycles: {leftover_vms}")
    if leftover_vmms:
        print(f"VMMs left running after nexusd exited (killed by pid): {leftover_vmms}")

    ok = [r for r in soak.results if r.ok]
    failed = [r for r in soak.results if not r.ok]
    wall_min = (soak.t_end - soak.t_start) / 60
    rows2: list[tuple[str, object]] = [
        ("cycles done / failed", f"{len(ok)} / {len(failed)} of {soak.cycles}"),
        ("wall time (min)", f"{wall_min:.1f}"),
        ("cycles/min (completed)", f"{len(ok) / wall_min:.2f}" if wall_min else "-"),
        (
            f"start→ready p50 / p99 (s), {len(soak.boot_s)} starts no kill cut",
            f"{percentile(soak.boot_s, 50):.2f} / {percentile(soak.boot_s, 99):.2f}" if soak.boot_s else "-",
        ),
        (
            f"start→ready p50 / max (s), {len(soak.cut_boot_s)} starts a kill cut",
            f"{percentile(soak.cut_boot_s, 50):.2f} / {max(soak.cut_boot_s):.2f}" if soak.cut_boot_s else "-",
        ),
        (
            "step p50 (s): " + ", ".join(STEPS),
            " / ".join(f"{percentile(soak.step_s[s], 50):.2f}" if soak.step_s[s] else "-" for s in STEPS),
        ),
        ("nexusd SIGKILLs", len(soak.kill_records)),
        ("nexusd deaths not asked for", len(daemon.unasked_exits)),
        ("nexusd exit on the final SIGTERM", terminate_code if terminate_code is not None else "killed / none"),
        ("orphaned processes reaped by the bench", dict(reaper.reaped) or "none"),
    ]
    print_table(
        f"Soak: {soak.cycles} cycles, concurrency {soak.concurrency}, QEMU (TCG here)", ["measure", "value"], rows2
    )
    if soak.kill_records:
        rows3 = []
        for k in soak.kill_records:
            adopted, settled = restart_notes(daemon.log, k.incarnation)
            rows3.append(
                (
                    k.number,
                    k.after_cycles,
                    f"{k.target} +{k.delay_s:.2f}s",
                    k.in_flight or "-",
                    f"{len(k.with_vmm)} ({k.ready_at_kill} ready)",
                    f"{k.down_s:.2f}",
                    adopted,
                    settled or "-",
                    "-"
                    if not k.ready_at_kill
                    else f"{k.ready_again_s:.2f}"
                    if k.ready_again_s is not None
                    else "NOT ALL",
                    ", ".join(k.lost) or "0",
                )
            )
        print_table(
            "Kills (SIGKILL, then a new nexusd on the same state dir at once)",
            [
                "kill",
                "after cycle",
                "aimed at",
                "steps in flight",
                "VMMs",
                "nexusd back (s)",
                "adopted",
                "settled at its start",
                "ready again (s)",
                "lost",
            ],
            rows3,
        )
    by_count: list[tuple[str, int]] = sorted(soak.errors.items(), key=lambda kv: (-kv[1], kv[0]))
    print_table(
        "Errors by kind (step: kind; tolerated unless the cycle failed)", ["kind", "count"], by_count or [("none", 0)]
    )
    for kind, example in sorted(soak.examples.items()):
        print(f"first {kind}: {example}")
    for r in failed:
        print(f"FAILED cycle {r.index} ({r.name}): {r.failure}")
        for e in r.errors:
            print(f"    {e}")
    for what in daemon.unasked_exits:
        print(f"nexusd died unasked: {what}")
    summary = log_summary(daemon.log)
    if summary:
        print_table("nexusd log: warnings and errors (ids and numbers masked)", ["message", "count"], summary[:25])
    return healthy and not failed and not daemon.unasked_exits
