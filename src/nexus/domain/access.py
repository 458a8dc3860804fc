"""Who may reach what: the transport a request came over, the rule for host files, and agent tokens.

Two kinds of credential reach nexusd over TCP: the admin token (nexusd's token file: the whole API) and agent
tokens, each of which opens one VM's MCP endpoint and nothing else. An agent token is ``nxa_<id>_<secret>``:
a 12-hex-digit id (listed, never secret) and 32 random bytes in hex. Only the sha256 of the secret is stored, so
a copy of the database opens nothing; the secret is shown once, when the token is made. Operations that read or
run a file on nexusd's host are allowed only over the Unix socket (``require_host_access``), whatever the token.
Issuing, checking and revoking tokens is ``services.tokens``' job; telling the transport apart is the HTTP
edge's (``api.middleware``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from nexus.domain.errors import Forbidden, Invalid

AGENT_TOKEN_PREFIX = "nxa_"
_ID_HEX = 12
_SECRET_BYTES = 32
_TOKEN_RE = re.compile(rf"{AGENT_TOKEN_PREFIX}([0-9a-f]{{{_ID_HEX}}})_([0-9a-f]{{{2 * _SECRET_BYTES}}})")
_DURATION_RE = re.compile(r"(\d{1,6})([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_LIFETIME = timedelta(days=3650)


class Transport(StrEnum):
    """How a request reached nexusd. The Unix socket is guarded by its file mode and trusted with the host."""

    UNIX = "unix"
    TCP = "tcp"


def require_host_access(transport: Transport, what: str) -> None:
    """The one check for operations that read or execute a path on nexusd's host: a remote caller (even with the
    admin token) must not turn nexusd into a file reader or a launcher of host binaries."""
    if transport is not Transport.UNIX:
        raise Forbidden(f"{what} reads or runs a file on nexusd's host: only over the Unix socket")


def names_host_file(base: str) -> bool:
    """Whether an image base (``ImageRequest.base``) is a rootfs tarball on nexusd's host rather than a known base
    (``debian-<suite>``, no slash) or a URL. ``images.bases`` reads it by the same rule."""
    if base.startswith(("http://", "https://")):
        return False
    return not (base.startswith("debian-") and "/" not in base)


@dataclass(frozen=True, slots=True)
class AgentToken:
    """A stored agent token (never its secret)."""

    id: str
    vm_id: str
    vm_name: str
    created_at: datetime
    expires_at: datetime | None = None
    last_used: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token just made, with the bearer string to hand over once: it cannot be shown again."""

    token: AgentToken
    bearer: str


@dataclass(frozen=True, slots=True)
class NewSecret:
    id: str
    bearer: str
    hash: str


def new_secret() -> NewSecret:
    token_id, secret = secrets.token_hex(_ID_HEX // 2), secrets.token_hex(_SECRET_BYTES)
    return NewSecret(token_id, f"{AGENT_TOKEN_PREFIX}{token_id}_{secret}", hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_bearer(bearer: str) -> tuple[str, str] | None:
    """(id, secret) of an agent token, or None when ``bearer`` is not shaped like one."""
    match = _TOKEN_RE.fullmatch(bearer)
    return (match[1], match[2]) if match else None


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Compare in constant time, so the answer's timing says nothing about how much of the hash matched."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())


def parse_lifetime(text: str, what: str = "a token lifetime") -> timedelta:
    """``90s``, ``30m``, ``1h``, ``7d``, ``2w`` → a positive duration of at most ten years."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if match is None:
        raise Invalid(f"{what} looks like 30m, 1h, 7d or 2w, got {text!r}")
    lifetime = timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise Invalid(f"{what} must be more than 0 and at most {MAX_LIFETIME.days} days, got {text!r}")
    return lifetime


class TokenStore(Protocol):
    """Agent tokens with the hash of their secret; a VM's tokens go with its row."""

    def insert(self, token: AgentToken, secret_hash: str) -> None: ...
    def get(self, token_id: str) -> tuple[AgentToken, str] | None:
        """The token and its stored hash, or None."""
        ...

    def find(self, vm_id: str | None = None) -> list[AgentToken]: ...
    def delete(self, token_id: str) -> bool:
        """True if there was such a token."""
        ...

    def touch(self, token_id: str, at: datetime) -> None: ...
