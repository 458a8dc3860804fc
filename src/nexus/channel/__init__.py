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
from nexus.channel.vsock import (
    GuestListener,
    VsockError,
    VsockHandshakeError,
    VsockNotListening,
    connect_hybrid,
    guest_listener_path,
)

__all__ = [
    "ChannelClosed",
    "ChannelError",
    "ChannelTimeout",
    "GuestListener",
    "NotificationHandler",
    "ProgressHandler",
    "RemoteError",
    "RpcPeer",
    "VsockError",
    "VsockHandshakeError",
    "VsockNotListening",
    "connect_hybrid",
    "connect_peer",
    "guest_listener_path",
]
