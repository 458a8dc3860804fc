"""Warm pools through a real nexusd whose VMM is the fake Firecracker (a real agent as a host process): a pool
fills; a matching ``POST /v1/vms`` with ``claim`` gets one of its VMs ready (renamed, tagged, listed, its root drive
renamed, a history entry) and the pool refills; a spec that does not match, or a request without ``claim``, is
created as before; pool VMs are never listed; two racing claims never share a VM; ``pool rm`` removes the idle VMs
and keeps claimed ones; bad input is refused and changes nothing."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from nexus.cli.main import main
from nexus.domain import Invalid, NotFound
from nexus.sdk import Nexus
from tests.api_client import NexusClient
from tests.fakes.firecracker_host import FIRECRACKER_SKIPS, firecracker_daemon, running_daemon
from tests.helpers import Daemon

pytestmark = FIRECRACKER_SKIPS


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon("nxpl-") as d:
        yield d


@pytest.fixture
def api(daemon: Daemon) -> Iterator[NexusClient]:
    with NexusClient(daemon.socket, timeout_s=60) as client:
        yield client


def pool_vms(daemon: Daemon, pool: str) -> list[dict[str, Any]]:
    """The pool's unclaimed VMs, straight from the store (the API never lists them)."""
    conn = sqlite3.connect(f"file:{daemon.state_dir / 'nexus.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT id, name, state FROM vms WHERE pool = ? ORDER BY created_at", (pool,))
        return [dict(row) for row in rows]
    finally:
        conn.close()


def wait_ready(api: NexusClient, pool: str, count: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found: dict[str, Any] = api.request("GET", f"/v1/pools/{pool}")
        if found["ready"] == count:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.2)


def claim(api: NexusClient, name: str, **fields: Any) -> dict[str, Any]:
    return api.create_vm(name=name, claim=True, **fields)


def test_bad_input_is_refused_and_changes_nothing(api: NexusClient) -> None:
    for size in (17, -1):
        with pytest.raises(Invalid, match="size"):
            api.request("PUT", "/v1/pools/bad", json={"size": size})
    with pytest.raises(Invalid):
        api.request("PUT", "/v1/pools/Bad_Name", json={"size": 1})
    with pytest.raises(Invalid, match="too long"):
        api.request("PUT", f"/v1/pools/{'p' * 41}", json={"size": 1})
    with pytest.raises(Invalid, match="vcpus"):
        api.request("PUT", "/v1/pools/bad", json={"size": 1, "vcpus": 0})
    with pytest.raises(NotFound, match="no pool named 'nope'"):
        api.request("GET", "/v1/pools/nope")
    with pytest.raises(NotFound):
        api.request("DELETE", "/v1/pools/nope")
    assert api.request("GET", "/v1/pools") == []


def test_a_matching_run_claims_a_ready_vm_and_the_pool_refills(api: NexusClient, daemon: Daemon) -> None:
    api.request("PUT", "/v1/pools/work", json={"size": 1, "mem_mib": 256})
    pool = wait_ready(api, "work", 1)
    assert (pool["size"], pool["mem_mib"], pool["image"], pool["problem"]) == (1, 256, "debian-bookworm", None)
    [waiting] = pool_vms(daemon, "work")
    assert waiting["name"].startswith("pool-work-")
    assert waiting["name"] not in [vm["name"] for vm in api.list_vms()]
    assert [(p["name"], p["ready"]) for p in api.health()["pools"]] == [("work", 1)]
    assert api.health()["vms"] == 0

    started = time.monotonic()
    vm = claim(api, "agent-1", mem_mib=256, tags=["team-a"])
    claimed_s = time.monotonic() - started
    assert (vm["id"], vm["name"], vm["state"], vm["tags"], vm["pool"]) == (
        waiting["id"],
        "agent-1",
        "ready",
        ["team-a"],
        None,
    )
    assert claimed_s < 2.0, claimed_s  # no boot: a rename and an identity message
    assert [v["name"] for v in api.list_vms()] == ["agent-1"]
    assert api.vm_history("agent-1")[-1]["reason"] == "claimed from pool work as agent-1"
    assert "agent-1.root" in [d["name"] for d in api.list_drives()]
    with Nexus(daemon.socket) as nx:
        assert nx.vms.exec("agent-1", ["echo", "hi"]).stdout == "hi\n"  # its agent links carried on

    refilled = wait_ready(api, "work", 1)
    assert refilled["booting"] == 0
    [fresh] = pool_vms(daemon, "work")
    assert fresh["id"] != waiting["id"]

    other = claim(api, "agent-2", mem_mib=512)  # another shape: created as without claim, not started
    plain = api.create_vm(name="agent-3", mem_mib=256)  # no claim asked
    ported = claim(api, "agent-4", mem_mib=256, ttl_s=600)  # a lifetime is more than a pool VM is
    assert [v["state"] for v in (other, plain, ported)] == ["created"] * 3
    assert pool_vms(daemon, "work") == [fresh]
    for name in ("agent-1", "agent-2", "agent-3", "agent-4"):
        api.remove_vm(name, force=True)


def test_a_claim_of_a_taken_name_is_refused_and_leaves_the_pool(api: NexusClient, daemon: Daemon) -> None:
    api.request("PUT", "/v1/pools/work", json={"size": 1, "mem_mib": 256})
    wait_ready(api, "work", 1)
    before = pool_vms(daemon, "work")
    api.create_vm(name="taken", mem_mib=128)
    with pytest.raises(Exception, match="already exists"):
        claim(api, "taken", mem_mib=256)
    assert pool_vms(daemon, "work") == before
    api.remove_vm("taken")


def test_racing_claims_never_share_a_vm(api: NexusClient, daemon: Daemon) -> None:
    api.request("PUT", "/v1/pools/race", json={"size": 1, "mem_mib": 320})
    wait_ready(api, "race", 1)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: claim(api, n, mem_mib=320), ["race-a", "race-b"]))
    assert results[0]["id"] != results[1]["id"]
    assert sorted(r["state"] for r in results) == ["created", "ready"]  # one claimed, one to boot cold
    for r in results:
        api.remove_vm(r["name"], force=True)


def test_pool_rm_removes_idle_vms_and_keeps_claimed_ones(api: NexusClient, daemon: Daemon) -> None:
    api.request("PUT", "/v1/pools/gone", json={"size": 2, "mem_mib": 384})
    wait_ready(api, "gone", 2)
    kept = claim(api, "kept", mem_mib=384)
    assert kept["state"] == "ready"
    wait_ready(api, "gone", 2)
    idle = pool_vms(daemon, "gone")
    api.request("DELETE", "/v1/pools/gone")
    assert pool_vms(daemon, "gone") == []
    assert "gone" not in [p["name"] for p in api.request("GET", "/v1/pools")]
    assert api.get_vm("kept")["state"] == "ready"
    for vm in idle:
        with pytest.raises(NotFound):
            api.get_vm(vm["id"])
    api.remove_vm("kept", force=True)


def test_a_smaller_size_drops_surplus_and_size_zero_empties(api: NexusClient, daemon: Daemon) -> None:
    api.request("PUT", "/v1/pools/shrink", json={"size": 2, "mem_mib": 448})
    wait_ready(api, "shrink", 2)
    api.request("PUT", "/v1/pools/shrink", json={"size": 0, "mem_mib": 448})
    deadline = time.monotonic() + 30
    while pool_vms(daemon, "shrink"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert claim(api, "late", mem_mib=448)["state"] == "created"
    api.remove_vm("late")
    api.request("DELETE", "/v1/pools/shrink")


def cli(capsys: pytest.CaptureFixture[str], daemon: Daemon, *args: str) -> tuple[int, str, str]:
    code = main(["--socket", str(daemon.socket), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_sets_lists_claims_and_removes(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    code, out, err = cli(capsys, daemon, "pool", "set", "cli", "--size", "1", "--mem", "192", "--no-network")
    assert (code, err) == (0, ""), err
    assert out.strip() == "pool cli: 1 x debian-bookworm, 1 vCPU, 192 MiB, no network"
    with NexusClient(daemon.socket, timeout_s=60) as api:
        wait_ready(api, "cli", 1)
    code, out, _ = cli(capsys, daemon, "pool", "ls")
    assert code == 0 and "cli" in out and "192 MiB" in out
    code, out, _ = cli(capsys, daemon, "status")
    assert code == 0 and "pool cli" in out and "1/1 ready" in out
    code, out, err = cli(capsys, daemon, "--json", "vm", "run", "from-cli", "--mem", "192", "--no-network")
    assert code == 0, err
    vm = json.loads(out)
    assert (vm["name"], vm["state"]) == ("from-cli", "ready")
    with NexusClient(daemon.socket, timeout_s=60) as api:
        assert api.vm_history("from-cli")[-1]["reason"] == "claimed from pool cli as from-cli"
    code, out, err = cli(capsys, daemon, "pool", "set", "cli", "--size", "99")
    assert code != 0 and out == "" and len(err.strip().splitlines()) == 1 and "size" in err
    code, out, _ = cli(capsys, daemon, "pool", "rm", "cli")
    assert (code, out.strip()) == (0, "removed pool cli")
    code, _, err = cli(capsys, daemon, "pool", "rm", "cli")
    assert code != 0 and "no pool named 'cli'" in err
    code, _, err = cli(capsys, daemon, "vm", "rm", "--force", "from-cli")
    assert code == 0, err


def test_pool_vms_stay_in_their_pool_across_a_restart() -> None:
    base = Path(tempfile.mkdtemp(prefix="nxpr-"))
    try:
        first = firecracker_daemon(base, stop_vms_on_exit=False)
        try:
            with NexusClient(first.socket, timeout_s=60) as api:
                api.request("PUT", "/v1/pools/keep", json={"size": 1, "mem_mib": 256})
                wait_ready(api, "keep", 1)
            before = pool_vms(first, "keep")
        finally:
            assert first.stop() == 0, first.log_text()[-3000:]
        second = firecracker_daemon(base)
        try:
            with NexusClient(second.socket, timeout_s=60) as api:
                wait_ready(api, "keep", 1)
                assert [vm["id"] for vm in pool_vms(second, "keep")] == [before[0]["id"]]  # adopted, not rebooted
                assert claim(api, "after", mem_mib=256)["id"] == before[0]["id"]
        finally:
            assert second.stop() == 0, second.log_text()[-3000:]
    finally:
        shutil.rmtree(base, ignore_errors=True)
