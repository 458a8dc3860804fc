"""Faults that once wedged a VM or the daemon, injected for real against a running nexusd: another process holding
the SQLite write lock while the VMM dies, and a state dir whose disk is full. Nothing may wedge: the API answers
at once (503 with the error body when it cannot write), the VM's end is recorded once the store is back, stop and
rm answer within their deadline, and nexusd exits promptly on SIGTERM.

The VMM is the fake Firecracker (a real process with a real agent behind it), so no guest kernel boots here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bench.db_busy import hold_write_lock

from nexus.domain import Unavailable
from tests.api_client import NexusClient
from tests.fakes.firecracker_host import FIRECRACKER_SKIPS, firecracker_daemon
from tests.helpers import start_daemon, wait_until

pytestmark = FIRECRACKER_SKIPS

HOLD_S = 12


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nxft-"))  # short: Unix socket paths
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _timed(call: object) -> tuple[float, object]:
    started = time.monotonic()
    try:
        result = call()  # type: ignore[operator]
    except Exception as exc:
        result = exc
    return time.monotonic() - started, result


def test_vmm_dies_while_another_process_holds_the_database(base: Path) -> None:
    daemon = firecracker_daemon(base)
    locker: subprocess.Popen[str] | None = None
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            api.create_vm(name="fault-db")
            pid = api.start_vm("fault-db")["pid"]
            locker = hold_write_lock(daemon.state_dir / "nexus.db", HOLD_S)
            os.kill(pid, signal.SIGKILL)
            took, health = _timed(api.health)
            assert took < 1.0 and isinstance(health, dict), (took, health)
            took, vm = _timed(lambda: api.get_vm("fault-db"))  # reads never wait for the writer (WAL)
            assert took < 1.0 and isinstance(vm, dict), (took, vm)
            time.sleep(3)  # the runtime has released the dead VM by now, though it cannot record that yet
            took, stopped = _timed(lambda: api.stop_vm("fault-db"))
            assert took < 2.0, took
            assert isinstance(stopped, Unavailable) and "busy" in stopped.message, stopped
            took, removed = _timed(lambda: api.remove_vm("fault-db", force=True))
            assert took < 2.0 and isinstance(removed, Unavailable), (took, removed)
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), timeout=10) as http:
                raw = http.post("http://nexus/v1/vms", json={"name": "fault-new"})
            assert raw.status_code == 503 and raw.json()["error"]["code"] == "unavailable", raw.text
            locker.wait(timeout=HOLD_S + 5)
            wait_until(lambda: api.get_vm("fault-db")["state"] == "crashed", 15, "the crash recorded once unlocked")
            after = api.get_vm("fault-db")
            assert after["pid"] is None
            assert "signal 9" in api.vm_history("fault-db")[-1]["reason"]
            assert [v["name"] for v in api.list_vms()] == ["fault-db"]  # the refused create made nothing
            api.remove_vm("fault-db")
        locker = hold_write_lock(daemon.state_dir / "nexus.db", HOLD_S)
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 10, "nexusd did not exit promptly on SIGTERM with the database locked"
    finally:
        if locker is not None:
            locker.kill()
            locker.wait()
        daemon.stop()


@pytest.fixture
def small_disk(base: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = base / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_503_with_the_error_body_and_recovers_once_freed(base: Path, small_disk: Path) -> None:
    daemon = start_daemon(base, state_dir=small_disk / "state")
    try:
        with NexusClient(daemon.socket, timeout_s=30) as api:
            api.create_vm(name="full-a")
            filler = small_disk / "filler"
            with filler.open("wb") as fh:  # fill every block that is left
                try:
                    while True:
                        fh.write(b"\0" * (1 << 20))
                        fh.flush()
                except OSError:
                    pass
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), timeout=10) as http:
                for method, path, body in (
                    ("POST", "/v1/vms", {"name": "full-b"}),
                    ("POST", "/v1/vms/full-a/tags", {"tags": ["k=v"]}),
                ):
                    answer = http.request(method, f"http://nexus{path}", json=body)
                    assert answer.status_code == 503, (path, answer.status_code, answer.text)
                    assert answer.json()["error"]["code"] == "unavailable"
                    assert "disk is full" in answer.json()["error"]["message"]
                assert http.get("http://nexus/v1/health").status_code == 200
            assert [v["name"] for v in api.list_vms()] == ["full-a"]
            filler.unlink()
            api.create_vm(name="full-b")
            assert api.add_tags("full-a", ["k=v"]) == ["k=v"]
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
