"""Agent token use cases: issue one for a VM (the secret is returned once), list, revoke; and at each request over
TCP, tell whether a bearer is a live agent token and whether it opens the VM a path names.

The rules of the token format live in ``domain.access``; where a token is asked for (the HTTP edge) is
``api.middleware``'s business. A token whose VM is removed goes with it (the store cascades).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from nexus.domain import AgentToken, IssuedToken, NexusError, NotFound, TokenStore, VmStore, parse_lifetime, utcnow
from nexus.domain.access import new_secret, secret_matches, split_bearer

log = logging.getLogger(__name__)

# last_used is a hint for `token ls`, not an audit log: one write a minute per token is enough.
TOUCH_EVERY = timedelta(minutes=1)


class TokenService:
    def __init__(self, tokens: TokenStore, vms: VmStore, now: Callable[[], datetime] = utcnow) -> None:
        self._tokens = tokens
        self._vms = vms
        self._now = now

    def create(self, vm_ref: str, expires: str | None = None) -> IssuedToken:
        """A new token for VM ``vm_ref``, valid for ``expires`` (``1h``, ``7d``...; default: until removed)."""
        lifetime = parse_lifetime(expires) if expires is not None else None
        vm = self._vms.get(vm_ref)
        now = self._now()
        made = new_secret()
        token = AgentToken(
            id=made.id,
            vm_id=vm.id,
            vm_name=vm.name,
            created_at=now,
            expires_at=now + lifetime if lifetime is not None else None,
        )
        self._tokens.insert(token, made.hash)
        log.info("agent token %s issued for VM %s (expires %s)", token.id, vm.name, token.expires_at or "never")
        return IssuedToken(token, made.bearer)

    def list(self, vm_ref: str | None = None) -> list[AgentToken]:
        return self._tokens.find(self._vms.get(vm_ref).id if vm_ref is not None else None)

    def remove(self, token_id: str) -> None:
        if not self._tokens.delete(token_id):
            raise NotFound(f"no agent token {token_id!r}")
        log.info("agent token %s removed", token_id)

    def authenticate(self, bearer: str) -> AgentToken | None:
        """The live token ``bearer`` is, or None (not an agent token, unknown, wrong secret or expired)."""
        parts = split_bearer(bearer)
        if parts is None:
            return None
        found = self._tokens.get(parts[0])
        if found is None:
            return None
        token, stored_hash = found
        now = self._now()
        if not secret_matches(parts[1], stored_hash) or token.expired(now):
            return None
        if token.last_used is None or now - token.last_used >= TOUCH_EVERY:
            self._tokens.touch(token.id, now)
        return token

    def opens(self, token: AgentToken, vm_ref: str) -> bool:
        """Whether ``token`` opens VM ``vm_ref`` (its name, id or id prefix, resolved as every route does)."""
        try:
            return self._vms.get(vm_ref).id == token.vm_id
        except NexusError:  # unknown or ambiguous: not this token's VM, and no hint which VMs exist
            return False
