"""The audit log through a real nexusd: REST mutations and refusals (Unix socket, admin token, agent token, no
token), host MCP tool calls, paging, the live SSE stream and its resumption, retention across restarts, and
``nexusctl audit``. A secret-looking argument is only ever kept as a digest: it is in neither the database files
nor any answer."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from nexus.cli.main import main
from nexus.domain import Invalid, NotFound
from nexus.domain.audit import digest
from tests.api_client import NexusClient
from tests.helpers import Daemon, free_port, start_daemon, wait_until

ADMIN = "admin-token-for-the-audit-tests-0123456789"
SECRET = "sk-live-7d1e0c9a-do-not-log-me"


@dataclass
class Nexusd:
    daemon: Daemon
    url: str

    def local(self) -> NexusClient:
        return NexusClient(self.daemon.socket, timeout_s=30)

    def tcp(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def entries(self, **params: Any) -> list[dict[str, Any]]:
        with self.local() as api:
            page: list[dict[str, Any]] = api.request("GET", "/v1/audit", params=params)["entries"]
            return page

    def stored_bytes(self) -> bytes:
        """Every file of the database (the WAL too: recent rows live there first)."""
        return b"".join(p.read_bytes() for p in self.daemon.state_dir.glob("nexus.db*"))


def _start(base: Path) -> Nexusd:
    token_file = base / "admin-token"
    token_file.write_text(ADMIN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    daemon = start_daemon(base, "--listen", f"127.0.0.1:{port}", "--token-file", str(token_file))
    return Nexusd(daemon, f"http://127.0.0.1:{port}")


@pytest.fixture
def nexusd(tmp_path: Path) -> Iterator[Nexusd]:
    n = _start(tmp_path)
    try:
        yield n
    finally:
        code = n.daemon.stop()
        assert code == 0, n.daemon.log_text()[-3000:]


def test_rest_mutations_are_recorded_with_their_route_target_and_digest(nexusd: Nexusd) -> None:
    with nexusd.local() as api:
        vm = api.create_vm(name="box", mem_mib=256)
        api.add_tags("box", ["team"])
        api.list_vms()  # a read: not recorded
        api.remove_vm("box")
    removed, tagged, created = nexusd.entries()
    assert removed["action"] == "DELETE /v1/vms/{ref}"
    assert (removed["target_id"], removed["target"]) == (vm["id"], "box")  # resolved before the VM went
    assert (removed["args_digest"], removed["args_bytes"], removed["result_bytes"]) == (None, 0, 0)
    assert tagged["action"] == "POST /v1/vms/{ref}/tags"
    assert (tagged["args_digest"], tagged["args_bytes"]) == digest({"tags": ["team"]})
    assert tagged["result_bytes"] == len(b'["team"]')
    assert created["action"] == "POST /v1/vms"
    assert created["args_digest"] == digest({"name": "box", "mem_mib": 256})[0]
    assert created["target"] is None  # the route names no VM
    for e in (removed, tagged, created):
        assert (e["caller"], e["via"], e["decision"], e["is_error"], e["rule"]) == (
            "host",
            "rest",
            "allow",
            False,
            None,
        )
        assert e["duration_ms"] >= 0

    with nexusd.local() as api, pytest.raises(NotFound):
        api.request("POST", "/v1/vms/box/start")
    failed = nexusd.entries(limit=1)[0]
    assert (failed["action"], failed["decision"], failed["is_error"]) == ("POST /v1/vms/{ref}/start", "allow", True)
    assert failed["target"] is None  # "box" names no VM any more


def test_callers_over_tcp_and_refusals_are_deny(nexusd: Nexusd) -> None:
    with nexusd.local() as api:
        api.create_vm(name="box", mem_mib=256)
        agent = api.request("POST", "/v1/tokens", json={"vm": "box"})
    with nexusd.tcp(ADMIN) as admin:
        assert admin.post("/v1/vms/box/tags", json={"tags": ["x"]}).status_code == 200
    with nexusd.tcp() as anonymous:
        assert anonymous.delete("/v1/vms/box").status_code == 401
    with nexusd.tcp(agent["token"]) as token:
        assert token.get("/v1/vms/box").status_code == 403
        assert token.get("/v1/audit").status_code == 403  # the log is the admin's
        assert token.get("/v1/audit/stream").status_code == 403

    audit_read, vm_read, anon, by_admin = nexusd.entries(limit=5)[1:5]
    assert (by_admin["caller"], by_admin["decision"], by_admin["target"]) == ("admin", "allow", "box")
    assert (anon["caller"], anon["decision"], anon["action"]) == ("anonymous", "deny", "DELETE /v1/vms/{ref}")
    assert anon["reason"].startswith("missing bearer token") and anon["is_error"] is True
    assert (vm_read["caller"], vm_read["decision"]) == (f"token:{agent['id']}", "deny")
    assert (vm_read["action"], vm_read["target"]) == ("GET /v1/vms/{ref}", "box")
    assert "opens only VM box's MCP endpoint" in vm_read["reason"]
    assert audit_read["action"] == "GET /v1/audit"


def test_paging_newest_first_and_after_a_cursor(nexusd: Nexusd) -> None:
    with nexusd.local() as api:
        api.create_vm(name="box", mem_mib=256)
        for n in range(6):
            api.add_tags("box", [f"t{n}"])
        seen: list[int] = []
        before = None
        while True:
            page = api.request("GET", "/v1/audit", params={"limit": 3, **({"before": before} if before else {})})
            seen += [e["id"] for e in page["entries"]]
            before = page["next_before"]
            if before is None:
                break
        assert seen == sorted(seen, reverse=True) and len(seen) == 7
        newer = api.request("GET", "/v1/audit", params={"after": seen[3], "limit": 2})
        assert [e["id"] for e in newer["entries"]] == [seen[2], seen[1]]
        assert newer["next_after"] == seen[1]
        with pytest.raises(Invalid, match="not both"):
            api.request("GET", "/v1/audit", params={"after": 1, "before": 3})
        with pytest.raises(Invalid, match="RFC 3339"):
            api.request("GET", "/v1/audit", params={"since": "0.5"})  # not a Unix time
        assert len(api.request("GET", "/v1/audit", params={"since": "2000-01-01T00:00:00Z"})["entries"]) == 7
        assert [e["target"] for e in api.request("GET", "/v1/audit", params={"vm": "box"})["entries"]] == ["box"] * 6


def test_arguments_are_kept_only_as_digests(nexusd: Nexusd) -> None:
    with nexusd.local() as api, pytest.raises(NotFound):
        api.request("POST", "/v1/tokens", json={"vm": SECRET})

    async def mcp_call() -> None:
        http = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(nexusd.daemon.socket)), timeout=30)
        async with http, Client(streamable_http_client("http://nexusd/mcp", http_client=http)) as client:
            result = await client.call_tool("vm_inspect", {"vm": SECRET})
            assert result.is_error is True

    anyio.run(mcp_call)
    by_mcp, by_rest = nexusd.entries(limit=2)
    assert by_rest["args_digest"] == by_mcp["args_digest"] == digest({"vm": SECRET})[0]
    with nexusd.local() as api:
        shown = api.send("GET", "/v1/audit").text
    assert SECRET not in shown
    assert SECRET.encode() not in nexusd.stored_bytes()


def test_host_mcp_tool_calls_are_recorded(nexusd: Nexusd) -> None:
    async def scenario() -> None:
        http = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(nexusd.daemon.socket)), timeout=30)
        async with http, Client(streamable_http_client("http://nexusd/mcp", http_client=http)) as client:
            created = await client.call_tool("vm_create", {"name": "mcpbox", "mem_mib": 256})
            assert created.is_error is False
            assert (await client.call_tool("vm_inspect", {"vm": "mcpbox"})).is_error is False

    anyio.run(scenario)
    inspect, create = nexusd.entries(limit=2)
    assert (inspect["via"], inspect["action"], inspect["caller"]) == ("mcp", "vm_inspect", "host")
    assert (inspect["target"], inspect["is_error"], inspect["decision"]) == ("mcpbox", False, "allow")
    assert inspect["target_id"] is not None and inspect["result_bytes"] > 100
    assert (inspect["args_digest"], inspect["args_bytes"]) == digest({"vm": "mcpbox"})
    assert (create["action"], create["target"]) == ("vm_create", None)  # no VM before the call


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    event_id = None
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["id"] == event_id
            yield data


def test_the_stream_delivers_new_entries_live_and_resumes_from_last_event_id(nexusd: Nexusd) -> None:
    with nexusd.local() as api:
        api.create_vm(name="box", mem_mib=256)
    last = nexusd.entries(limit=1)[0]["id"]
    transport = httpx.HTTPTransport(uds=str(nexusd.daemon.socket))
    timeout = httpx.Timeout(10, read=10)
    with (
        httpx.Client(transport=transport, base_url="http://nexusd", timeout=timeout) as http,
        http.stream("GET", "/v1/audit/stream", params={"since_id": last}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
        with nexusd.local() as api:
            api.add_tags("box", ["one"])
            api.add_tags("box", ["two"])
        first, second = next(events), next(events)
    assert first["id"] > last and second["id"] > first["id"]
    assert first["action"] == "POST /v1/vms/{ref}/tags" and first["args_digest"] == digest({"tags": ["one"]})[0]

    headers = {"last-event-id": str(first["id"])}
    with (
        httpx.Client(transport=transport, base_url="http://nexusd", timeout=timeout) as http,
        http.stream("GET", "/v1/audit/stream", params={"since_id": 0}, headers=headers) as response,
    ):
        assert next(_events(response))["id"] == second["id"]  # Last-Event-ID wins over since_id


def test_retention_prunes_at_start_unless_set_to_keep_forever(tmp_path: Path) -> None:
    n = _start(tmp_path)
    try:
        with n.local() as api:
            api.create_vm(name="box", mem_mib=256)
            api.add_tags("box", ["a"])
    finally:
        assert n.daemon.stop() == 0

    def age(entry_id: int) -> None:
        with sqlite3.connect(n.daemon.state_dir / "nexus.db") as db:
            db.execute("UPDATE audit_log SET at = '2020-01-01T00:00:00.000000+00:00' WHERE id = ?", (entry_id,))

    age(1)
    n = _start(tmp_path)
    try:
        wait_until(lambda: [e["id"] for e in n.entries()] == [2], 10, "the 2020 entry to be pruned")
        with n.local() as api:
            api.request("PUT", "/v1/settings/audit_retention_days", json={"value": 0})
    finally:
        assert n.daemon.stop() == 0
    age(2)
    n = _start(tmp_path)
    try:
        time.sleep(0.5)  # the prune at start has run
        assert [e["id"] for e in n.entries()][-1] == 2
    finally:
        assert n.daemon.stop() == 0


def test_nexusctl_audit(nexusd: Nexusd, capsys: pytest.CaptureFixture[str]) -> None:
    with nexusd.local() as api:
        api.create_vm(name="box", mem_mib=256)
    sock = str(nexusd.daemon.socket)
    assert main(["--socket", sock, "audit", "--json", "--vm", "box", "--since", "10m"]) == 0
    page = json.loads(capsys.readouterr().out)
    assert [e["action"] for e in page["entries"]] == []  # the create named no VM in its route
    assert main(["--socket", sock, "audit", "--caller", "host"]) == 0
    out = capsys.readouterr().out
    assert "ACTION" in out and "POST /v1/vms" in out and "allow" in out
    assert main(["--socket", sock, "audit", "--since", "yesterday"]) != 0
    assert "--since takes a duration" in capsys.readouterr().err

    follow = subprocess.Popen(
        [sys.executable, "-m", "nexus.cli.main", "--socket", sock, "--json", "audit", "-f", "--limit", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert follow.stdout is not None
        assert json.loads(follow.stdout.readline())["action"] == "POST /v1/vms"
        with nexusd.local() as api:
            api.add_tags("box", ["live"])
        assert json.loads(follow.stdout.readline())["action"] == "POST /v1/vms/{ref}/tags"
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=10) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
