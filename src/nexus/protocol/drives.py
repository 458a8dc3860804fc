"""Data drives and filesystem freezing on the wire, shared by host and agent (standard library only).

* Kernel command line ``nexus.mounts=<serial>:<path>[,<serial>:<path>...]``: the agent mounts the virtio-blk disk
  whose ``/sys/block/vdX/serial`` is ``<serial>`` at ``<path>`` before it says hello. Serials are drive ids
  (``[A-Za-z0-9_]``, at most 20 bytes: the virtio-blk id field); paths are absolute and hold no ``,`` ``:`` or
  whitespace (the host checks them when a drive is attached).
* host → agent request ``nexus/freeze`` — params ``{"timeout_s": float}``: sync, then FIFREEZE every data drive
  mount and ``/``; result ``{"frozen": [paths]}``. The agent thaws by itself after ``timeout_s`` so a host that
  died mid-snapshot cannot leave the guest frozen.
* host → agent request ``nexus/thaw`` — result ``{"thawed": [paths]}`` (empty when nothing was frozen).
"""

from __future__ import annotations

from typing import Final

__all__ = ["FREEZE_METHOD", "MOUNTS_ARG", "THAW_METHOD", "decode_mounts", "encode_mounts"]

MOUNTS_ARG: Final = "nexus.mounts"
FREEZE_METHOD: Final = "nexus/freeze"
THAW_METHOD: Final = "nexus/thaw"


def encode_mounts(mounts: list[tuple[str, str]]) -> str:
    """The ``nexus.mounts=...`` kernel argument for (serial, path) pairs."""
    return f"{MOUNTS_ARG}=" + ",".join(f"{serial}:{path}" for serial, path in mounts)


def decode_mounts(value: str) -> list[tuple[str, str]]:
    """(serial, path) pairs from the value of ``nexus.mounts``; malformed items are skipped."""
    pairs = []
    for item in value.split(","):
        serial, sep, path = item.partition(":")
        if sep and serial and path.startswith("/"):
            pairs.append((serial, path))
    return pairs
