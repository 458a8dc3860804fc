"""Gateway latency: a routed 1-byte ``file_read`` (portal → nexusd → work VM) against the same call from the host,
in the same run. Goal (issue 15): routed p50 ≤ 1.5 x host p50, and the policy check + audit write ≤ 0.5 ms of it.

Both paths end at the same work VM's agent through nexusd's same MCP link; each is driven by a minimal client so
that client cost does not blur what nexusd adds:

host     ``tools/call`` POSTed as JSON-RPC to ``/v1/vms/w/mcp`` over nexusd's Unix socket (httpx, one session:
         ``bench.mcp_latency.McpPost``).
routed   the same message written, newline-framed, to the portal agent's gateway socket (what ``nexus-mcp``
         copies stdin to): portal agent → its gateway stream → nexusd's gateway session (policy, limits, audit)
         → the work VM's agent.

The VMM is the test suite's fake Firecracker (``tests/fakes/firecracker.py``): each "guest" agent is a host
process behind a hybrid-vsock muxer, so a portal-side client runs at host speed (under TCG it would measure the
emulator, not nexusd). Calls alternate between the paths so both see the same load.

``decide+audit`` is measured in-process on a real SQLite store: ``PolicyService.decide`` with 20 rules, then
``AuditService.record`` of one entry.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.api_client import NexusClient
from tests.fakes.firecracker import gateway_socket
from tests.fakes.firecracker_host import firecracker_daemon

from bench.common import percentile, print_table
from bench.mcp_latency import McpPost
from nexus.domain import Role, Vm, VmState, utcnow
from nexus.domain.audit import AuditEntry, Decision, Via, digest
from nexus.domain.policy import Limits, RuleSpec, Selector
from nexus.services import SettingsService
from nexus.services.audit import AuditService
from nexus.services.policy import PolicyService
from nexus.store import AuditRepo, PolicyRepo, SettingsRepo, VmRepo, open_database

CALLS = 300
RULES = 20
GOAL_RATIO = 1.5
GOAL_DECIDE_MS = 0.5
READ_ARGS: dict[str, Any] = {"path": "/tmp/nexus-bench-1b", "length": 1}
ROUTED_READ = {"name": "file_read", "arguments": {**READ_ARGS, "vm": "w"}}  # the gateway's tools name their VM


class Routed:
    """A session on the portal agent's gateway socket, newline-framed JSON-RPC."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.connect(path)
        self._file = self._sock.makefile("rwb")
        self._next = 0
        self.ask("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b"}})
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _send(self, message: dict[str, Any]) -> None:
        self._file.write(json.dumps(message).encode() + b"\n")
        self._file.flush()

    def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        self._send({"jsonrpc": "2.0", "id": self._next, "method": method, "params": params})
        while True:
            message: dict[str, Any] = json.loads(self._file.readline())
            if message.get("id") == self._next:
                return message

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _timed(call: Callable[[], dict[str, Any]]) -> float:
    start = time.perf_counter()
    answer = call()
    elapsed = time.perf_counter() - start
    result = answer.get("result") or {}
    if result.get("isError") or "error" in answer:
        raise RuntimeError(f"the benchmark call failed: {answer}")
    return elapsed


def _decide_and_audit(base: Path) -> list[float]:
    conn = open_database(base / "micro" / "nexus.db")
    now = utcnow()
    vms = VmRepo(conn)
    portal = Vm("p0", "p", Role.PORTAL, 1, 256, "i", "k", VmState.READY, now, now)
    work = Vm("w0", "w", Role.WORK, 1, 256, "i", "k", VmState.READY, now, now, tags=("team=a",))
    policy = PolicyService(PolicyRepo(conn), vms)
    for i in range(RULES - 1):  # the one that allows is the last one looked at
        policy.allow(RuleSpec(Selector.parse(f"other-{i}", work=False), Selector.parse("w", work=True), ("*",)))
    policy.allow(RuleSpec(Selector.parse("p", work=False), Selector.parse("tag:team=a", work=True), ("*",), Limits()))
    audit = AuditService(store=AuditRepo(conn), vms=vms, settings=SettingsService(SettingsRepo(conn)))
    samples = []
    for _ in range(CALLS):
        start = time.perf_counter()
        verdict = policy.decide(portal, work, "file_read")
        args_digest, size = digest(READ_ARGS)
        audit.record(
            AuditEntry(
                at=utcnow(),
                caller="vm:p",
                via=Via.GATEWAY,
                action="file_read",
                decision=Decision.ALLOW if verdict.allowed else Decision.DENY,
                target_id=work.id,
                target=work.name,
                rule=verdict.rule.id if verdict.rule else None,
                args_digest=args_digest,
                args_bytes=size,
            )
        )
        samples.append(time.perf_counter() - start)
    conn.close()
    return samples


def run(args: argparse.Namespace | None = None) -> int:
    base = Path(tempfile.mkdtemp(prefix="nxbgw-"))  # short: Unix socket paths
    daemon = firecracker_daemon(base)
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            api.create_vm(name="p", role="portal", mem_mib=256)
            api.create_vm(name="w", mem_mib=256)
            api.start_vm("p")
            api.start_vm("w")
            api.call_tool("w", "run_command", {"command": "printf x > /tmp/nexus-bench-1b"})
            api.request("POST", "/v1/policies", json={"portal": "p", "work": "w", "tools": ["file_read"]})
            portal_id = api.get_vm("p")["id"]
        routed = Routed(gateway_socket(str(base / "run" / "vms" / portal_id / "vsock.sock")))
        host = McpPost(daemon.socket, "w")
        samples: dict[str, list[float]] = {"host": [], "routed": []}
        try:
            for _ in range(20):  # warm both paths
                _timed(lambda: routed.ask("tools/call", ROUTED_READ))
                _timed(lambda: host.call(READ_ARGS))
            for _ in range(CALLS):
                samples["routed"].append(_timed(lambda: routed.ask("tools/call", ROUTED_READ)))
                samples["host"].append(_timed(lambda: host.call(READ_ARGS)))
        finally:
            routed.close()
            host.close()
        samples["decide+audit"] = _decide_and_audit(base)
    finally:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            for name in ("p", "w"):
                api.remove_vm(name, force=True)
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
    host_p50 = percentile(samples["host"], 50)
    ratio = percentile(samples["routed"], 50) / host_p50
    decide_ms = percentile(samples["decide+audit"], 50) * 1e3
    rows = []
    for name, times in samples.items():
        p50, p99 = percentile(times, 50) * 1e3, percentile(times, 99) * 1e3
        verdict: str
        if name == "routed":
            verdict = f"{'yes' if ratio <= GOAL_RATIO else 'NO'} (x{ratio:.2f} ≤ {GOAL_RATIO})"
        elif name == "decide+audit":
            verdict = f"{'yes' if decide_ms <= GOAL_DECIDE_MS else 'NO'} (≤ {GOAL_DECIDE_MS} ms)"
        else:
            verdict = ""
        rows.append((name, f"{p50:.2f}", f"{p99:.2f}", f"{p50 / (host_p50 * 1e3):.2f}", verdict))
    print_table(
        f"Gateway: 1-byte file_read, ms over {CALLS} calls (fake Firecracker: agents run as host processes)",
        ["path", "p50", "p99", "x host", "meets goal"],
        rows,
    )
    return 0
