"""The ``GuestLink`` port over an ``RpcPeer``: the one place where channel faults become domain errors, as httpx
maps httpcore's exceptions in one context manager. Services see only ``nexus.domain`` errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from nexus.channel.rpc import ChannelClosed, ChannelError, ChannelTimeout, RemoteError, RpcPeer
from nexus.channel.transport import connect_peer
from nexus.domain import (
    GuestError,
    GuestLink,
    GuestPort,
    Invalid,
    NotificationHandler,
    ProgressHandler,
    Unavailable,
    VmProcess,
)
from nexus.protocol import INVALID_PARAMS, METHOD_NOT_FOUND, TOOLS_CALL_METHOD


@contextlib.contextmanager
def map_channel_errors(vm_name: str, what: str) -> Iterator[None]:
    """Raise the domain error for a channel fault during ``what`` (a method, or a tool's name) on VM ``vm_name``."""
    try:
        yield
    except RemoteError as exc:
        if exc.code == INVALID_PARAMS:
            raise Invalid(f"{what}: {exc.message}") from exc
        if exc.code == METHOD_NOT_FOUND:
            raise Unavailable(
                f"VM {vm_name}: its agent does not know {what} (built before it existed): rebuild its image"
            ) from exc
        raise GuestError(f"{what}: {exc.message}") from exc
    except ChannelTimeout as exc:
        raise Unavailable(f"VM {vm_name}: {what} got no answer in time ({exc})") from exc
    except ChannelClosed as exc:
        raise Unavailable(f"VM {vm_name} went away during {what}: {exc}") from exc
    except ChannelError as exc:
        raise Unavailable(f"VM {vm_name}: {exc}") from exc


class Link:
    """A ``GuestLink``: the VM's name, for messages, and its peer."""

    def __init__(self, peer: RpcPeer, vm_name: str) -> None:
        self._peer = peer
        self._vm_name = vm_name

    @property
    def closed(self) -> bool:
        return self._peer.closed

    @property
    def close_reason(self) -> str:
        return self._peer.close_reason

    async def wait_closed(self) -> None:
        await self._peer.wait_closed()

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = 30.0,
        on_progress: ProgressHandler | None = None,
    ) -> Any:
        name = (params or {}).get("name") if method == TOOLS_CALL_METHOD else None
        with map_channel_errors(self._vm_name, name if isinstance(name, str) else method):
            return await self._peer.call(method, params, timeout_s, on_progress)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        with map_channel_errors(self._vm_name, method):
            await self._peer.notify(method, params)

    async def close(self, reason: str = "closed") -> None:
        await self._peer.close(reason)


async def open_link(
    process: VmProcess,
    port: GuestPort,
    vm_name: str,
    on_notification: NotificationHandler | None,
    timeout_s: float,
) -> GuestLink:
    """A ``GuestConnector``: a link to ``port`` of the guest run by ``process``; Unavailable past ``timeout_s``."""
    with map_channel_errors(vm_name, f"opening its {port} port"):
        peer = await connect_peer(process, port, vm_name, on_notification, timeout_s)
    return Link(peer, vm_name)
