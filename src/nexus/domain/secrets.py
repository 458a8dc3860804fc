"""Secrets as nexusd keeps them: a value (in a root-only file, never in the database, never in an answer or a log
line) with its metadata, and the bindings that say where the egress proxy puts it (``domain.egress.Binding``).

A value goes in an HTTP header, so it must be UTF-8 text without control characters (a line break would let it add
headers of its own), 1 to ``MAX_SECRET_BYTES`` bytes. No error message ever quotes a value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from nexus.domain.egress import HOST_RE, MAX_SECRET_BYTES, Binding
from nexus.domain.errors import Invalid, TooLarge

BEARER_HEADER = "authorization"


def check_value(value: bytes) -> bytes:
    """``value`` if it can be a header's value; TooLarge over the limit, Invalid otherwise (without quoting it)."""
    if len(value) > MAX_SECRET_BYTES:
        raise TooLarge(f"a secret's value is at most {MAX_SECRET_BYTES} bytes")
    if not value:
        raise Invalid("a secret's value is empty")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("a secret's value must be UTF-8 text (it is sent in an HTTP header)") from None
    if not text.isprintable() or any(ord(c) > 255 for c in text):  # what the proxy will put in a header
        raise Invalid(
            "a secret's value must be printable text in Latin-1 (no line breaks, tabs or other control characters): "
            "it is sent in an HTTP header"
        )
    return value


def check_bound_host(host: str) -> str:
    """The one host a binding names: a lowercase host name, no wildcard, no port (the proxy compares it exactly)."""
    if host.startswith("*.") or not HOST_RE.fullmatch(host):
        raise Invalid(
            f"invalid host {host!r}: name one host in lowercase, such as api.example.com (no wildcard, no port)"
        )
    return host


@dataclass(frozen=True, slots=True)
class BindingRecord:
    """A binding as ``secret ls`` shows it: the rule, the name of the VM it names (if one), when it was made."""

    binding: Binding
    created_at: datetime
    vm_name: str | None = None


@dataclass(frozen=True, slots=True)
class SecretMeta:
    """What is known of a secret besides its value."""

    name: str
    size_bytes: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SecretInfo:
    meta: SecretMeta
    bindings: tuple[BindingRecord, ...]
    usable: bool  # False: its row is there but its value file is not (the state dir was tampered with or restored)


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """A binding asked for (checked): exactly one of ``vm_id`` and ``tag``."""

    secret: str
    host: str
    header: str
    bearer: bool
    vm_id: str | None = None
    tag: str | None = None


class SecretStore(Protocol):
    """Secrets' metadata and bindings (never values)."""

    def put(self, name: str, size_bytes: int, at: datetime) -> SecretMeta: ...
    def get(self, name: str) -> SecretMeta | None: ...
    def all(self) -> list[SecretMeta]: ...
    def delete(self, name: str, with_bindings: bool) -> bool:
        """Remove the row (and, ``with_bindings``, its bindings in the same transaction); Conflict while bound."""
        ...

    def bind(self, spec: BindingSpec, at: datetime) -> BindingRecord: ...
    def unbind(self, binding_id: int) -> bool: ...
    def bindings(self, secret: str | None = None) -> list[BindingRecord]: ...
    def bindings_matching(self, vm_id: str, tags: Iterable[str]) -> list[Binding]: ...


class SecretVault(Protocol):
    """Secrets' values, one file each, written atomically."""

    def write(self, name: str, value: bytes) -> None: ...
    def read(self, name: str) -> bytes | None: ...
    def delete(self, name: str) -> None: ...
    def names(self) -> set[str]: ...
    def sweep(self, keep: set[str]) -> list[str]:
        """Remove every file but the values of ``keep`` (and leftovers of interrupted writes); the names removed."""
        ...
