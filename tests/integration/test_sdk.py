"""The typed SDK (``nexus.sdk``), sync and async, against a real nexusd whose VMs are the fake Firecracker's (a real
agent on this host, no kernel: commands run and files land on this host)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from nexus.domain import Conflict, Invalid, NotFound, VmState
from nexus.schemas import VmOut
from nexus.sdk import AsyncNexus, DaemonUnreachable, ExecResult, Nexus
from tests.fakes.firecracker_host import FIRECRACKER_SKIPS, firecracker_daemon
from tests.helpers import Daemon

pytestmark = FIRECRACKER_SKIPS


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    base = Path(tempfile.mkdtemp(prefix="nxsdk-"))
    d = firecracker_daemon(base)
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_sync_client_runs_a_computer_for_a_task(daemon: Daemon, tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    with Nexus(daemon.socket) as nx:
        assert nx.health().status == "ok"
        with nx.vms.run("sdk-task", mem_mib=256, tags=["sdk"]) as vm:
            assert isinstance(vm.info, VmOut) and vm.info.state is VmState.READY and vm.name == "sdk-task"
            done = vm.exec("echo out; echo err >&2; exit 3", on_output=lambda s, t: seen.append((s, t)))
            assert done == ExecResult(exit_code=3, stdout="out\n", stderr="err\n", timed_out=False)
            assert not done.ok and sorted(seen) == [("stderr", "err\n"), ("stdout", "out\n")]
            assert vm.exec(["printf", "%s", "$HOME"]).stdout == "$HOME"  # argv: no shell
            big = bytes(range(256)) * 5000  # 1.28 MB: three chunks each way
            path = str(tmp_path / "sdk" / "blob.bin")
            assert vm.files.write(path, big).size == len(big)
            assert vm.files.read(path) == big
            assert [v.name for v in nx.vms.list(tags=("sdk",))] == ["sdk-task"]
            assert nx.vms.history(vm.id)[-1].to_state is VmState.READY
        with pytest.raises(NotFound):  # removed when the block ended
            nx.vms.get("sdk-task")


def test_sync_errors_are_the_domains(daemon: Daemon) -> None:
    with Nexus(daemon.socket) as nx:
        with pytest.raises(NotFound):
            nx.vms.get("no-such-vm")
        with pytest.raises(Invalid):
            nx.vms.create("Bad Name!")
        made = nx.vms.create("sdk-kept", mem_mib=256)
        try:
            with pytest.raises(Conflict):
                nx.vms.create("sdk-kept")
            with nx.vms.run("sdk-kept2", keep=True, mem_mib=256) as vm:
                kept = vm.id
            assert nx.vms.get(kept).state is VmState.READY  # keep=True: still there, still running
            with pytest.raises(Conflict):  # running: a remove without force is refused
                nx.vms.remove(kept)
            nx.vms.remove(kept, force=True)
        finally:
            nx.vms.remove(made.id)
    with Nexus("/nonexistent/nexusd.sock") as nowhere, pytest.raises(DaemonUnreachable, match="cannot reach nexusd"):
        nowhere.health()


def test_async_client(daemon: Daemon, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncNexus(daemon.socket) as nx:
            assert (await nx.health()).version
            async with nx.vms.run("sdk-async", mem_mib=256) as vm:
                assert (await vm.exec("echo hi")).stdout == "hi\n"
                path = str(tmp_path / "a.txt")
                await vm.files.write(path, "async text")
                assert await vm.files.read(path) == b"async text"
                assert (await vm.refresh()).state is VmState.READY
            with pytest.raises(NotFound):
                await nx.vms.get("sdk-async")

    anyio.run(scenario)


def test_sync_client_covers_the_other_resources(daemon: Daemon) -> None:
    with Nexus(daemon.socket) as nx:
        assert nx.settings.get("default_vcpus").value == 1
        assert nx.settings.set("default_vcpus", 2).value == 2
        assert {s.key for s in nx.settings.list()} >= {"default_vcpus", "default_mem_mib"}
        nx.settings.set("default_vcpus", 1)
        with pytest.raises(Invalid):
            nx.settings.set("default_vcpus", "two")
        drive = nx.drives.create("sdk-data", size_mib=16)
        assert drive.kind == "data" and nx.drives.get("sdk-data").id == drive.id
        vm = nx.vms.create("sdk-res", mem_mib=256)
        try:
            assert nx.drives.attach("sdk-data", "sdk-res", mount="/data").vm_id == vm.id
            snap = nx.snapshots.create("sdk-res", "s1")
            assert [s.name for s in nx.snapshots.list("sdk-res")] == ["s1"]
            assert [d.drive_name for d in snap.drives] == ["sdk-data"]  # never started: no root drive yet
            clone = nx.vms.clone("sdk-res", "sdk-res-clone", snapshot="s1")
            nx.vms.remove(clone.id)
            nx.snapshots.remove("sdk-res", "s1")
            nx.drives.detach("sdk-data")
            made = nx.tokens.create("sdk-res", expires="1h")
            assert made.token.startswith("nxa_") and [t.id for t in nx.tokens.list(vm="sdk-res")] == [made.id]
            nx.tokens.remove(made.id)
            assert nx.vms.add_tags("sdk-res", ["k=v"]) == ["k=v"] and nx.vms.tags("sdk-res") == ["k=v"]
        finally:
            nx.vms.remove(vm.id)
            nx.drives.remove("sdk-data")
        assert [i.name for i in nx.images.list()] != [] and nx.kernels.list() != []
