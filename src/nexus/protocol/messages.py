"""The nexus/* messages of the control stream: hello, heartbeat, ping and echo.

Wire shapes (newline-delimited JSON-RPC 2.0, see ``nexus.protocol.jsonrpc``):

* agent → host notification ``nexus/hello`` — params ``Hello``: sent whenever a host side connects.
* agent → host notification ``nexus/heartbeat`` — params ``Heartbeat``: every ``heartbeat_s`` seconds.
* host → agent request ``nexus/hello`` — result ``Hello`` (ask again, e.g. after a silent reconnect).
* host → agent request ``nexus/ping`` — result ``{"uptime_s": float}``.
* host → agent request ``nexus/echo`` — result is the request's params unchanged (``null`` when absent);
  served on the MCP stream too, as the raw-channel baseline for benchmarks.

Parsing is lenient about extra keys (newer agents may add fields) and strict about the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ECHO_METHOD",
    "HEARTBEAT_METHOD",
    "HELLO_METHOD",
    "PING_METHOD",
    "Heartbeat",
    "Hello",
]

HELLO_METHOD: Final = "nexus/hello"
HEARTBEAT_METHOD: Final = "nexus/heartbeat"
ECHO_METHOD: Final = "nexus/echo"
PING_METHOD: Final = "nexus/ping"


def _params(params: Any, what: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise ValueError(f"{what} params must be an object, got {type(params).__name__}")
    return params


def _number(params: dict[str, Any], key: str, what: str) -> float:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}.{key} must be a number, got {value!r}")
    return float(value)


def _integer(params: dict[str, Any], key: str, what: str) -> int:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}.{key} must be an integer, got {value!r}")
    return value


def _string(params: dict[str, Any], key: str, what: str) -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{what}.{key} must be a string, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Hello:
    """The agent announcing itself; its arrival is what makes a VM ``ready``."""

    agent_version: str
    image_id: str | None
    boot_time: float
    """Epoch seconds at which the guest booted."""
    hostname: str
    pid: int
    """The agent's process id inside the guest."""

    def to_params(self) -> dict[str, Any]:
        return {
            "agent_version": self.agent_version,
            "image_id": self.image_id,
            "boot_time": self.boot_time,
            "hostname": self.hostname,
            "pid": self.pid,
        }

    @classmethod
    def from_params(cls, params: Any) -> Hello:
        p = _params(params, "hello")
        image_id = p.get("image_id")
        if image_id is not None and not isinstance(image_id, str):
            raise ValueError(f"hello.image_id must be a string or null, got {image_id!r}")
        return cls(
            agent_version=_string(p, "agent_version", "hello"),
            image_id=image_id,
            boot_time=_number(p, "boot_time", "hello"),
            hostname=_string(p, "hostname", "hello"),
            pid=_integer(p, "pid", "hello"),
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Proof of life; ``seq`` grows by one per heartbeat for the agent's whole life (starts at 1)."""

    seq: int
    uptime_s: float
    """Seconds since the guest booted (CLOCK_BOOTTIME)."""

    def to_params(self) -> dict[str, Any]:
        return {"seq": self.seq, "uptime_s": self.uptime_s}

    @classmethod
    def from_params(cls, params: Any) -> Heartbeat:
        p = _params(params, "heartbeat")
        return cls(seq=_integer(p, "seq", "heartbeat"), uptime_s=_number(p, "uptime_s", "heartbeat"))
