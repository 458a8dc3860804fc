"""Opening a guest stream: ask the VMM process for a byte stream to an agent port, retrying while the VMM's
socket is not there yet, and wrap it in an ``RpcPeer``."""

from __future__ import annotations

from nexus.channel.rpc import ChannelError, RpcPeer
from nexus.domain import DriverError, GuestPort, NotificationHandler, VmProcess
from nexus.domain.retry import retry

RETRY_INTERVAL_S = 0.05


async def connect_peer(
    process: VmProcess,
    port: GuestPort,
    vm_name: str,
    on_notification: NotificationHandler | None,
    timeout_s: float,
) -> RpcPeer:
    """An ``RpcPeer`` on ``port`` of the guest run by ``process``; ChannelError after ``timeout_s``."""

    def exited() -> ChannelError | None:
        if process.exit_status is None:
            return None
        return ChannelError(f"{vm_name}: the VMM exited before its {port} port opened")

    try:
        reader, writer = await retry(
            lambda: process.connect(port),
            retry_on=DriverError,
            timeout_s=timeout_s,
            interval_s=RETRY_INTERVAL_S,
            give_up=exited,
        )
    except DriverError as exc:
        raise ChannelError(f"{vm_name}: {exc.message}") from exc
    return RpcPeer(reader, writer, f"{vm_name}/{port}", on_notification)
