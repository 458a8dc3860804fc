"""The official MCP conformance suite's server scenarios against the ``/v1/vms/{ref}/mcp`` of a real QEMU VM: the
same scenarios as tests/integration/test_mcp_conformance.py (``tests.mcp_conformance`` says which apply and why the
others do not), here with the guest agent inside a booted kernel. One boot for all of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_client import NexusClient
from tests.helpers import Daemon
from tests.mcp_conformance import (
    APPLICABLE,
    missing_tools,
    offered_but_not_applicable,
    run_scenario,
    tcp_to_unix,
    verdict,
)

pytestmark = [pytest.mark.vm, pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))]

VM = "e2e-conformance"


@pytest.fixture(scope="module")
def url(e2e_daemon: Daemon) -> Iterator[str]:
    """The VM endpoint of a ready VM, on 127.0.0.1:PORT."""
    with NexusClient(e2e_daemon.socket, timeout_s=300) as api:
        api.create_vm(name=VM, mem_mib=512)
        try:
            api.start_vm(VM)
            with tcp_to_unix(e2e_daemon.socket) as port:
                yield f"http://127.0.0.1:{port}/v1/vms/{VM}/mcp"
        finally:
            api.remove_vm(VM, force=True)


def test_not_applicable_capabilities_are_not_offered(url: str) -> None:
    offered = offered_but_not_applicable(url)
    assert not offered, f"the VM endpoint now declares {offered}: move their scenarios to APPLICABLE"


@pytest.mark.parametrize("scenario", APPLICABLE)
def test_scenario_passes(url: str, scenario: str, tmp_path: Path) -> None:
    failure = verdict(scenario, run_scenario(url, scenario, tmp_path))
    assert failure is None, failure
