"""What interception does to a request inside a TLS tunnel the proxy terminates: a placeholder becomes its secret's
value in the header a binding names, for that binding's host only; everything else passes as it came."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nexus.domain.egress import PLACEHOLDER_PREFIX, Binding
from nexus.egress.http import Headers, values

# the whole name: "nexus-secret:K" inside "nexus-secret:K2" is not K's placeholder
_PLACEHOLDER = re.compile(re.escape(PLACEHOLDER_PREFIX) + r"([A-Za-z_][A-Za-z0-9_]{0,63})(?![A-Za-z0-9_])")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr][ \t]+" + _PLACEHOLDER.pattern + r"[ \t]*")


@dataclass(frozen=True, slots=True)
class Injection:
    headers: Headers
    injected: tuple[str, ...] = ()  # "NAME in header", for the audit (never a value)
    unusable: tuple[str, ...] = ()  # bound secrets whose placeholder was found but whose value could not go in


def _usable(value: str | None) -> bool:
    # a line break would end the header and start another; latin-1 is what a header carries
    return value is not None and value.isprintable() and all(ord(c) < 256 for c in value)


def names_host(headers: Headers, host: str, port: int) -> bool:
    """The request's one Host header names the tunnel's host: a secret only ever goes to the host it is bound to,
    even behind a front (a CDN) that routes by Host."""
    found = values(headers, "host")
    name = found[0].strip().lower().rstrip(".") if len(found) == 1 else ""
    return name == host or name == f"{host}:{port}"


def inject(headers: Headers, bindings: Iterable[Binding], secret_value: Callable[[str], str | None]) -> Injection:
    """``headers`` with each bound placeholder replaced in its binding's header: a ``header`` binding's
    placeholder anywhere in that header's value, a ``bearer`` binding's when the value is exactly ``Bearer
    <placeholder>``. ``bindings`` must be those of the request's host."""
    plain: dict[str, set[str]] = {}
    bearer: dict[str, set[str]] = {}
    for b in bindings:
        (bearer if b.bearer else plain).setdefault(b.header.lower(), set()).add(b.secret)
    if not plain and not bearer:
        return Injection(headers)
    values: dict[str, str | None] = {}
    injected: list[str] = []
    unusable: list[str] = []

    def value_of(name: str, header: str) -> str | None:
        if name not in values:
            values[name] = secret_value(name)
        value = values[name]
        if _usable(value):
            injected.append(f"{name} in {header}")
            return value
        unusable.append(name)
        return None

    out: list[tuple[str, str]] = []
    for header, value in headers:
        key = header.lower()
        if (m := _BEARER.fullmatch(value)) and m.group(1) in bearer.get(key, ()):
            if (secret := value_of(m.group(1), key)) is not None:
                value = f"Bearer {secret}"
        elif key in plain:

            def replace(m: re.Match[str], names: set[str] = plain[key], header: str = key) -> str:
                if m.group(1) in names and (secret := value_of(m.group(1), header)) is not None:
                    return secret
                return m.group(0)

            value = _PLACEHOLDER.sub(replace, value)
        out.append((header, value))
    return Injection(tuple(out), tuple(dict.fromkeys(injected)), tuple(dict.fromkeys(unusable)))
