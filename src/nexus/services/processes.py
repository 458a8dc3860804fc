"""Background processes in a ready VM (the agent's ``process_*`` tools): start, list, look at one, read its output,
signal it, wait for it. The agent keeps them (they outlive calls, MCP sessions, nexusd and the agent itself); this
service only calls its tools and turns their refusals into the domain's errors: an unknown process is ``NotFound``
naming it, a name already taken or a process that is not running ``Conflict``, anything else the tool says
``GuestError`` (a readiness check that failed: its message carries the process's last output lines)."""

from __future__ import annotations

from typing import Any, Final

from nexus.domain import Conflict, GuestError, NotFound
from nexus.services.guest import TOOL_TIMEOUT_S, GuestService

START_GRACE_S: Final = 60.0  # past the readiness timeout: the supervisor's start, the kill and reap of an unready one
WAIT_GRACE_S: Final = 30.0


def _given(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class ProcessService:
    def __init__(self, guest: GuestService) -> None:
        self._guest = guest

    async def _call(self, ref: str, tool: str, arguments: dict[str, Any], timeout_s: float = TOOL_TIMEOUT_S) -> Any:
        result = await self._guest.call_tool(ref, tool, arguments, timeout_s)
        content = result.get("structuredContent")
        if result.get("isError"):
            text = " ".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))
            text = text.removeprefix(f"{tool}: ") or f"{tool} failed"
            code = content.get("code") if isinstance(content, dict) else None
            if code == "not_found":  # said for this edge: the tool's own words point a model at process_list
                raise NotFound(f"no process {arguments.get('process')!r} in VM {ref!r}")
            raise (Conflict if code == "conflict" else GuestError)(text)
        if not isinstance(content, dict):
            raise GuestError(f"{tool}: the agent sent no structured result")
        return content

    async def list(self, ref: str) -> list[dict[str, Any]]:
        processes: list[dict[str, Any]] = (await self._call(ref, "process_list", {}))["processes"]
        return processes

    async def start(self, ref: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """``arguments`` as ``process_start`` takes them; returns once the process runs (and is ready, when a
        readiness check was given)."""
        ready_s = float(arguments.get("ready_timeout_s") or 0)
        result: dict[str, Any] = await self._call(ref, "process_start", _given(**arguments), ready_s + START_GRACE_S)
        return result

    async def get(self, ref: str, process: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(ref, "process_wait", {"process": process, "timeout_s": 0})
        result.pop("timed_out", None)
        return result

    async def output(
        self, ref: str, process: str, offset: int | None, limit: int | None, tail: int | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            ref, "process_output", _given(process=process, offset=offset, limit=limit, tail=tail)
        )
        return result

    async def signal(self, ref: str, process: str, signal: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(ref, "process_signal", {"process": process, "signal": signal})
        return result

    async def wait(self, ref: str, process: str, timeout_s: float) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            ref, "process_wait", {"process": process, "timeout_s": timeout_s}, timeout_s + WAIT_GRACE_S
        )
        return result
