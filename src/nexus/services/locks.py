"""One lock per VM for everything that touches its process or its drives: start, stop, pause, resume, remove,
snapshot, rollback, clone (of the source), and attach, detach and resize of its drives.

The lock is taken without waiting: a VM busy with one operation refuses another at once with Conflict (409),
naming what it is busy with, so two requests never interleave silently and no request queues behind a boot.
State checks happen inside the lock. It is re-entrant for the task that holds it, so an operation made of
others (a rollback with restart stops, restores and starts) holds it throughout. Single-threaded (the event
loop): checking and taking it is one step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from nexus.domain import Conflict


@dataclass(slots=True)
class _Held:
    owner: asyncio.Task[object] | None
    what: str
    depth: int = 1


class VmLocks:
    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def busy(self, vm_id: str) -> str | None:
        """What the VM is busy with, or None."""
        held = self._held.get(vm_id)
        return held.what if held is not None else None

    @contextlib.contextmanager
    def hold(self, vm_id: str, vm_name: str, what: str) -> Iterator[None]:
        """Hold ``vm_id``'s lock for ``what`` (e.g. "starting"); Conflict at once when another task holds it."""
        try:
            owner = asyncio.current_task()
        except RuntimeError:  # no event loop in this thread: never re-entrant
            owner = None
        held = self._held.get(vm_id)
        if held is not None and (held.owner is not owner or owner is None):
            raise Conflict(f"VM {vm_name} is busy {held.what}; try again once that is done")
        if held is None:
            held = self._held[vm_id] = _Held(owner, what, 0)
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                del self._held[vm_id]


__all__ = ["VmLocks"]
