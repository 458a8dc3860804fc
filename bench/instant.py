"""Instant computers: how long until a VM is ready, booted cold against resumed from a checkpoint, in one run on one
image, through the API (each call returns once the agent is ready).

- cold: ``POST /v1/vms/{ref}/start`` of a stopped VM (boot, agent hello, MCP link);
- restore: ``POST /v1/vms/{ref}/snapshots/{name}/restore`` of a running VM (kill it, put the checkpoint's drives
  back, resume the saved memory, agent ready again);
- fork: ``POST /v1/vms/{ref}/fork`` at a named checkpoint (a new VM: drive copies, resumed memory, a new name);
- checkpoint: ``POST /v1/vms/{ref}/checkpoints`` of a running VM, with the size of the saved state; the guest is
  paused for most of it;
- pool claim: ``POST /v1/vms`` with ``claim`` matching a warm pool of one (rename, tags, the guest told its new
  name); measured after the other rounds, each once the pool has refilled, so no boot runs beside what is timed.

nexusd keeps its state on btrfs on a loop device (drive copies are reflinks, as on a production host). The guest
runs a Python process holding 100 MiB, so the saved memory is not just an idle kernel. Rounds are interleaved.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import agent_image, loop_btrfs, nexusd, percentile, print_table, seed_state, uds_client

STATE = Path(os.environ.get("NEXUS_BENCH_STATE", "/var/tmp/nexus-bench"))
IMAGE = "bench-instant-agent"
ROUNDS = 5
MEM_MIB = 512
HOLD = "python3 -c 'import time; b = bytearray(100 << 20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(1e6)'"


def _timed(api: httpx.Client, path: str, body: dict[str, Any] | None = None) -> float:
    """Seconds a POST takes (it fails the run when refused)."""
    start = time.perf_counter()
    _ok(api.post(path, json=body))
    return time.perf_counter() - start


def _ok(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.text}")
    return response


def _pool_ready(api: httpx.Client, pool: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while _ok(api.get(f"/v1/pools/{pool}")).json()["ready"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pool {pool} did not fill in {timeout_s:.0f}s")
        time.sleep(0.2)


def run() -> None:
    image = agent_image(STATE, IMAGE)
    base = Path(tempfile.mkdtemp(prefix="nexus-bench-instant-", dir="/var/tmp"))
    try:
        with loop_btrfs(base, "8G") as mnt:
            state = mnt / "state"
            seed_state(state, STATE, image)
            with nexusd(state_dir=state) as daemon, uds_client(daemon.socket) as api:
                _ok(api.post("/v1/vms", json={"name": "cold", "mem_mib": MEM_MIB}))
                _ok(api.post("/v1/vms", json={"name": "src", "mem_mib": MEM_MIB}))
                _ok(api.post("/v1/vms/src/start"))
                _ok(api.post("/v1/vms/src/exec", json={"command": f"nohup {HOLD} > /dev/null 2>&1 &"}))
                time.sleep(2)
                cold: list[float] = []
                restore: list[float] = []
                fork: list[float] = []
                checkpoint: list[float] = []
                sizes: list[int] = []
                for i in range(ROUNDS):
                    cold.append(_timed(api, "/v1/vms/cold/start"))
                    _ok(api.post("/v1/vms/cold/stop"))
                    name, copy = f"c{i}", f"f{i}"
                    checkpoint.append(_timed(api, "/v1/vms/src/checkpoints", {"name": name}))
                    sizes.append(_ok(api.get(f"/v1/vms/src/snapshots/c{i}")).json()["state"]["size_bytes"])
                    restore.append(_timed(api, "/v1/vms/src/snapshots/c0/restore"))
                    fork.append(_timed(api, "/v1/vms/src/fork", {"name": copy, "checkpoint": "c0"}))
                    _ok(api.delete(f"/v1/vms/{copy}", params={"force": True}))
                    if i:
                        _ok(api.delete(f"/v1/vms/src/snapshots/c{i}"))
                _ok(api.put("/v1/pools/bench", json={"size": 1, "mem_mib": MEM_MIB}))
                claim: list[float] = []
                for i in range(ROUNDS):
                    _pool_ready(api, "bench")
                    start = time.perf_counter()
                    vm = _ok(api.post("/v1/vms", json={"name": f"p{i}", "mem_mib": MEM_MIB, "claim": True})).json()
                    claim.append(time.perf_counter() - start)
                    if vm["state"] != "ready":
                        raise RuntimeError(f"p{i} was not claimed from the pool: {vm['state']}")
                    _ok(api.delete(f"/v1/vms/p{i}", params={"force": True}))
                _ok(api.delete("/v1/pools/bench"))
                health = api.get("/v1/health").json()
                for vm in ("src", "cold"):  # nexusd leaves running VMs running: none may outlive the loop device
                    _ok(api.delete(f"/v1/vms/{vm}", params={"force": True}))
        base_s = statistics.median(cold)

        def row(what: str, samples: list[float], goal: str) -> list[object]:
            med = statistics.median(samples)
            return [what, f"{med:.2f}", f"{percentile(samples, 90):.2f}", f"x{med / base_s:.2f}", goal]

        gib = MEM_MIB / 1024
        size_mib = statistics.median(sizes) / 2**20
        print_table(
            f"instant computers ({ROUNDS} rounds, {MEM_MIB} MiB guests; {health['driver']['reason']})",
            ["to ready", "median s", "p90 s", "vs cold", "goal"],
            [
                row("cold start (baseline)", cold, ""),
                row("restore from a checkpoint", restore, "<= x0.30"),
                row("fork at a checkpoint", fork, "<= x0.30"),
                row("checkpoint (API call)", checkpoint, ""),
                row("claim from the warm pool", claim, "<= x0.05"),
            ],
        )
        print(
            f"checkpoint: {size_mib:.0f} MiB of saved state for {MEM_MIB} MiB of guest memory"
            f" ({size_mib / gib:.0f} MiB and {statistics.median(checkpoint) / gib:.2f} s per GiB of guest memory)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
