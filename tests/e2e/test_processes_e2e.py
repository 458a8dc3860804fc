"""Background processes in a real VM outlive nexusd: a web server started with a port readiness check is listed,
answers a request from inside the VM, is still listed and serving after nexusd is killed (SIGKILL) and started
again, has its request log in its output, and stops with a signal whose exit status process_wait reports.

This test's nexusd has a state dir of its own (it is killed), linked to the session's kernel and image, and the
test process is a child subreaper (``restart_base``): the VMM the killed nexusd leaves is reaped here.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest

from nexus.domain import NexusError
from nexus.sdk import Nexus
from tests.e2e.conftest import reap, restartable_daemon
from tests.helpers import wait_until

pytestmark = pytest.mark.vm

PORT = 8080
FETCH = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{PORT}/').status)"


def test_a_server_outlives_nexusd(restart_base: Path) -> None:
    daemon = restartable_daemon(restart_base)
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
        daemon = restartable_daemon(restart_base)
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
            with contextlib.suppress(ChildProcessError):  # not ours when nexusd was never killed
                reap(vmm)
