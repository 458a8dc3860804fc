"""The README's SDK example (examples/sdk_quickstart.py), run as a user would, against the e2e nexusd and a real VM."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.api_client import NexusClient
from tests.helpers import REPO, Daemon


def test_the_readme_sdk_example_runs(e2e_daemon: Daemon) -> None:
    env = {**os.environ, "NEXUS_SOCKET": str(e2e_daemon.socket)}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "sdk_quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "sdk-quickstart is ready"
    assert lines[1].startswith("kernel: Linux ") and lines[2] == "45"
    assert lines[-1] == "read back: print(sum(range(10)))"
    with NexusClient(e2e_daemon.socket) as api:
        assert "sdk-quickstart" not in {vm["name"] for vm in api.list_vms()}  # removed when the block ended
