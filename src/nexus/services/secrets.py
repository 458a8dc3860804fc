"""Secret use cases: the operator sets, lists, removes and binds secrets; the egress proxy asks for a value and for
the bindings of the VM a request comes from; the guest's environment gets placeholders, never values.

A value is kept in a root-only file (``SecretVault``), its metadata and bindings in the store, and they are kept
consistent under faults: a value is written before its row (a crash in between leaves a file with no row, which
``recover`` removes at the next start), a removal deletes the row before the file (a crash in between leaves the
same), and a row whose file is gone is shown as unusable rather than trusted. No value is ever logged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime

from nexus.domain import Conflict, Invalid, NotFound, Vm, VmStore, utcnow
from nexus.domain.egress import Binding, check_header, check_secret_name, placeholder
from nexus.domain.secrets import (
    BEARER_HEADER,
    BindingRecord,
    BindingSpec,
    SecretInfo,
    SecretMeta,
    SecretStore,
    SecretVault,
    check_bound_host,
    check_value,
)
from nexus.domain.validation import check_tag

log = logging.getLogger(__name__)


class SecretService:
    def __init__(
        self, store: SecretStore, vault: SecretVault, vms: VmStore, now: Callable[[], datetime] = utcnow
    ) -> None:
        self._store = store
        self._vault = vault
        self._vms = vms
        self._now = now

    def recover(self) -> None:
        """At start: remove value files with no row (a set or a removal cut short), warn of rows with no file."""
        rows = {meta.name for meta in self._store.all()}
        removed = self._vault.sweep(keep=rows)
        if removed:
            log.info("removed %d file(s) with no secret row from the secrets dir: %s", len(removed), ", ".join(removed))
        for name in sorted(rows - self._vault.names()):
            log.warning("secret %s has no value file: unusable until it is set again", name)

    # -- the operator's ---------------------------------------------------------------------------------

    def set(self, name: str, value: bytes) -> SecretMeta:
        """Store ``value`` as secret ``name`` (made or replaced). Refused whole: nothing is written on a refusal."""
        check_secret_name(name)
        check_value(value)
        known = self._store.get(name) is not None
        self._vault.write(name, value)
        try:
            meta = self._store.put(name, len(value), self._now())
        except BaseException:
            if not known:  # no row will ever name it: take the file back now rather than at the next start
                self._vault.delete(name)
            raise
        log.info("secret %s %s (%d bytes)", name, "replaced" if known else "set", len(value))
        return meta

    def get(self, name: str) -> SecretInfo:
        meta = self._meta(name)
        return SecretInfo(meta, tuple(self._store.bindings(name)), meta.name in self._vault.names())

    def list(self) -> list[SecretInfo]:
        present = self._vault.names()
        bound: dict[str, list[BindingRecord]] = {}
        for record in self._store.bindings():
            bound.setdefault(record.binding.secret, []).append(record)
        return [SecretInfo(m, tuple(bound.get(m.name, ())), m.name in present) for m in self._store.all()]

    def remove(self, name: str, force: bool = False) -> None:
        """Remove secret ``name``; Conflict while it is bound, unless ``force`` (which removes its bindings too)."""
        self._meta(name)
        bindings = self._store.bindings(name)
        if bindings and not force:
            ids = ", ".join(str(r.binding.id) for r in bindings)
            raise Conflict(f"secret {name} is bound (binding {ids}): unbind it first, or force")
        if not self._store.delete(name, with_bindings=force):
            raise NotFound(f"no secret {name!r}")
        self._vault.delete(name)
        log.info("secret %s removed%s", name, f" with {len(bindings)} binding(s)" if bindings else "")

    def bind(
        self,
        name: str,
        host: str,
        *,
        vm: str | None = None,
        tag: str | None = None,
        header: str | None = None,
        bearer: bool = False,
    ) -> BindingRecord:
        """Put secret ``name`` in ``header`` (or ``Authorization: Bearer``) of requests to ``host`` from VM ``vm``
        or every VM tagged ``tag``."""
        if (vm is None) == (tag is None):
            raise Invalid("a binding names a VM or a tag: give exactly one of vm and tag")
        if (header is None) == (not bearer):
            raise Invalid("a binding names a header or bearer (Authorization: Bearer): give exactly one of them")
        spec = BindingSpec(
            secret=check_secret_name(name),
            host=check_bound_host(host),
            header=check_header(header) if header is not None else BEARER_HEADER,
            bearer=bearer,
            tag=check_tag(tag) if tag is not None else None,
        )
        self._meta(name)
        if vm is not None:
            spec = dataclasses.replace(spec, vm_id=self._vms.get(vm).id)
        record = self._store.bind(spec, self._now())
        log.info("secret %s bound: %s", name, _describe(record))
        return record

    def unbind(self, binding_id: int) -> None:
        if not self._store.unbind(binding_id):
            raise NotFound(f"no secret binding {binding_id}")
        log.info("secret binding %d removed", binding_id)

    # -- the proxy's and the guest's --------------------------------------------------------------------

    def value(self, name: str) -> str | None:
        """Secret ``name``'s value, for the egress proxy to send on; None when there is none (or it is unusable)."""
        raw = self._vault.read(name)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # set() admits only UTF-8: this file was written by something else
            log.warning("secret %s's value file is not UTF-8: not used", name)
            return None

    def bindings_for_vm(self, vm: Vm) -> tuple[Binding, ...]:
        """The bindings that apply to ``vm``: naming it, or one of its tags."""
        return tuple(self._store.bindings_matching(vm.id, vm.tags))

    def placeholders_for_vm(self, vm: Vm) -> dict[str, str]:
        """The guest's environment for its bound secrets: each secret's name → its placeholder."""
        return {b.secret: placeholder(b.secret) for b in self.bindings_for_vm(vm)}

    def _meta(self, name: str) -> SecretMeta:
        meta = self._store.get(check_secret_name(name))
        if meta is None:
            raise NotFound(f"no secret {name!r}")
        return meta


def _describe(record: BindingRecord) -> str:
    b = record.binding
    where = f"VM {record.vm_name}" if b.vm_id is not None else f"tag {b.tag}"
    how = "Authorization: Bearer" if b.bearer else f"header {b.header}"
    return f"#{b.id} {how} of {b.host} for {where}"
