"""Archive sessions on the MCP stream: directory trees moved as tar streams, chunk by chunk.

These are JSON-RPC methods of the agent's MCP port beside the MCP ones (as ``nexus/echo``), not tools: they are
plumbing for the host's ``vm cp -r`` and ``/v1/vms/{ref}/archive``, not something a model should call. Data
travels base64-encoded, at most ``ARCHIVE_CHUNK_BYTES`` per message; the host keeps one call of a session in
flight, so memory on both sides stays at a few chunks whatever the tree's size.

- ``nexus/archive/pack`` ``{"path"}`` → ``{"session", "type"}``: the agent starts packing ``path`` (a file or a
  directory, its top-level entry named after it) as a tar stream.
- ``nexus/archive/read`` ``{"session"}`` → ``{"data", "eof"}``: the next chunk; the session ends with ``eof``.
- ``nexus/archive/unpack`` ``{"path", "cp"}`` → ``{"session"}``: the agent starts unpacking a tar stream into
  the directory ``path`` (made if missing); with ``cp``, ``cp -r`` placement (:func:`cp_destination`).
- ``nexus/archive/write`` ``{"session", "offset", "data"}`` → ``{"received"}``: the next chunk, at ``offset``.
- ``nexus/archive/finish`` ``{"session"}`` → the unpack's counts: the stream is complete, the session ends.
- ``nexus/archive/close`` ``{"session"}`` → ``{"closed"}``: the host gives up on a session (either kind).

A member the unpacker refuses (``tarunpack``'s rules) is ``INVALID_PARAMS`` naming the member; a filesystem
failure is ``ARCHIVE_FAILED``. A session the host abandons ends after ``ARCHIVE_IDLE_S`` without a call, and
when its connection ends.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = [
    "ARCHIVE_CHUNK_BYTES",
    "ARCHIVE_CLOSE_METHOD",
    "ARCHIVE_FAILED",
    "ARCHIVE_FINISH_METHOD",
    "ARCHIVE_IDLE_S",
    "ARCHIVE_METHODS",
    "ARCHIVE_PACK_METHOD",
    "ARCHIVE_READ_METHOD",
    "ARCHIVE_UNPACK_METHOD",
    "ARCHIVE_WRITE_METHOD",
    "ArchiveError",
    "cp_destination",
]

ARCHIVE_CHUNK_BYTES: Final = 1024 * 1024
ARCHIVE_IDLE_S: Final = 120.0
ARCHIVE_FAILED: Final = -32000  # JSON-RPC's implementation-defined server error range

ARCHIVE_PACK_METHOD: Final = "nexus/archive/pack"
ARCHIVE_READ_METHOD: Final = "nexus/archive/read"
ARCHIVE_UNPACK_METHOD: Final = "nexus/archive/unpack"
ARCHIVE_WRITE_METHOD: Final = "nexus/archive/write"
ARCHIVE_FINISH_METHOD: Final = "nexus/archive/finish"
ARCHIVE_CLOSE_METHOD: Final = "nexus/archive/close"
ARCHIVE_METHODS: Final = frozenset(
    {
        ARCHIVE_PACK_METHOD,
        ARCHIVE_READ_METHOD,
        ARCHIVE_UNPACK_METHOD,
        ARCHIVE_WRITE_METHOD,
        ARCHIVE_FINISH_METHOD,
        ARCHIVE_CLOSE_METHOD,
    }
)


class ArchiveError(Exception):
    """An archive that cannot be packed or unpacked as asked: an unsafe member, a path that is not there.
    The message says which member or path, and why."""


def cp_destination(path: str) -> tuple[str, str | None]:
    """Where ``cp -r SRC path`` puts an archive of SRC: ``(directory to unpack into, new name of the archive's
    top-level entry or None)``. An existing directory receives the entry under its own name; any other path
    becomes the entry (its parent is made if missing)."""
    path = os.path.normpath(path)
    if os.path.isdir(path):
        return path, None
    parent, name = os.path.split(path)
    return parent or ".", name
