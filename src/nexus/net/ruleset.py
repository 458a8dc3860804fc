"""Render nexusd's whole nftables table as one libnftables JSON batch. Pure: a frozen config in, a dict out.

The batch is ``add table; delete table; add table; add chains; add rules``, which libnftables applies as one
transaction: the table ends up exactly as rendered whether it existed or not, so applying it again (a nexusd
restart, a VM start) never duplicates a rule, and nothing is ever half applied. Everything lives in one
``inet`` table and one ``bridge`` table of the same name that nothing else writes:

- ``prerouting``/``output`` (nat): published ports, DNAT from the host's local addresses to the VM (the output
  chain serves the host's own connections; loopback is left alone, it would need ``route_localnet``).
- ``postrouting`` (nat): masquerade the VM subnet when it leaves through any interface but the bridge.
- ``forward`` (filter, policy accept so the host's other traffic is not ours to judge): bridge → bridge is
  dropped first (VM-to-VM through the gateway, and, on hosts with bridge netfilter, frames bridged between the
  VMs' ports, which then pass this hook with the bridge as both in- and out-interface); into the bridge only
  replies and DNAT'ed connections; out of the bridge only the VM subnet's own source addresses, and none from a
  VM whose egress is ``none`` or ``proxy`` (but the replies of its published ports).
- ``input`` (filter): from a ``none`` VM nothing; from a ``proxy`` VM only TCP to the egress proxy's port on the
  gateway address.
- bridge ``ports`` (prerouting): each TAP carries only untagged IPv4 and ARP from its VM's own MAC and address.

It does not talk to the kernel (``nexus.net.nft`` does) and knows nothing of VMs beyond their forwards and guards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from nexus.domain import GuestGuard, PortForward
from nexus.domain.egress import EgressMode

TABLE = "nexus"
FAMILY = "inet"
BRIDGE_FAMILY = "bridge"  # a table of the same name there holds each TAP to its own MAC and address
Json = dict[str, Any]
_LOOPBACK = IPv4Network("127.0.0.0/8")


@dataclass(frozen=True, slots=True)
class RulesetConfig:
    bridge: str
    subnet: IPv4Network
    forwards: tuple[PortForward, ...] = ()
    table: str = TABLE
    guests: tuple[GuestGuard, ...] = ()
    proxy_port: int | None = None  # nexusd's egress proxy on the gateway address


def _table(cfg: RulesetConfig) -> Json:
    return {"family": FAMILY, "name": cfg.table}


def _chain(cfg: RulesetConfig, name: str, kind: str, hook: str, prio: int, family: str = FAMILY) -> Json:
    return {
        "add": {
            "chain": {
                "family": family,
                "table": cfg.table,
                "name": name,
                "type": kind,
                "hook": hook,
                "prio": prio,
                "policy": "accept",
            }
        }
    }


def _rule(cfg: RulesetConfig, chain: str, *expr: Json, family: str = FAMILY) -> Json:
    return {"add": {"rule": {"family": family, "table": cfg.table, "chain": chain, "expr": list(expr)}}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _prefix(net: IPv4Network) -> Json:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _saddr() -> Json:
    return {"payload": {"protocol": "ip", "field": "saddr"}}


def _dnat(cfg: RulesetConfig, chain: str, fwd: PortForward, *guard: Json) -> Json:
    return _rule(
        cfg,
        chain,
        _match(_meta("nfproto"), "ipv4"),
        *guard,
        _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
        _match(_meta("l4proto"), fwd.protocol.value),
        _match({"payload": {"protocol": "th", "field": "dport"}}, fwd.host_port),
        {"dnat": {"family": "ip", "addr": str(fwd.address), "port": fwd.guest_port}},
    )


def render(cfg: RulesetConfig) -> Json:
    """The complete batch for ``cfg`` (forwards in the order given)."""
    br = cfg.bridge
    bridged = {"family": BRIDGE_FAMILY, "name": cfg.table}
    cmds: list[Json] = [
        {"add": {"table": _table(cfg)}},
        {"delete": {"table": _table(cfg)}},
        {"add": {"table": _table(cfg)}},
        {"add": {"table": bridged}},
        {"delete": {"table": bridged}},
        {"add": {"table": bridged}},
        _chain(cfg, "prerouting", "nat", "prerouting", -100),
        _chain(cfg, "output", "nat", "output", -100),
        _chain(cfg, "postrouting", "nat", "postrouting", 100),
        _chain(cfg, "forward", "filter", "forward", 0),
        _chain(cfg, "input", "filter", "input", 0),
        _chain(cfg, "ports", "filter", "prerouting", -200, family=BRIDGE_FAMILY),
    ]
    cmds += _guards(cfg)
    for fwd in cfg.forwards:
        cmds.append(_dnat(cfg, "prerouting", fwd))
        cmds.append(
            _dnat(
                cfg, "output", fwd, _match({"payload": {"protocol": "ip", "field": "daddr"}}, _prefix(_LOOPBACK), "!=")
            )
        )
    cmds.append(
        _rule(
            cfg,
            "postrouting",
            _match(_saddr(), _prefix(cfg.subnet)),
            _match(_meta("oifname"), br, "!="),
            {"masquerade": None},
        )
    )
    iif, oif = _meta("iifname"), _meta("oifname")
    cmds += [
        _rule(cfg, "forward", _match(iif, br), _match(oif, br), {"drop": None}),
        _rule(
            cfg,
            "forward",
            _match(oif, br),
            _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
            {"accept": None},
        ),
        _rule(cfg, "forward", _match(oif, br), _match({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None}),
        _rule(cfg, "forward", _match(oif, br), {"drop": None}),
        _rule(cfg, "forward", _match(iif, br), _match(_saddr(), _prefix(cfg.subnet), "!="), {"drop": None}),
        # replies of connections to a published port pass whatever the VM's egress
        _rule(cfg, "forward", _match(iif, br), _match({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None}),
    ]
    cmds += _egress(cfg)
    cmds.append(_rule(cfg, "forward", _match(iif, br), {"accept": None}))
    return {"nftables": cmds}


def _guards(cfg: RulesetConfig) -> list[Json]:
    """On each TAP, before the bridge sees a frame, an allow-list: untagged IPv4 from the VM's own MAC and address,
    and ARP from them; everything else dropped (IPv6, other ethertypes, and VLAN-tagged frames, which the host would
    untag and take as IPv4/ARP past rules that read only the outer type). So no VM can pass for another."""
    rules = []
    ether = {"payload": {"protocol": "ether", "field": "type"}}
    for guest in cfg.guests:
        port = _match(_meta("iifname"), guest.tap)
        own_mac = _match({"payload": {"protocol": "ether", "field": "saddr"}}, guest.mac)
        rules += [
            _rule(
                cfg, "ports", port, own_mac, _match(ether, "ip"), _match(_saddr(), str(guest.address)),
                {"accept": None}, family=BRIDGE_FAMILY,
            ),
            _rule(
                cfg, "ports", port, own_mac, _match(ether, "arp"),
                _match({"payload": {"protocol": "arp", "field": "saddr ip"}}, str(guest.address)),
                _match({"payload": {"protocol": "arp", "field": "saddr ether"}}, guest.mac),
                {"accept": None}, family=BRIDGE_FAMILY,
            ),
            _rule(cfg, "ports", port, {"drop": None}, family=BRIDGE_FAMILY),
        ]  # fmt: skip
    return rules


def _egress(cfg: RulesetConfig) -> list[Json]:
    """A ``none`` guest forwards nothing and reaches nothing on the host; a ``proxy`` guest reaches only the proxy
    port on the gateway address (no DNS either: the proxy resolves names)."""
    iif = _match(_meta("iifname"), cfg.bridge)
    # replies to what the host opened (a published port reached through the host's own address) pass
    rules = [
        _rule(cfg, "input", iif, _match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None})
    ]
    gateway = str(cfg.subnet.network_address + 1)
    for guest in cfg.guests:
        if guest.egress is EgressMode.OPEN:
            continue
        source = _match(_saddr(), str(guest.address))
        rules.append(_rule(cfg, "forward", iif, source, {"drop": None}))
        if guest.egress is EgressMode.PROXY and cfg.proxy_port is not None:
            rules.append(
                _rule(
                    cfg,
                    "input",
                    iif,
                    source,
                    _match({"payload": {"protocol": "ip", "field": "daddr"}}, gateway),
                    _match(_meta("l4proto"), "tcp"),
                    _match({"payload": {"protocol": "th", "field": "dport"}}, cfg.proxy_port),
                    {"accept": None},
                )
            )
        rules.append(_rule(cfg, "input", iif, source, {"drop": None}))
    return rules


def removal(table: str = TABLE) -> Json:
    """Delete the tables whether or not they exist (``add`` first makes the ``delete`` always valid)."""
    cmds: list[Json] = []
    for family in (FAMILY, BRIDGE_FAMILY):
        ref = {"family": family, "name": table}
        cmds += [{"add": {"table": ref}}, {"delete": {"table": ref}}]
    return {"nftables": cmds}


def listing(table: str = TABLE) -> Json:
    return {"nftables": [{"list": {"table": {"family": FAMILY, "name": table}}}]}


def rules_of(listed: Json) -> list[Json]:
    """The rules of a ``list table`` answer, each as ``{"chain", "expr"}`` without its handle (comparable)."""
    rules = []
    for item in listed.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if isinstance(rule, dict):
            rules.append({"chain": rule.get("chain"), "expr": rule.get("expr")})
    return rules


def forwards_sorted(forwards: Sequence[PortForward]) -> tuple[PortForward, ...]:
    """A stable order, so the same state always renders the same batch."""
    return tuple(sorted(forwards, key=lambda f: (f.protocol.value, f.host_port)))
