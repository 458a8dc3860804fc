"""The official MCP conformance suite (npm ``@modelcontextprotocol/conformance``, installed into ``.tools`` with the
Node 22 it needs by scripts/bootstrap.sh) run against nexusd's MCP endpoints: which of its server scenarios apply,
running one, and a TCP port in front of nexusd's Unix socket for it.

Every server scenario the suite lists is either in ``APPLICABLE`` (must pass) or in ``NOT_APPLICABLE`` with the
reason; a scenario in neither fails ``unclassified``, so a new suite version cannot be ignored by accident. The
suite's client cannot send an Authorization header, hence the forwarder instead of nexusd's token-guarded TCP
listener: it passes bytes unchanged, so the Host header nexusd sees is ``127.0.0.1:PORT``, a loopback host its
DNS-rebinding check accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import REPO

TOOLS = REPO / ".tools" / "node_modules"
# Run by path with the node it ships against: the CLI's shebang would find the system node (v20), too old for it.
NODE = TOOLS / "node" / "bin" / "node"
CLI = TOOLS / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"

# Scenarios of capabilities nexusd offers on both endpoints (tools, over stateful Streamable HTTP).
APPLICABLE = (
    "server-initialize",
    "ping",
    "tools-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
)

_FIXTURE = "calls the suite's fixture tool {tool!r} (its 'everything server'); nexusd serves only its own tools"
_NO_PROMPTS = "prompts: nexusd declares no prompts capability"
_NO_RESOURCES = "resources: nexusd declares no resources capability"

NOT_APPLICABLE: dict[str, str] = {
    "logging-set-level": "logging: nexusd declares no logging capability (no logging/setLevel)",
    "completion-complete": "completion: nexusd declares no completions capability (and has no prompts to complete)",
    "tools-call-simple-text": _FIXTURE.format(tool="test_simple_text"),
    "tools-call-image": _FIXTURE.format(tool="test_image_content"),
    "tools-call-audio": _FIXTURE.format(tool="test_audio_content"),
    "tools-call-embedded-resource": _FIXTURE.format(tool="test_embedded_resource"),
    "tools-call-mixed-content": _FIXTURE.format(tool="test_multiple_content_types"),
    "tools-call-with-logging": _FIXTURE.format(tool="test_tool_with_logging") + "; and no logging capability",
    "tools-call-error": _FIXTURE.format(tool="test_error_handling")
    + " (isError results: tests/integration/test_mcp_vm.py)",
    "tools-call-with-progress": _FIXTURE.format(tool="test_tool_with_progress")
    + " (progress: tests/integration/test_mcp_vm.py)",
    "tools-call-sampling": _FIXTURE.format(tool="test_sampling") + "; nexusd never asks the client for sampling",
    "tools-call-elicitation": _FIXTURE.format(tool="test_elicitation") + "; nexusd never elicits",
    "json-schema-2020-12": _FIXTURE.format(tool="json_schema_2020_12_tool"),
    "elicitation-sep1034-defaults": _FIXTURE.format(tool="test_elicitation_sep1034_defaults")
    + "; nexusd never elicits",
    "elicitation-sep1330-enums": _FIXTURE.format(tool="test_elicitation_sep1330_enums") + "; nexusd never elicits",
    "server-sse-polling": _FIXTURE.format(tool="test_reconnection") + ", which closes its SSE stream mid-call",
    "resources-list": _NO_RESOURCES,
    "resources-read-text": _NO_RESOURCES,
    "resources-read-binary": _NO_RESOURCES,
    "resources-templates-read": _NO_RESOURCES,
    "resources-subscribe": _NO_RESOURCES,
    "resources-unsubscribe": _NO_RESOURCES,
    "prompts-list": _NO_PROMPTS,
    "prompts-get-simple": _NO_PROMPTS,
    "prompts-get-with-args": _NO_PROMPTS,
    "prompts-get-embedded-resource": _NO_PROMPTS,
    "prompts-get-with-image": _NO_PROMPTS,
}

# Server capabilities whose scenarios are all in NOT_APPLICABLE: once nexusd declares one, its scenarios apply.
NOT_OFFERED = ("logging", "completions", "prompts", "resources")

SCENARIO_TIMEOUT_S = 120.0


def missing_tools() -> str | None:
    """Why the suite cannot run here, or None."""
    for path in (NODE, CLI):
        if not path.exists():
            return f"{path} is missing: scripts/bootstrap.sh installs the MCP conformance suite and Node 22 with npm"
    return None


def suite_scenarios() -> list[str]:
    """Every server scenario the installed suite knows, pending ones included (``list`` shows them all)."""
    done = subprocess.run([NODE, CLI, "list", "--server"], capture_output=True, text=True, timeout=60, check=True)
    return re.findall(r"^\s+- (\S+)", done.stdout, flags=re.MULTILINE)


def unclassified(scenarios: list[str]) -> list[str]:
    return [s for s in scenarios if s not in APPLICABLE and s not in NOT_APPLICABLE]


def run_scenario(url: str, scenario: str, out_dir: Path) -> list[dict[str, Any]]:
    """Run one server scenario against ``url``; its checks as the suite saved them (``checks.json``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [NODE, CLI, "server", "--url", url, "--scenario", scenario, "--output-dir", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT_S,
    )
    saved = list(out_dir.glob("*/checks.json"))
    if len(saved) != 1:
        raise AssertionError(
            f"conformance {scenario} saved no checks.json (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    checks: list[dict[str, Any]] = json.loads(saved[0].read_text())
    return checks


def verdict(scenario: str, checks: list[dict[str, Any]]) -> str | None:
    """Why the scenario did not pass (its failed checks in full), or None. A pass needs no FAILURE (the suite's own
    rule) and at least one SUCCESS, so a scenario that checked nothing does not pass."""
    failed = [c for c in checks if c.get("status") == "FAILURE"]
    if failed:
        return f"{scenario}: {len(failed)} failed check(s):\n" + "\n".join(json.dumps(c, indent=2) for c in failed)
    if not any(c.get("status") == "SUCCESS" for c in checks):
        return f"{scenario}: no check succeeded:\n{json.dumps(checks, indent=2)}"
    return None


def offered_but_not_applicable(url: str) -> list[str]:
    """Capabilities in NOT_OFFERED that the endpoint at ``url`` declares in its ``initialize`` result."""
    response = httpx.post(
        url,
        headers={"accept": "application/json, text/event-stream"},
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        },
        timeout=30,
    )
    response.raise_for_status()
    text = response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    capabilities = json.loads(text)["result"]["capabilities"]
    return [name for name in NOT_OFFERED if name in capabilities]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # pass a half-close on, as a direct connection would
    except OSError:
        writer.transport.abort()


async def _forward(
    socket: Path, open_: set[asyncio.StreamWriter], client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    open_.add(client_w)
    try:
        up_r, up_w = await asyncio.open_unix_connection(str(socket))
    except OSError:
        client_w.transport.abort()
        open_.discard(client_w)
        return
    open_.add(up_w)
    try:
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
    finally:
        for writer in (up_w, client_w):
            writer.close()
            open_.discard(writer)


@contextlib.contextmanager
def tcp_to_unix(socket: Path) -> Iterator[int]:
    """Listen on 127.0.0.1 (a free port, yielded) and forward each connection to ``socket``, bytes unchanged, from
    an event loop in a thread of its own; closed, connections and all, when the block ends."""
    loop = asyncio.new_event_loop()
    open_: set[asyncio.StreamWriter] = set()
    server = loop.run_until_complete(
        asyncio.start_server(lambda r, w: _forward(socket, open_, r, w), "127.0.0.1", 0, reuse_address=True)
    )
    port: int = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, name="tcp-to-unix", daemon=True)
    thread.start()

    async def shutdown() -> None:
        # Abort the connections rather than cancel their tasks: the pipes then end as on any reset, and the stream
        # machinery has no cancelled task to complain about.
        server.close()
        for writer in list(open_):
            writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.wait(tasks, timeout=5) if tasks else None

    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
