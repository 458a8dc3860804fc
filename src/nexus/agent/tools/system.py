"""The system_info tool: what this guest is (hostname, kernel, OS, agent) and how it is doing (uptime,
load, memory, root filesystem). Read-only; every probe that fails is reported as null, never an error."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from typing import Any

from nexus import __version__
from nexus.agent.identity import boot_time, uptime_s
from nexus.agent.tools.base import Tool, ToolContext, ToolResult, check_keys

__all__ = ["system_info_tool"]


def _meminfo() -> dict[str, int]:
    """/proc/meminfo values in bytes (the file gives kB)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def _os_pretty_name() -> str | None:
    with contextlib.suppress(OSError):
        return platform.freedesktop_os_release().get("PRETTY_NAME")
    return None


def _disk(path: str) -> dict[str, Any] | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    return {"path": path, "total_bytes": total, "free_bytes": free, "used_bytes": total - st.f_bfree * st.f_frsize}


def _mib(value: Any) -> str:
    return f"{value / 2**20:.0f} MiB" if isinstance(value, int) else "?"


def _summary(info: dict[str, Any]) -> str:
    disk = info["disk"] or {}
    return "\n".join(
        (
            f"{info['hostname']}: {info['os'] or 'unknown OS'}, kernel {info['kernel']} ({info['machine']})",
            f"cpus {info['cpu_count']}, load {info['load_avg']}, uptime {info['uptime_s']:.0f} s",
            f"memory {_mib(info['mem_available_bytes'])} available of {_mib(info['mem_total_bytes'])}",
            f"disk / {_mib(disk.get('free_bytes'))} free of {_mib(disk.get('total_bytes'))}",
            f"agent {info['agent_version']} on Python {info['python_version']}, image {info['image_id']}",
        )
    )


def system_info_tool(image_id: str | None) -> Tool:
    def system_info(args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        check_keys(args, ())
        mem = _meminfo()
        uname = os.uname()
        load: list[float] | None = None
        with contextlib.suppress(OSError):
            load = [round(x, 2) for x in os.getloadavg()]
        structured = {
            "hostname": socket.gethostname(),
            "kernel": uname.release,
            "machine": uname.machine,
            "os": _os_pretty_name(),
            "uptime_s": round(uptime_s(), 3),
            "boot_time": round(boot_time(), 3),
            "cpu_count": os.cpu_count(),
            "load_avg": load,
            "mem_total_bytes": mem.get("MemTotal"),
            "mem_available_bytes": mem.get("MemAvailable"),
            "disk": _disk("/"),
            "agent_version": __version__,
            "python_version": platform.python_version(),
            "image_id": image_id,
        }
        return ToolResult.ok(structured, _summary(structured))

    return Tool(
        name="system_info",
        title="System info",
        description=(
            "Describe the VM: hostname, kernel, OS, CPU count, load, memory, root disk usage, uptime, "
            "image id and agent version."
        ),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        handler=system_info,
        read_only=True,
        idempotent=True,
    )
