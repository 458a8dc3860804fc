"""Portal VMs with real QEMU VMs: an agent inside portal ``e2e-p`` reaches work VMs only through nexusd's gateway
(``nexus-mcp`` → the portal's agent → its gateway port → nexusd → the work VM's agent), under policy, audited.

``portal_client.py`` (stdlib) runs inside the portal as an agent's MCP client would; each run is one session."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_client import NexusClient
from tests.e2e.conftest import AGENT_IMAGE

CLIENT = Path(__file__).with_name("portal_client.py")
PORTAL, W1, W2 = "e2e-p", "e2e-w1", "e2e-w2"


def run(api: NexusClient, vm: str, command: str | list[str], timeout_s: float = 120) -> dict[str, Any]:
    result = api.call_tool(vm, "run_command", {"command": command, "timeout_s": timeout_s})
    structured: dict[str, Any] = result["structuredContent"]
    return structured


def from_portal(api: NexusClient, *calls: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One MCP session inside the portal; the answers to ``calls`` (JSON-RPC responses) in order."""
    done = run(api, PORTAL, ["python3", "/tmp/portal_client.py", json.dumps([list(c) for c in calls])])
    assert done["exit_code"] == 0, done
    out = json.loads(done["stdout"])
    assert out["initialize"].get("result", {}).get("serverInfo", {}).get("name") == "nexus-gateway", out["initialize"]
    answers: list[dict[str, Any]] = out["answers"]
    return answers


def tool(tool_name: str, /, **arguments: Any) -> tuple[str, dict[str, Any]]:
    return "tools/call", {"name": tool_name, "arguments": arguments}


def text(answer: dict[str, Any]) -> str:
    return " ".join(c.get("text", "") for c in answer["result"]["content"])


def allow(api: NexusClient, **rule: Any) -> int:
    made: dict[str, Any] = api.request("POST", "/v1/policies", json=rule)
    return int(made["id"])


@pytest.fixture(scope="module")
def vms(e2e_daemon: Any) -> Iterator[None]:
    with NexusClient(e2e_daemon.socket, timeout_s=300) as api:
        api.create_vm(name=PORTAL, role="portal", mem_mib=256)
        api.create_vm(name=W1, mem_mib=256, tags=["team=a"])
        api.create_vm(name=W2, mem_mib=256)
        try:
            for name in (PORTAL, W1, W2):
                api.start_vm(name)
            for name in (W1, W2):
                assert run(api, name, f"echo {name} > /tmp/who")["exit_code"] == 0
            script = CLIENT.read_text()
            api.call_tool(PORTAL, "file_write", {"path": "/tmp/portal_client.py", "content": script})
            yield
        finally:
            for rule in api.request("GET", "/v1/policies"):
                api.send("DELETE", f"/v1/policies/{rule['id']}")
            for vm in api.list_vms():
                if vm["name"].startswith("e2e-p"):  # the portal, and what it made
                    api.remove_vm(vm["id"], force=True)
            for name in (W1, W2):
                api.remove_vm(name, force=True)


def test_a_portal_uses_what_its_rule_allows_and_nothing_else(api: NexusClient, vms: None) -> None:
    rule = allow(api, portal=PORTAL, work="tag:team=a", tools=["run_command", "file_read"])
    listing, on_w1, on_w2, write_w1, read_w1, missing_vm = from_portal(
        api,
        ("tools/list", {}),
        tool("run_command", vm=W1, command="cat /tmp/who"),
        tool("run_command", vm=W2, command="cat /tmp/who"),
        tool("file_write", vm=W1, path="/tmp/x", content="x"),
        tool("file_read", vm=W1, path="/tmp/who"),
        tool("run_command", command="true"),
    )
    tools = {t["name"]: t for t in listing["result"]["tools"]}
    assert {"run_command", "file_read", "vms_list"} <= set(tools) and "file_write" not in tools
    assert "vm_create" not in tools  # no management rights
    assert tools["run_command"]["inputSchema"]["properties"]["vm"]["enum"] == [W1]  # w2 is not even listed
    assert "vm" in tools["run_command"]["inputSchema"]["required"]

    assert not on_w1["result"].get("isError") and on_w1["result"]["structuredContent"]["stdout"] == f"{W1}\n"
    assert on_w2["result"]["isError"] and f"no rule lets portal {PORTAL} use VM {W2}" in text(on_w2)
    assert write_w1["result"]["isError"]
    assert f"rule {rule} ({PORTAL} → tag:team=a) allows run_command, file_read on {W1}, not file_write" in text(
        write_w1
    )
    assert read_w1["result"]["structuredContent"]["content"] == f"{W1}\n"
    assert missing_vm["result"]["isError"] and "`vm` argument" in text(missing_vm)
    assert run(api, W1, "test -e /tmp/x")["exit_code"] == 1  # the refused write never reached w1

    api.send("DELETE", f"/v1/policies/{rule}")
    (after,) = from_portal(api, tool("run_command", vm=W1, command="cat /tmp/who"))
    assert after["result"]["isError"] and "default deny" in text(after)

    page = api.request("GET", "/v1/audit", params={"caller": f"vm:{PORTAL}", "limit": 6})
    seen = [(e["action"], e["target"], e["decision"], e["rule"], e["is_error"]) for e in reversed(page["entries"])]
    assert seen == [
        ("run_command", W1, "allow", rule, False),
        ("run_command", W2, "deny", None, False),
        ("file_write", W1, "deny", rule, False),
        ("file_read", W1, "allow", rule, False),
        ("run_command", None, "deny", None, False),  # no vm named
        ("run_command", W1, "deny", None, False),  # after the rule went
    ], seen
    assert all(e["via"] == "gateway" and len(e["args_digest"]) == 64 for e in page["entries"])


def test_a_portal_manages_its_own_vms_within_its_rule(api: NexusClient, vms: None) -> None:
    rule = allow(
        api,
        portal=PORTAL,
        work="@created",
        tools=["run_command"],
        manage=True,
        max_vms=2,
        images=[AGENT_IMAGE],
        max_mem_mib=512,
    )
    answers = from_portal(
        api,
        tool("vm_create", name="e2e-pw1", mem_mib=256),
        tool("run_command", vm="e2e-pw1", command="echo made by the portal"),
        tool("vm_create", name="e2e-pw-big", mem_mib=1024, start=False),
        tool("vm_create", name="e2e-pw2", mem_mib=256, start=False),
        tool("vm_create", name="e2e-pw3", mem_mib=256, start=False),
        tool("vm_stop", vm=W1),
        tool("vm_remove", vm="e2e-pw1"),
        tool("vm_remove", vm="e2e-pw2"),
    )
    created, used, big, second, third, foreign, removed1, removed2 = answers
    assert created["result"]["structuredContent"]["state"] == "ready", created
    assert used["result"]["structuredContent"]["stdout"] == "made by the portal\n"
    assert big["result"]["isError"] and "at most 512 MiB of memory, asked for 1024" in text(big)
    assert not second["result"].get("isError"), second
    assert third["result"]["isError"] and "at most 2 VMs, and this portal has 2" in text(third)
    assert foreign["result"]["isError"] and "only VMs it created" in text(foreign)
    assert not removed1["result"].get("isError") and not removed2["result"].get("isError")
    names = {vm["name"] for vm in api.list_vms()}
    assert not names & {"e2e-pw1", "e2e-pw2", "e2e-pw3", "e2e-pw-big"} and W1 in names
    assert api.get_vm(W1)["state"] == "ready"
    api.send("DELETE", f"/v1/policies/{rule}")


def test_a_work_vm_dying_mid_call_fails_the_call_at_once(api: NexusClient, vms: None) -> None:
    rule = allow(api, portal=PORTAL, work=W1, tools=["run_command"])
    answers: list[list[dict[str, Any]]] = []
    call = threading.Thread(
        target=lambda: answers.append(from_portal(api, tool("run_command", vm=W1, command="sleep 60"))), daemon=True
    )
    call.start()
    time.sleep(5)  # the call is under way in w1
    os.kill(api.get_vm(W1)["pid"], signal.SIGKILL)
    call.join(40)  # well before the sleep would have ended by itself
    assert not call.is_alive(), "the routed call hung after its VM died"
    (answer,) = answers[0]
    assert answer["result"]["isError"] and f"VM {W1}" in text(answer), answer
    api.send("DELETE", f"/v1/policies/{rule}")
