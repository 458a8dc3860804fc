"""Who this agent is: version, image id, boot time, uptime - the facts behind ``nexus/hello``.

Clocks: uptime is CLOCK_BOOTTIME (counts suspend), boot time is wall clock minus uptime.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from nexus import __version__
from nexus.protocol import Hello

__all__ = ["boot_time", "make_hello", "read_image_id", "uptime_s"]

log = logging.getLogger("nexus.agent")


def uptime_s() -> float:
    """Seconds since the guest booted."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_time() -> float:
    """Epoch seconds at which the guest booted."""
    return time.time() - uptime_s()


def read_image_id(path: str) -> str | None:
    """The ``id`` field of the image manifest; None when the file is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read image manifest %s: %s", path, exc)
        return None
    image_id = data.get("id") if isinstance(data, dict) else None
    return image_id if isinstance(image_id, str) else None


def make_hello(image_id: str | None) -> Hello:
    return Hello(
        agent_version=__version__,
        image_id=image_id,
        boot_time=round(boot_time(), 3),
        hostname=socket.gethostname(),
        pid=os.getpid(),
    )
