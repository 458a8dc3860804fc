"""The official MCP conformance suite's server scenarios against a real nexusd: ``/mcp`` and the ``/v1/vms/{ref}/mcp``
of a ready VM (the fake Firecracker's: a real agent, no kernel). Which scenarios apply, and why the others do not,
is ``tests.mcp_conformance``'s; the suite reaches nexusd's Unix socket through a loopback TCP forwarder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_client import NexusClient
from tests.fakes.firecracker_host import _busybox, firecracker_daemon
from tests.helpers import Daemon
from tests.mcp_conformance import (
    APPLICABLE,
    NOT_APPLICABLE,
    missing_tools,
    offered_but_not_applicable,
    run_scenario,
    suite_scenarios,
    tcp_to_unix,
    unclassified,
    verdict,
)

pytestmark = [pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))]

VM = "conformance"
ENDPOINTS = {"manage": "/mcp", "vm": f"/v1/vms/{VM}/mcp"}


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """A nexusd with a ready VM, reached on 127.0.0.1:PORT."""
    if _busybox() is not None:  # here, not for the module: the classification needs no daemon
        pytest.skip(str(_busybox()))
    base = Path(tempfile.mkdtemp(prefix="nxconf-"))
    daemon: Daemon = firecracker_daemon(base)
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            api.create_vm(name=VM, mem_mib=256)
            api.start_vm(VM)
        with tcp_to_unix(daemon.socket) as p:
            yield p
    finally:
        code = daemon.stop()
        log = daemon.log_text()
        shutil.rmtree(base, ignore_errors=True)
        assert code == 0, log[-3000:]


def test_every_suite_scenario_is_classified() -> None:
    scenarios = suite_scenarios()
    assert scenarios, "the suite listed no server scenarios"
    assert not unclassified(scenarios), (
        f"new conformance scenarios, neither in APPLICABLE nor NOT_APPLICABLE (tests/mcp_conformance.py): "
        f"{unclassified(scenarios)}"
    )
    gone = sorted({*APPLICABLE, *NOT_APPLICABLE} - set(scenarios))
    assert not gone, f"scenarios the suite no longer has, still classified in tests/mcp_conformance.py: {gone}"


@pytest.mark.parametrize("scenario", APPLICABLE)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_scenario_passes(port: int, endpoint: str, scenario: str, tmp_path: Path) -> None:
    checks = run_scenario(f"http://127.0.0.1:{port}{ENDPOINTS[endpoint]}", scenario, tmp_path)
    failure = verdict(scenario, checks)
    assert failure is None, failure


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_not_applicable_capabilities_are_not_offered(port: int, endpoint: str) -> None:
    offered = offered_but_not_applicable(f"http://127.0.0.1:{port}{ENDPOINTS[endpoint]}")
    assert not offered, f"{endpoint} now declares {offered}: move their scenarios from NOT_APPLICABLE to APPLICABLE"
