"""A warm pool of real QEMU VMs: a pool of one fills, a matching ``vm run`` takes its VM ready at once (far faster
than a boot), the guest's host name becomes the claimed VM's name, and the pool boots a replacement."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.api_client import NexusClient
from tests.e2e.conftest import nexusctl, nexusctl_json
from tests.helpers import Daemon

pytestmark = pytest.mark.vm

POOL, VM = "e2e-pool", "e2e-claimed"


def _ready(api: NexusClient, count: int, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        pool: dict[str, Any] = api.request("GET", f"/v1/pools/{POOL}")
        if pool["ready"] == count:
            return pool
        assert time.monotonic() < deadline, pool
        time.sleep(0.5)


def test_a_matching_run_is_claimed_ready_and_the_pool_refills(e2e_daemon: Daemon, api: NexusClient) -> None:
    nexusctl(e2e_daemon, "pool", "rm", POOL, check=False)  # a run that died before its cleanup
    nexusctl(e2e_daemon, "pool", "set", POOL, "--size", "1", "--mem", "512")
    try:
        _ready(api, 1)
        started = time.monotonic()
        vm = nexusctl_json(e2e_daemon, "vm", "run", VM, "--mem", "512", "--tag", "pooled")
        took = time.monotonic() - started
        assert (vm["name"], vm["state"], vm["tags"]) == (VM, "ready", ["pooled"])
        assert took < 5.0, took  # nexusctl's own start included; a TCG boot takes far longer
        hostname = nexusctl(e2e_daemon, "vm", "exec", VM, "--", "hostname").stdout.decode().strip()
        assert hostname == VM  # told its new name at the claim
        assert api.vm_history(VM)[-1]["reason"] == f"claimed from pool {POOL} as {VM}"
        assert _ready(api, 1)["booting"] == 0  # refilled
    finally:
        nexusctl(e2e_daemon, "pool", "rm", POOL, check=False)
        nexusctl(e2e_daemon, "vm", "rm", "--force", VM, check=False)
