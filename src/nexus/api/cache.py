"""Serialised responses kept while the store has not changed: a listing of many VMs is built once per change of
the database, not once per request (``python -m bench api``). Bounded; a key is the request's filters."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

MAX_ENTRIES = 64


class ResponseCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[Hashable, tuple[int, bytes]] = OrderedDict()
        self._max = max_entries

    def get(self, key: Hashable, generation: int, build: Callable[[], bytes]) -> bytes:
        """The body for ``key`` as built under ``generation``; built anew when the store changed since."""
        kept = self._entries.get(key)
        if kept is not None and kept[0] == generation:
            self._entries.move_to_end(key)
            return kept[1]
        body = build()
        self._entries[key] = (generation, body)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return body
