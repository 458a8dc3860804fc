"""Background processes in a real VM outlive nexusd: a web server started with a port readiness check is listed,
answers a request from inside the VM, is still listed and serving after nexusd is killed (SIGKILL) and started
again, has its request log in its output, and stops with a signal whose exit status process_wait reports.

This test's nexusd has a state dir of its own (it is killed), linked to the session's kernel and image, and the
test process is a child subreaper, as in ``test_live_restore``: the VMM the killed nexusd leaves is reaped here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.domain import NexusError
from nexus.sdk import Nexus
from tests.e2e.conftest import linked_state
from tests.helpers import Daemon, start_daemon, wait_until

pytestmark = pytest.mark.vm

PR_SET_CHILD_SUBREAPER = 36
PORT = 8080
FETCH = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{PORT}/').status)"


@pytest.fixture
def base(e2e_daemon: Daemon) -> Iterator[Path]:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.fail(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    path = Path(tempfile.mkdtemp(prefix="nxpe-"))
    (path / "nexusd.toml").write_text("boot_timeout_s = 60\nheartbeat_timeout_s = 4\nstop_timeout_s = 10\n")
    linked_state(path, vmm="qemu")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _daemon(base: Path) -> Daemon:
    return start_daemon(base, "--config", str(base / "nexusd.toml"), state_dir=base / "state", stop_vms_on_exit=False)


def _reap(pid: int, timeout_s: float = 15) -> None:
    """Reap the VMM the killed nexusd left us (we are its subreaper); nothing when it is not our child."""
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(pid, os.WNOHANG)[0] != pid and time.monotonic() < deadline:
            time.sleep(0.05)


def test_a_server_outlives_nexusd(base: Path) -> None:
    daemon = _daemon(base)
    vmm: int | None = None
    try:
        with Nexus(daemon.socket) as nx:
            nx.vms.create("e2e-procs", mem_mib=256)
            vmm = nx.vms.start("e2e-procs").pid
            procs = nx.vms.processes("e2e-procs")
            server = procs.start(["python3", "-m", "http.server", str(PORT)], name="web", cwd="/tmp", ready_port=PORT)
            assert server.running and server.ready_after_s is not None
            print(f"ready {server.ready_after_s:.2f}s after the start")
            assert [(p.id, p.state) for p in procs.list()] == [(server.id, "running")]
            assert nx.vms.exec("e2e-procs", ["python3", "-c", FETCH]).stdout == "200\n"

        daemon.proc.kill()  # SIGKILL: the VM and its processes run on with nobody watching
        daemon.proc.wait()
        daemon = _daemon(base)
        with Nexus(daemon.socket) as nx:
            wait_until(lambda: nx.vms.get("e2e-procs").state == "ready", 20, "the VM ready again")
            procs = nx.vms.processes("e2e-procs")
            again = procs.get("web")
            assert (again.id, again.state, again.pid) == (server.id, "running", server.pid)
            assert nx.vms.exec("e2e-procs", ["python3", "-c", FETCH]).stdout == "200\n"
            log = procs.output("web").text
            assert log.count('"GET / HTTP/1.1" 200') == 2, log
            assert procs.signal("web", "TERM").id == server.id
            done = procs.wait("web", timeout_s=20)
            assert (done.state, done.exit_code, done.signal) == ("exited", -signal.SIGTERM, "SIGTERM")
    finally:
        with contextlib.suppress(NexusError), Nexus(daemon.socket) as nx:
            nx.vms.remove("e2e-procs", force=True)
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
        if vmm is not None:
            _reap(vmm)
