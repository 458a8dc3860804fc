"""Host side of the guest link: byte streams to agent ports and JSON-RPC over them."""

from nexus.channel.link import Link, map_channel_errors, open_link
from nexus.channel.rpc import (
    ChannelClosed,
    ChannelError,
    ChannelTimeout,
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
    "Link",
    "RemoteError",
    "RpcPeer",
    "VsockError",
    "VsockHandshakeError",
    "VsockNotListening",
    "connect_hybrid",
    "connect_peer",
    "guest_listener_path",
    "map_channel_errors",
    "open_link",
]
