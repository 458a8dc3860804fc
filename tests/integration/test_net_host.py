"""The host adapters for real, in a network namespace this test creates and removes: links over netlink
(bridge, isolated persistent TAP, ownership alias, foreign bridge refused) and the nftables table over
libnftables (applied twice → one copy, a bad batch → nft's own message, removal). The adapters use the
current namespace, so the checks run in a child process started with ``ip netns exec``."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from nexus.domain.network import bridge_mac

SCRIPT = r"""
import asyncio, json, subprocess
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from nexus.domain import Conflict, GuestGuard, L4Proto, PortForward
from nexus.domain.egress import EgressMode
from nexus.net import NetlinkLinks, NftError, NftFirewall
from nexus.net.ruleset import rules_of

def inet(name):
    found = ip_json("addr", "show", name)[0]["addr_info"]
    return [f'{a["local"]}/{a["prefixlen"]}' for a in found if a["family"] == "inet"]

def ip_json(*args):
    return json.loads(subprocess.run(["ip", "-j", "-d", *args], capture_output=True, text=True, check=True).stdout)

async def main():
    out = {}
    links, fw = NetlinkLinks(), NftFirewall()
    await links.ensure_bridge("nexus0", IPv4Interface("10.77.0.1/24"))
    await links.ensure_bridge("nexus0", IPv4Interface("10.77.0.1/24"))
    out["addr_once"] = inet("nexus0")
    await links.ensure_bridge("nexus0", IPv4Interface("10.88.0.1/16"))
    out["addr_moved"] = inet("nexus0")
    await links.add_tap("nxtap1", "nexus0", "nexus vm abc")
    await links.add_tap("nxtap1", "nexus0", "nexus vm abc")  # a leftover of that name is replaced
    tap = ip_json("link", "show", "nxtap1")[0]
    out["bridge_mac"] = ip_json("link", "show", "nexus0")[0]["address"]  # its own, not the TAP's
    out["tap"] = {
        "master": tap.get("master"), "alias": tap.get("ifalias"), "up": "UP" in tap["flags"],
        "isolated": tap["linkinfo"]["info_slave_data"].get("isolated"),
        "persist": "persist" in json.dumps(tap["linkinfo"].get("info_data", {})),
    }
    subprocess.run(["ip", "link", "add", "foreign0", "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "add", "vx0", "type", "veth", "peer", "name", "vx1"], check=True)
    out["owned"] = sorted((l.name, l.kind) for l in await links.owned())
    try:
        await links.ensure_bridge("foreign0", IPv4Interface("10.99.0.1/24"))
        out["foreign"] = "modified"
    except Conflict as exc:
        out["foreign"] = exc.message
    out["foreign_addrs"] = ip_json("addr", "show", "foreign0")[0]["addr_info"]
    fwd = [PortForward(L4Proto.TCP, 8080, IPv4Address("10.88.0.2"), 80)]
    out["exists_before"] = fw.exists()
    for _ in range(3):
        fw.apply("nexus0", IPv4Network("10.88.0.0/16"), fwd)
    out["rules"] = rules_of(fw.listed())
    try:
        fw.nft.run({"nftables": [{"add": {"chain": {"family": "inet", "table": "nope", "name": "x"}}}]})
    except NftError as exc:
        out["nft_error"] = exc.message
    guests = [
        GuestGuard("nxtap1", IPv4Address("10.88.0.2"), "02:00:00:00:00:02", EgressMode.PROXY),
        GuestGuard("nxtap2", IPv4Address("10.88.0.3"), "02:00:00:00:00:03", EgressMode.NONE),
    ]
    for _ in range(2):
        fw.apply("nexus0", IPv4Network("10.88.0.0/16"), fwd, guests, 3128)
    bridged = fw.nft.run({"nftables": [{"list": {"table": {"family": "bridge", "name": "nexus"}}}]})
    out["guard_rules"] = len(rules_of(bridged))
    out["egress_rules"] = len(rules_of(fw.listed())) - len(out["rules"])
    out["deleted"] = [await links.delete("nxtap1"), await links.delete("nxtap1")]
    out["removed"] = [fw.remove(), fw.remove()]
    out["exists_after"] = fw.exists()
    tables = fw.nft.run({"nftables": [{"list": {"tables": {}}}]})["nftables"]
    out["tables_after"] = [t["table"]["name"] for t in tables if "table" in t]
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture
def netns() -> Iterator[str]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is needed to make the test namespace")
    name = f"nx-t-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_links_and_table_in_a_namespace(netns: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    assert out["addr_once"] == ["10.77.0.1/24"]
    assert out["addr_moved"] == ["10.88.0.1/16"]  # an earlier subnet's gateway is replaced, not kept beside
    assert out["tap"] == {"master": "nexus0", "alias": "nexus vm abc", "up": True, "isolated": True, "persist": True}
    assert out["bridge_mac"] == bridge_mac("nexus0")
    assert out["owned"] == [["nexus0", "bridge"], ["nxtap1", "tun"]]  # by alias: foreign0 and the veths are not ours
    assert "nexus did not make it" in out["foreign"] and out["foreign_addrs"] == []
    assert out["exists_before"] is False
    dumped = [json.dumps(r, sort_keys=True) for r in out["rules"]]
    assert len(dumped) == len(set(dumped)) == 11  # 2 DNAT, 1 masquerade, 7 forward, 1 input: applied 3 times, one copy
    assert "No such file or directory" in out["nft_error"] and out["nft_error"].startswith("nftables refused")
    assert out["deleted"] == [True, False]
    assert out["removed"] == [True, False] and out["exists_after"] is False
    assert out["guard_rules"] == 6  # per TAP: its IPv4, its ARP, nothing else (applied twice: still one copy)
    assert out["egress_rules"] == 3 + 2  # proxy: forward, input accept and drop; none: forward, input
    assert out["tables_after"] == []  # the bridge table went with the inet one
