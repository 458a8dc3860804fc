"""``nexusctl vm create --publish/--no-network`` against a real nexusd started with ``--no-network`` (it runs in
the host's namespace, so it must make no bridge or rule; creating VMs only touches its database)."""

from __future__ import annotations

import pytest

from tests.helpers import Daemon
from tests.integration.test_cli import daemon, run, run_json

__all__ = ["daemon"]


def test_no_network_daemon_creates_vms_without_nic(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    vm = run_json(capsys, daemon, "vm", "create", "plain")
    assert isinstance(vm, dict) and vm["network"] is None
    explicit = run_json(capsys, daemon, "vm", "create", "off", "--no-network")
    assert isinstance(explicit, dict) and explicit["network"] is None
    code, _, err = run(capsys, daemon, "vm", "create", "web", "--publish", "8080:80")
    assert code == 5 and "networking is off in this nexusd" in err and err.count("\n") == 1
    assert "create the VM with --no-network" in err
    code, _, err = run(capsys, daemon, "vm", "create", "bad", "-p", "80")
    assert code == 2 and "--publish wants HOSTPORT:GUESTPORT" in err
    code, _, err = run(capsys, daemon, "vm", "create", "both", "--no-network", "-p", "80:80")
    assert code == 2 and "--publish needs the VM on the network: drop --no-network" in err  # in the flags' words
    names = [v["name"] for v in run_json(capsys, daemon, "vm", "list")]
    assert names == ["plain", "off"]
    code, out, _ = run(capsys, daemon, "vm", "list")
    assert code == 0 and "ADDRESS" in out
