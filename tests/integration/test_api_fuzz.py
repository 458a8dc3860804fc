"""The REST API fuzzed against its own OpenAPI document: schemathesis (its CLI, the interface it keeps stable) runs
over a real nexusd's ``/openapi.json`` and calls every operation but the few listed in :data:`EXCLUDED`.

nexusd runs as every test daemon does (``--no-network``, a tmp state dir) plus a TCP listener on 127.0.0.1 with a
bearer token, because schemathesis speaks HTTP over TCP only. The run is bounded and repeatable (``api_fuzz.toml``:
a fixed seed, a few examples per operation and phase, one worker); its stateful phase follows the document's links
(``nexus.api.links``) from each resource it creates to the operations on it. It fails on any 5xx, on a status,
content type, header or body the document does not declare, on schema-invalid input that is not refused
(``vcpus: "2"``), on a 405 without ``Allow`` and on a resource just created that is then not found.
``positive_data_acceptance`` is not run: some rules are beyond what a JSON schema can state (a host port published
twice, an image or a size but not both, a private subnet, a drive that only grows), so a schema-valid request may
still be a 422; every rule a schema can state (names, tags, ranges, types) is in the document and checked by the
others.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_client import NexusClient
from tests.helpers import REPO, Daemon, free_port, start_daemon

TOKEN = "fuzz-token-0123456789abcdef"
CONFIG = Path(__file__).with_name("api_fuzz.toml")  # seed, examples per operation, stateful scenarios

# Operations never called, each with why. Everything else in the document is fuzzed.
EXCLUDED = {
    "POST /v1/vms/{ref}/start": "boots a VM (and pulls a kernel and builds an image on first use)",
    "POST /v1/vms/{ref}/prepare": "pulls a kernel from the internet and builds an image",
    "POST /v1/vms/{ref}/snapshots/{name}/rollback": "with restart=true it starts the VM again",
    "POST /v1/kernels/pull": "downloads a kernel package",
    "POST /v1/images": "builds an image (debootstrap from the internet)",
    "POST /v1/firecracker/pull": "downloads a Firecracker release",
    "PUT /v1/pools/{name}": "a pool of size > 0 boots VMs in the background (and fetches what they boot with)",
    "POST /v1/admin/cleanup-network": "removes nexus links and tables in the host's own network namespace",
    "POST /v1/admin/setup-firewall": "turns on IP forwarding and changes ufw/firewalld on the host",
    "GET /v1/audit/stream": "a live event stream: it answers until the client goes away",
}
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "ensure_resource_availability",
)


@pytest.fixture
def fuzzed() -> Iterator[tuple[Daemon, str]]:
    base = Path(tempfile.mkdtemp(prefix="nxfuzz-"))
    (base / "token").write_text(TOKEN + "\n")
    (base / "token").chmod(0o600)  # nexusd refuses a token file others can read
    address = f"127.0.0.1:{free_port()}"
    daemon = start_daemon(base, "--listen", address, "--token-file", str(base / "token"))
    try:
        yield daemon, f"http://{address}"
    finally:
        code = daemon.stop()
        log = daemon.log_text()
        shutil.rmtree(base, ignore_errors=True)
        assert code == 0, log[-5000:]


def _schemathesis(url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        ",".join(CHECKS),
        "--no-color",
        *(arg for name in EXCLUDED for arg in ("--exclude-name", name)),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
        "SCHEMATHESIS_HOOKS": "tests.integration.api_fuzz_hooks",
    }
    # cwd: schemathesis may leave files (reports, caches) where it runs; never in the repository.
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def test_the_api_answers_as_its_openapi_document_says(fuzzed: tuple[Daemon, str], tmp_path: Path) -> None:
    daemon, url = fuzzed
    with NexusClient(daemon.socket) as client:
        operations = sum(len(ops) for ops in client.request("GET", "/openapi.json")["paths"].values())

    started = time.monotonic()
    run = _schemathesis(url, tmp_path)
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    print(f"schemathesis ran {elapsed:.0f}s:\n{output[-12000:]}")  # with -s: its phases, warnings and summary
    summary = output[output.rfind("= SUMMARY =") :]
    assert run.returncode == 0, output[-30000:]

    # Every exclusion matched an operation (a renamed route must not slip into the fuzz), and all others ran.
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, summary
    assert int(selected[2]) == operations
    assert int(selected[1]) == int(tested[1]) == operations - len(EXCLUDED)

    # Nothing booted or was fetched: no VM left `created`, no kernel, image or Firecracker binary appeared, and there
    # is no asset cache (where a pull, or the fetch a start or prepare begins with, puts what it downloads).
    with NexusClient(daemon.socket) as client:
        assert {vm["state"] for vm in client.list_vms()} <= {"created"}
        assert client.list_kernels() == client.list_images() == client.list_firecracker() == []
    assert not (daemon.state_dir / "cache").exists()
    assert "Traceback" not in daemon.log_text(), daemon.log_text()[-5000:]
