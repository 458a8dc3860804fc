"""Egress: how a VM may reach the outside, and the secrets nexusd adds on the way out (the VM sees placeholders).

A VM's ``EgressMode``: ``open`` (NAT, as before), ``none`` (nothing leaves), ``proxy`` (only nexusd's proxy on the
bridge gateway; each request's host checked against the VM's allow-list). A ``Binding`` puts a secret's value in one
header of requests to one host, for the VMs it names; the guest only ever holds ``placeholder(name)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from nexus.domain.errors import Invalid

PLACEHOLDER_PREFIX = "nexus-secret:"
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
DEFAULT_PORTS = (80, 443)
MAX_SECRET_BYTES = 64 * 1024


class EgressMode(StrEnum):
    OPEN = "open"
    NONE = "none"
    PROXY = "proxy"


def placeholder(secret: str) -> str:
    """What the guest sees instead of secret ``secret``'s value."""
    return f"{PLACEHOLDER_PREFIX}{secret}"


# The guest gets NAME=placeholder in its environment: these would replace what nexus or the system sets there.
RESERVED_NAMES = frozenset(
    {"PATH", "HOME", "SHELL", "USER", "PWD", "LANG", "TERM", "PYTHONPATH", "PYTHONHOME",
     "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
     "http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"}
)  # fmt: skip


def check_secret_name(name: str) -> str:
    if not SECRET_NAME_RE.fullmatch(name):
        raise Invalid(f"invalid secret name {name!r}: use letters, digits and _ (an environment variable's name)")
    if name in RESERVED_NAMES or name.startswith(("LD_", "NEXUS_")):
        raise Invalid(f"secret name {name!r} is a variable the guest needs for itself: choose another name")
    return name


def check_header(header: str) -> str:
    if not HEADER_RE.fullmatch(header):
        raise Invalid(f"invalid header name {header!r}: use letters, digits and -")
    return header.lower()


@dataclass(frozen=True, slots=True)
class HostPattern:
    """``api.example.com`` (that host) or ``*.example.com`` (any host below it, not itself), on ``ports`` (none
    given: 80 and 443)."""

    host: str
    ports: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """``HOST`` or ``HOST:PORT[,PORT...]``; Invalid for anything else."""
        host, _, ports = text.strip().lower().partition(":")
        if not HOST_RE.fullmatch(host):
            raise Invalid(f"invalid host pattern {text!r}: use a host name such as api.example.com or *.example.com")
        parsed: list[int] = []
        for port in ports.split(",") if ports else ():
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise Invalid(f"invalid port {port!r} in host pattern {text!r}: use 1-65535")
            parsed.append(int(port))
        return cls(host, tuple(sorted(set(parsed))))

    def matches(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".")
        if port not in (self.ports or DEFAULT_PORTS):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host

    def __str__(self) -> str:
        return self.host + (":" + ",".join(map(str, self.ports)) if self.ports else "")


@dataclass(frozen=True, slots=True)
class Binding:
    """Secret ``secret`` goes in header ``header`` (as ``Bearer <value>`` when ``bearer``) of requests to ``host``
    (exact name) from the VMs named by ``vm_id`` or carrying ``tag``."""

    id: int
    secret: str
    host: str
    header: str
    bearer: bool = False
    vm_id: str | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class VmEgress:
    """What the proxy knows of the VM a request comes from (found by its source address)."""

    vm_id: str
    vm_name: str
    mode: EgressMode
    allow: tuple[HostPattern, ...] = ()
    bindings: tuple[Binding, ...] = ()

    def allowed(self, host: str, port: int) -> HostPattern | None:
        """The allow-list entry letting ``host:port`` through, if any."""
        return next((p for p in self.allow if p.matches(host, port)), None)

    def bindings_for(self, host: str) -> tuple[Binding, ...]:
        host = host.lower().rstrip(".")
        return tuple(b for b in self.bindings if b.host == host)
