"""nftables in-process: libnftables' JSON API through ctypes (``libnftables.so.1``, Debian package libnftables1).

``Nft.run`` sends one JSON batch (one transaction) and returns the parsed answer; ``NftFirewall`` is the
``Firewall`` port: it applies the table rendered by :mod:`nexus.net.ruleset`, tells whether it exists, and
removes it. No ``nft`` child process is ever run. Each call uses its own libnftables context (made and freed
within the call), so nothing is shared between calls or threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from collections.abc import Sequence
from ipaddress import IPv4Network
from typing import Any

from nexus.domain import DriverError, GuestGuard, PortForward, Unavailable
from nexus.net.ruleset import TABLE, RulesetConfig, forwards_sorted, listing, removal, render

LIBRARY = "libnftables.so.1"
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4
_NO_SUCH = "No such file or directory"


def _load(name: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise Unavailable(f"cannot load {name} ({exc}); install it: apt-get install libnftables1") from exc
    ptr, char_p, uint = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint
    for fn, restype, argtypes in (
        ("nft_ctx_new", ptr, [ctypes.c_uint32]),
        ("nft_ctx_free", None, [ptr]),
        ("nft_ctx_output_set_flags", None, [ptr, uint]),
        ("nft_ctx_buffer_output", ctypes.c_int, [ptr]),
        ("nft_ctx_buffer_error", ctypes.c_int, [ptr]),
        ("nft_ctx_get_output_buffer", char_p, [ptr]),
        ("nft_ctx_get_error_buffer", char_p, [ptr]),
        ("nft_run_cmd_from_buffer", ctypes.c_int, [ptr, char_p]),
    ):
        func = getattr(lib, fn)
        func.restype = restype
        func.argtypes = argtypes
    return lib


class NftError(DriverError):
    """libnftables refused a batch; the message is nft's own."""


class Nft:
    """One loaded libnftables."""

    def __init__(self, library: str = LIBRARY) -> None:
        self._lib = _load(library)

    def run(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Run one JSON batch as a transaction; the JSON answer (``{}`` for commands that print nothing)."""
        lib = self._lib
        ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise DriverError("libnftables could not make a context")
        try:
            lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            code = lib.nft_run_cmd_from_buffer(ctx, json.dumps(batch).encode())
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        finally:
            lib.nft_ctx_free(ctx)
        if code != 0:
            raise NftError(f"nftables refused the change: {' '.join(err.split()) or f'error {code}'}")
        try:
            answer: dict[str, Any] = json.loads(out) if out.strip() else {}
        except ValueError as exc:
            raise DriverError(f"libnftables answered with malformed JSON: {out[:200]!r}") from exc
        return answer


class NftFirewall:
    """The ``Firewall`` port on libnftables: nexusd's one table, rebuilt whole each time."""

    def __init__(self, nft: Nft | None = None, table: str = TABLE) -> None:
        self._nft = nft
        self._table = table

    @property
    def nft(self) -> Nft:
        if self._nft is None:  # loaded on first need: a nexusd without networked VMs never needs the library
            self._nft = Nft()
        return self._nft

    def apply(
        self,
        bridge: str,
        subnet: IPv4Network,
        forwards: Sequence[PortForward],
        guests: Sequence[GuestGuard] = (),
        proxy_port: int | None = None,
    ) -> None:
        guarded = tuple(sorted(guests, key=lambda g: g.tap))
        config = RulesetConfig(bridge, subnet, forwards_sorted(forwards), self._table, guarded, proxy_port)
        self.nft.run(render(config))

    def listed(self) -> dict[str, Any] | None:
        """The table as libnftables lists it; None when there is none."""
        try:
            return self.nft.run(listing(self._table))
        except NftError as exc:
            if _NO_SUCH in exc.message:
                return None
            raise

    def exists(self) -> bool:
        return self.listed() is not None

    def remove(self) -> bool:
        existed = self.exists()
        self.nft.run(removal(self._table))
        return existed
