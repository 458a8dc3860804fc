"""Opening a guest stream: ask the VMM process for a byte stream to an agent port, retrying while the VMM's
socket is not there yet, and wrap it in an ``RpcPeer``."""

from __future__ import annotations

import asyncio

from nexus.channel.rpc import ChannelError, NotificationHandler, RpcPeer
from nexus.domain import DriverError, GuestPort, VmProcess

RETRY_INTERVAL_S = 0.05


async def connect_peer(
    process: VmProcess,
    port: GuestPort,
    vm_name: str,
    on_notification: NotificationHandler | None,
    timeout_s: float,
) -> RpcPeer:
    """An ``RpcPeer`` on ``port`` of the guest run by ``process``; ChannelError after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if process.returncode is not None:
            raise ChannelError(f"{vm_name}: the VMM exited before its {port} port opened")
        try:
            reader, writer = await process.connect(port)
        except DriverError as exc:
            if loop.time() >= deadline:
                raise ChannelError(f"{vm_name}: {exc.message}") from exc
            await asyncio.sleep(RETRY_INTERVAL_S)
            continue
        return RpcPeer(reader, writer, f"{vm_name}/{port}", on_notification)
