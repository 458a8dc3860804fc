"""Pure network rules: addressing (IPAM), TAP names and MACs, published ports, the guest argument, settings
checks, and the nftables ruleset rendering."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from nexus.domain import GuestGuard, Invalid, L4Proto, NetLease, PortForward, PublishedPort, spec_for
from nexus.domain.egress import EgressMode
from nexus.domain.network import (
    capacity,
    check_ports,
    gateway,
    mac_address,
    parse_dns_servers,
    parse_subnet,
    pick_address,
    tap_name,
    vm_addresses,
)
from nexus.net.hostdns import host_nameservers, nameservers, resolv_conf
from nexus.net.hostfw import enable_ip_forward, firewalld_argvs, ufw_argvs
from nexus.net.ruleset import RulesetConfig, removal, render, rules_of

NET = IPv4Network("10.77.0.0/24")


def test_gateway_is_the_first_host_and_never_leased() -> None:
    assert str(gateway(NET)) == "10.77.0.1/24"
    addresses = list(vm_addresses(NET))
    assert addresses[0] == IPv4Address("10.77.0.2") and addresses[-1] == IPv4Address("10.77.0.254")
    assert len(addresses) == capacity(NET) == 253


def test_pick_lowest_free_until_exhausted() -> None:
    small = IPv4Network("192.168.5.0/29")  # .1 gateway, .2-.6 for VMs
    taken: set[str] = set()
    picked = []
    while (addr := pick_address(small, taken)) is not None:
        taken.add(str(addr))
        picked.append(str(addr))
    assert picked == [f"192.168.5.{i}" for i in range(2, 7)]
    taken.discard("192.168.5.4")  # released: handed out again, never while held
    assert str(pick_address(small, taken)) == "192.168.5.4"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("10.77.0.1/24", "host bits"),
        ("10.0.0.0/8", "/16 to /29"),
        ("10.0.0.0/30", "/16 to /29"),
        ("8.8.8.0/24", "private"),
        ("nonsense", "not an IPv4 network"),
        (24, "must be a string"),
    ],
)
def test_bad_subnets_are_refused(text: object, needle: str) -> None:
    with pytest.raises(Invalid, match=needle):
        parse_subnet(text)


def test_tap_name_and_mac_are_derived_from_the_vm_id() -> None:
    tap = tap_name("a1b2c3d4e5f6")
    assert tap == tap_name("a1b2c3d4e5f6") != tap_name("a1b2c3d4e5f7")
    assert tap.startswith("nx") and len(tap) == 15
    mac = mac_address("a1b2c3d4e5f6")
    octets = mac.split(":")
    assert len(octets) == 6 and octets[0] == "02"  # locally administered, unicast
    assert int(octets[0], 16) & 0b11 == 0b10
    assert mac == mac_address("a1b2c3d4e5f6") != mac_address("x")


def test_published_ports_parse_and_clash() -> None:
    assert PublishedPort.parse("8080:80") == PublishedPort(8080, 80, L4Proto.TCP)
    assert str(PublishedPort.parse("5353:53/udp")) == "5353:53/udp"
    for bad in ("80", "0:80", "70000:80", "80:80/sctp", "a:b"):
        with pytest.raises(Invalid):
            PublishedPort.parse(bad)
    with pytest.raises(Invalid, match="published twice"):
        check_ports([PublishedPort(80, 1), PublishedPort(80, 2)])
    assert len(check_ports([PublishedPort(80, 1), PublishedPort(80, 1, L4Proto.UDP)])) == 2


def test_guest_argument_carries_the_lease() -> None:
    lease = NetLease("id", IPv4Address("10.77.0.9"), NET, "nxabc", "02:00:00:00:00:09")
    assert lease.kernel_arg() == "nexus.ip=10.77.0.9/24,10.77.0.1,02:00:00:00:00:09"
    other = NetLease("id", IPv4Address("172.20.1.30"), IPv4Network("172.20.0.0/16"), "nxabc", "02:00:00:00:00:09")
    assert other.kernel_arg() == "nexus.ip=172.20.1.30/16,172.20.0.1,02:00:00:00:00:09"  # never a fixed netmask


def test_network_settings_are_checked() -> None:
    assert spec_for("network_subnet").check(" 10.9.0.0/24 ") == "10.9.0.0/24"
    assert spec_for("network_bridge").check("br-nx") == "br-nx"
    with pytest.raises(Invalid):
        spec_for("network_bridge").check("a-name-longer-than-15")
    assert parse_dns_servers("from-host") == "from-host"
    assert parse_dns_servers(["1.1.1.1", "2606:4700::1111"]) == ["1.1.1.1", "2606:4700::1111"]
    assert parse_dns_servers([]) == []
    for bad in ("8.8.8.8", ["x"], ["1.1.1.1"] * 4):
        with pytest.raises(Invalid):
            parse_dns_servers(bad)


def test_host_nameservers_skip_loopback(tmp_path: Path) -> None:
    text = "search lan\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver 192.0.2.1\n"
    assert nameservers(text) == ["192.0.2.1", "fe80::1"]
    stub, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    stub.write_text("nameserver 127.0.0.53\noptions edns0\n")
    upstream.write_text("nameserver 198.51.100.7\n")
    assert host_nameservers((stub, upstream)) == ["198.51.100.7"]
    assert host_nameservers((stub, tmp_path / "missing")) == []
    assert resolv_conf(["192.0.2.1"]).endswith("nameserver 192.0.2.1\n")


def test_setup_firewall_builders_and_ip_forward(tmp_path: Path) -> None:
    assert ufw_argvs("nexus0") == [
        ["ufw", "route", "allow", "in", "on", "nexus0"],
        ["ufw", "route", "allow", "out", "on", "nexus0"],
    ]
    assert firewalld_argvs("nexus0")[0] == ["firewall-cmd", "--permanent", "--zone=trusted", "--add-interface=nexus0"]
    knob = tmp_path / "ip_forward"
    knob.write_text("0\n")
    assert enable_ip_forward(knob) is True and knob.read_text() == "1\n"
    assert enable_ip_forward(knob) is False


# -- the ruleset --------------------------------------------------------------------------------------------------

FWD = PortForward(L4Proto.TCP, 18080, IPv4Address("10.77.0.2"), 8000)


def _rules(cfg: RulesetConfig) -> list[tuple[str, str]]:
    batch = render(cfg)["nftables"]
    return [
        (c["add"]["rule"]["chain"], json.dumps(c["add"]["rule"]["expr"])) for c in batch if "rule" in c.get("add", {})
    ]


def test_batch_recreates_the_table_in_one_transaction() -> None:
    batch = render(RulesetConfig("nexus0", NET))["nftables"]
    table = {"family": "inet", "name": "nexus"}
    assert batch[:3] == [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]
    chains = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in batch if "chain" in c.get("add", {})}
    assert set(chains) == {"prerouting", "output", "postrouting", "forward", "input", "ports"}
    assert chains["ports"]["family"] == "bridge"  # the TAP guards: before the bridge sees a frame
    assert all(chain["policy"] == "accept" for chain in chains.values())  # the host's own traffic is not ours
    assert (chains["forward"]["type"], chains["postrouting"]["type"]) == ("filter", "nat")
    assert render(RulesetConfig("nexus0", NET)) == render(RulesetConfig("nexus0", NET))  # same state, same batch


def test_forward_rules_drop_vm_to_vm_first() -> None:
    forward = [expr for chain, expr in _rules(RulesetConfig("nexus0", NET)) if chain == "forward"]
    first = json.loads(forward[0])
    assert first[0]["match"]["left"] == {"meta": {"key": "iifname"}} and first[0]["match"]["right"] == "nexus0"
    assert first[1]["match"]["left"] == {"meta": {"key": "oifname"}} and first[1]["match"]["right"] == "nexus0"
    assert first[2] == {"drop": None}
    assert '"established", "related"' in forward[1] and '"dnat"' in forward[2]
    assert json.loads(forward[3])[-1] == {"drop": None}  # nothing else goes into the bridge
    assert json.loads(forward[-1])[-1] == {"accept": None}  # bridge to uplink


def test_masquerade_only_leaving_through_other_interfaces() -> None:
    post = [
        json.loads(expr)
        for chain, expr in _rules(RulesetConfig("br9", IPv4Network("172.20.0.0/16")))
        if chain == "postrouting"
    ]
    assert post == [
        [
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"prefix": {"addr": "172.20.0.0", "len": 16}},
                }
            },
            {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br9"}},
            {"masquerade": None},
        ]
    ]


def test_published_ports_dnat_in_prerouting_and_output() -> None:
    udp = PortForward(L4Proto.UDP, 5353, IPv4Address("10.77.0.3"), 53)
    rules = _rules(RulesetConfig("nexus0", NET, (FWD, udp)))
    dnat = [(chain, json.loads(expr)) for chain, expr in rules if '"dnat"' in expr and chain != "forward"]
    assert [chain for chain, _ in dnat] == ["prerouting", "output", "prerouting", "output"]
    assert dnat[0][1][-1] == {"dnat": {"family": "ip", "addr": "10.77.0.2", "port": 8000}}
    assert {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}} in dnat[2][1]
    assert any("127.0.0.0" in json.dumps(m) for m in dnat[1][1])  # loopback is not redirected
    assert not [r for r in _rules(RulesetConfig("nexus0", NET)) if '"dnat": {' in r[1]]


def test_removal_and_listing_helpers() -> None:
    assert removal()["nftables"][1] == {"delete": {"table": {"family": "inet", "name": "nexus"}}}
    listed = {"nftables": [{"metainfo": {}}, {"rule": {"chain": "forward", "handle": 4, "expr": [{"drop": None}]}}]}
    assert rules_of(listed) == [{"chain": "forward", "expr": [{"drop": None}]}]


def _guard(n: int, egress: EgressMode) -> GuestGuard:
    return GuestGuard(f"nxtap{n}", IPv4Address(f"10.77.0.{n}"), f"02:00:00:00:00:0{n}", egress)


def test_each_tap_carries_only_its_own_addresses() -> None:
    cfg = RulesetConfig("nexus0", NET, guests=(_guard(2, EgressMode.OPEN),))
    ports = [json.loads(expr) for chain, expr in _rules(cfg) if chain == "ports"]
    port = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "nxtap2"}}
    mac = {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "ether", "field": "saddr"}},
            "right": "02:00:00:00:00:02",
        }
    }
    ip, arp, last = ports
    assert ip[:2] == [port, mac] and ip[-1] == {"accept": None} and '"right": "10.77.0.2"' in json.dumps(ip)
    assert arp[:2] == [port, mac] and arp[-1] == {"accept": None}
    assert '"saddr ip"' in json.dumps(arp) and '"saddr ether"' in json.dumps(arp)  # sender IP and MAC: its own
    assert last == [port, {"drop": None}]  # the rest (IPv6, VLAN-tagged, other types) never reaches the bridge


def test_egress_none_and_proxy_rules() -> None:
    guests = (_guard(2, EgressMode.OPEN), _guard(3, EgressMode.NONE), _guard(4, EgressMode.PROXY))
    rules = [
        (chain, json.loads(expr))
        for chain, expr in _rules(RulesetConfig("nexus0", NET, guests=guests, proxy_port=3128))
    ]
    forward = [r for chain, r in rules if chain == "forward"]
    dropped = [json.dumps(r) for r in forward if r[-1] == {"drop": None} and '"saddr"' in json.dumps(r)]
    assert any('"10.77.0.3"' in r for r in dropped) and any('"10.77.0.4"' in r for r in dropped)
    assert not any('"10.77.0.2"' in r for r in dropped)  # open: forwarded as before
    assert forward[-1] == [
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "nexus0"}},
        {"accept": None},
    ]
    dnat_replies = next(
        i
        for i, r in enumerate(forward)
        if '"dnat"' in json.dumps(r) and r[0]["match"]["left"] == {"meta": {"key": "iifname"}}
    )
    assert dnat_replies < min(i for i, r in enumerate(forward) if '"10.77.0.3"' in json.dumps(r))  # replies first
    inputs = [json.dumps(r) for chain, r in rules if chain == "input"]
    assert '"established"' in inputs[0] and '"accept"' in inputs[0]  # replies to the host's own connections first
    proxy_accept = [r for r in inputs if '"10.77.0.4"' in r and '"accept"' in r]
    assert len(proxy_accept) == 1 and '"10.77.0.1"' in proxy_accept[0] and "3128" in proxy_accept[0]
    assert not any('"10.77.0.3"' in r and '"accept"' in r for r in inputs)  # none: nothing at all
    assert inputs.index(proxy_accept[0]) < max(i for i, r in enumerate(inputs) if '"10.77.0.4"' in r and '"drop"' in r)
    without_proxy = RulesetConfig("nexus0", NET, guests=(_guard(4, EgressMode.PROXY),))
    assert [r for chain, r in _rules(without_proxy) if chain == "input" and '"accept"' in r] == [inputs[0]]


def test_removal_takes_both_tables() -> None:
    removed = removal()["nftables"]
    assert {"delete": {"table": {"family": "bridge", "name": "nexus"}}} in removed
