"""Host side of the guest link: byte streams to agent ports and JSON-RPC over them."""

from nexus.channel.rpc import (
    ChannelClosed,
    ChannelError,
    ChannelTimeout,
    NotificationHandler,
    ProgressHandler,
    RemoteError,
    RpcPeer,
)
from nexus.channel.transport import connect_peer

__all__ = [
    "ChannelClosed",
    "ChannelError",
    "ChannelTimeout",
    "NotificationHandler",
    "ProgressHandler",
    "RemoteError",
    "RpcPeer",
    "connect_peer",
]
