"""The audit log: recording entries (never failing the call they describe), reading them page by page, following
them live, and keeping them only as long as the ``audit_retention_days`` setting says.

Live readers get entries through an in-memory fan-out: each subscription has a bounded queue, and recording never
waits for a reader. A reader that falls behind loses entries from its queue and is told so (``Lagged``);
``follow`` then reads what it missed from the store, where every entry is written before it is published, so a
follower sees each stored entry once, in id order.

Everything here runs on the event loop thread, the only one that touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from nexus.domain import Invalid, NexusError, VmStore, utcnow
from nexus.domain.audit import AuditEntry, AuditQuery, AuditStore
from nexus.services.settings import SettingsService

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000  # entries a live reader may be behind before it loses some
PAGE_MAX = 1000
PRUNE_EVERY_S = 3600.0
_PRUNE_BATCH = 5000  # rows per DELETE: a long prune never holds the event loop for long
_REPLAY_PAGE = 500


class Lagged(Exception):
    """A subscription's queue was full: ``lost`` entries published since were not queued for it."""

    def __init__(self, lost: int) -> None:
        super().__init__(f"{lost} audit entries were not delivered (reader too slow)")
        self.lost = lost


class Subscription:
    """One live reader's queue of new entries."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[AuditEntry | None] = asyncio.Queue(size)
        self._lost = 0
        self._closed = False

    def offer(self, entry: AuditEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self._lost += 1

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)  # wakes a waiting reader; a full queue is read to its end anyway

    async def get(self) -> AuditEntry | None:
        """The next entry; None once closed. Raises ``Lagged`` when the entries queued are used up and some were
        lost after them (the reader then knows exactly where its gap begins)."""
        if self._queue.empty():
            if self._lost:
                lost, self._lost = self._lost, 0
                raise Lagged(lost)
            if self._closed:
                return None
        return await self._queue.get()


@dataclass(frozen=True, slots=True)
class AuditPageResult:
    entries: list[AuditEntry]
    next_before: int | None  # the oldest id of a full newest-first page: older entries may remain
    next_after: int | None  # the newest id seen (or the ``after`` given): what comes next is above it


class AuditService:
    def __init__(
        self,
        *,
        store: AuditStore,
        vms: VmStore,
        settings: SettingsService,
        now: Callable[[], datetime] = utcnow,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self._store = store
        self._vms = vms
        self._settings = settings
        self._now = now
        self._queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    # -- recording ------------------------------------------------------------------------------------------------

    def record(self, entry: AuditEntry) -> None:
        """Store ``entry`` and hand it to live readers. Never raises: losing the log must not fail the call it
        describes, so a store failure is logged and the entry dropped."""
        try:
            stored = replace(entry, id=self._store.insert(entry))
        except Exception as exc:
            log.warning("audit entry dropped (%s %s by %s): %s", entry.via, entry.action, entry.caller, exc)
            return
        for subscription in self._subscriptions:
            subscription.offer(stored)

    def target(self, ref: str) -> tuple[str | None, str | None]:
        """The VM ``ref`` names as ``(id, name)``; ``(None, None)`` when it names none (yet, or any more): a ref is
        given by the caller, and what a caller gives is kept only as a digest."""
        try:
            vm = self._vms.get(ref)
        except NexusError:
            return None, None
        return vm.id, vm.name

    # -- reading --------------------------------------------------------------------------------------------------

    def query(
        self,
        *,
        vm: str | None = None,
        caller: str | None = None,
        since: datetime | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> AuditPageResult:
        """One page: newest first (below ``before``), or oldest first above ``after``; see ``AuditQuery``."""
        if before is not None and after is not None:
            raise Invalid("give before (older entries) or after (newer entries), not both")
        if not 1 <= limit <= PAGE_MAX:
            raise Invalid(f"limit must be between 1 and {PAGE_MAX}, got {limit}")
        base = self.filter(vm=vm, caller=caller, since=since)
        found = self._store.find(replace(base, before=before, after=after, limit=limit + 1))
        entries, more = found[:limit], len(found) > limit
        if after is not None:
            return AuditPageResult(entries, None, entries[-1].id if entries else after)
        return AuditPageResult(entries, entries[-1].id if more else None, entries[0].id if entries else None)

    def filter(self, *, vm: str | None = None, caller: str | None = None, since: datetime | None = None) -> AuditQuery:
        """Entries about VM ``vm`` (its id or name now, or the name or id an entry was written with: a removed VM's
        entries stay findable), by ``caller``, from ``since`` on (UTC when it names no zone)."""
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        keys: tuple[str, ...] = ()
        if vm is not None:
            vm_id, name = self.target(vm)
            keys = tuple(dict.fromkeys(k for k in (vm_id, name, vm) if k is not None))
        return AuditQuery(vm=keys, caller=caller, since=since)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """A live subscription for the block: every entry recorded meanwhile is offered to it."""
        subscription = Subscription(self._queue_size)
        if self._closed:
            subscription.close()
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    async def follow(
        self, flt: AuditQuery = AuditQuery(), after: int | None = None
    ) -> AsyncGenerator[AuditEntry, None]:
        """Entries matching ``flt`` as they are recorded, until ``close()``. With ``after`` (an id) or
        ``flt.since``, the stored ones after it come first. A gap a slow reader's queue had is read from the
        store, so nothing stored is skipped and nothing is given twice."""
        last = after if after is not None else (0 if flt.since is not None else None)
        while True:
            with self.subscribe() as subscription:  # before reading the store: nothing falls between the two
                if last is not None:
                    async for stored in self._stored(flt, last):
                        yield stored
                        last = stored.id
                try:
                    while (entry := await subscription.get()) is not None:
                        if (last is None or (entry.id or 0) > last) and flt.matches(entry):
                            yield entry
                        last = max(last or 0, entry.id or 0)
                    return
                except Lagged as lag:
                    log.info("audit follower fell behind by %d entries; reading them from the store", lag.lost)
                    last = last or 0

    async def _stored(self, flt: AuditQuery, after: int) -> AsyncIterator[AuditEntry]:
        while page := self._store.find(replace(flt, after=after, limit=_REPLAY_PAGE)):
            for entry in page:
                yield entry
            after = page[-1].id or after
            await asyncio.sleep(0)  # a long replay shares the loop

    def close(self) -> None:
        """End every live reader (nexusd is shutting down): their streams finish instead of holding it up."""
        self._closed = True
        for subscription in self._subscriptions:
            subscription.close()

    # -- retention ------------------------------------------------------------------------------------------------

    async def prune(self) -> int:
        """Remove entries older than ``audit_retention_days`` (none when it is 0); how many went."""
        days = self._settings.int_value("audit_retention_days")
        if days == 0:
            return 0
        cutoff = self._now() - timedelta(days=days)
        removed = 0
        while (batch := self._store.prune(cutoff, _PRUNE_BATCH)) > 0:
            removed += batch
            await asyncio.sleep(0)
        if removed:
            log.info("audit log: removed %d entries older than %d days", removed, days)
        return removed

    async def retain(self, every_s: float = PRUNE_EVERY_S) -> None:
        """Prune now and every ``every_s`` until cancelled (a task the daemon owns)."""
        while True:
            try:
                await self.prune()
            except NexusError as exc:  # the store was busy or full: the next round tries again
                log.warning("audit log: pruning failed: %s", exc)
            await asyncio.sleep(every_s)
