"""Working inside a ready VM through its agent: MCP tool calls, command execution with streamed output, and
file transfer in chunks. The link's failures arrive as domain errors (``nexus.channel.link`` maps them)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nexus.domain import GuestError, GuestLink, Invalid, VmStore
from nexus.protocol import FILE_CHUNK_BYTES, STREAM_META_KEY
from nexus.services import archive
from nexus.services.runtime import VmRuntime
from nexus.services.terminals import Terminal, TerminalSpec, open_terminal

CHUNK_BYTES = FILE_CHUNK_BYTES  # one file_read/file_write message carries at most this much data
TOOL_TIMEOUT_S = 120.0
EXEC_GRACE_S = 30.0  # the call waits this long past the command's own timeout


@dataclass(frozen=True, slots=True)
class OutputChunk:
    stream: str  # stdout or stderr
    data: str


@dataclass(frozen=True, slots=True)
class FileChunk:
    data: bytes
    size: int  # the whole file's size
    eof: bool


async def call_tool(
    link: GuestLink,
    name: str,
    arguments: dict[str, Any],
    timeout_s: float = TOOL_TIMEOUT_S,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One ``tools/call`` on an open MCP link; the MCP result as the agent gave it (``isError`` results included)."""
    result = await link.call("tools/call", {"name": name, "arguments": arguments}, timeout_s, on_progress)
    if not isinstance(result, dict):
        raise GuestError(f"{name}: the agent sent a malformed result")
    return result


def structured(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """A tool result's structured content; GuestError with the tool's own message when it failed."""
    content = result.get("structuredContent")
    if result.get("isError"):
        text = " ".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))
        raise GuestError(text or f"{name} failed")
    if not isinstance(content, dict):
        raise GuestError(f"{name}: the agent sent no structured result")
    return content


class GuestUse(Protocol):
    """Who hears of each use of a guest (idle suspend): ``touch`` on every use, ``wake`` before it."""

    def touch(self, vm_id: str) -> None: ...
    async def wake(self, vm_id: str) -> None: ...


class GuestService:
    def __init__(self, store: VmStore, runtime: VmRuntime) -> None:
        self._store = store
        self._runtime = runtime
        self._use: GuestUse | None = None

    def report_use(self, use: GuestUse) -> None:
        """Tell ``use`` of every use (set at wiring: the lifetime service is built on services built on this)."""
        self._use = use

    async def _link(self, ref: str) -> GuestLink:
        vm_id = self._store.get(ref).id
        if self._use is not None:
            self._use.touch(vm_id)
            await self._use.wake(vm_id)
        return self._runtime.mcp(vm_id)

    async def call_tool(
        self,
        ref: str,
        name: str,
        arguments: dict[str, Any],
        timeout_s: float = TOOL_TIMEOUT_S,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """One ``tools/call``; the MCP result as the agent gave it (``isError`` results included)."""
        return await call_tool(await self._link(ref), name, arguments, timeout_s, on_progress)

    async def open_terminal(self, ref: str, spec: TerminalSpec) -> Terminal:
        """A new PTY session in the VM (``services.terminals``); the caller closes it."""
        link = await self._link(ref)
        use, vm_id = self._use, self._store.get(ref).id
        return await open_terminal(link, spec, on_input=(lambda: use.touch(vm_id)) if use is not None else None)

    async def list_tools(self, ref: str) -> list[dict[str, Any]]:
        result = await (await self._link(ref)).call("tools/list", {})
        tools: list[dict[str, Any]] = result.get("tools", []) if isinstance(result, dict) else []
        return tools

    async def _structured(self, ref: str, name: str, arguments: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return structured(name, await self.call_tool(ref, name, arguments, **kw))

    async def exec(
        self,
        ref: str,
        command: str | list[str],
        on_output: Callable[[OutputChunk], None],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout_s: float = 600.0,
    ) -> dict[str, Any]:
        """Run a command; all of its output is passed to ``on_output`` as it arrives. Returns the agent's result:
        exit_code, timed_out, duration_s, and stdout/stderr as a model should see them (head and tail of long
        output, with stdout_bytes/stderr_bytes the full sizes, ``truncated`` when they are cut); ``streamed`` says
        whether ``on_output`` got all of it (an agent that does not stream hands over only what it kept)."""
        args: dict[str, Any] = {"command": command, "timeout_s": timeout_s}
        for key, value in (("cwd", cwd), ("env", env), ("stdin", stdin)):
            if value is not None:
                args[key] = value
        streamed = False

        def progress(params: dict[str, Any]) -> None:
            nonlocal streamed
            meta = params.get("_meta") or {}
            message = params.get("message")
            if isinstance(message, str) and STREAM_META_KEY in meta:
                streamed = True
                on_output(OutputChunk(str(meta[STREAM_META_KEY]), message))

        result = await self._structured(
            ref, "run_command", args, timeout_s=timeout_s + EXEC_GRACE_S, on_progress=progress
        )
        if not streamed:  # an agent that does not stream: hand over the collected output instead
            for stream in ("stdout", "stderr"):
                if result.get(stream):
                    on_output(OutputChunk(stream, str(result[stream])))
        return {**result, "streamed": streamed}

    async def read_file(self, ref: str, path: str, offset: int, length: int = CHUNK_BYTES) -> FileChunk:
        if offset < 0 or not 0 < length <= CHUNK_BYTES:
            raise Invalid(f"offset must be >= 0 and length 1..{CHUNK_BYTES}")
        out = await self._structured(
            ref, "file_read", {"path": path, "encoding": "base64", "offset": offset, "length": length}
        )
        return FileChunk(base64.b64decode(out["content"]), int(out["size"]), bool(out["eof"]))

    async def write_file(self, ref: str, path: str, data: bytes, append: bool, mode: str | None = None) -> int:
        """Write (or append) one chunk; returns the file's size afterwards."""
        if len(data) > CHUNK_BYTES:
            raise Invalid(f"one write carries at most {CHUNK_BYTES} bytes")
        args: dict[str, Any] = {
            "path": path,
            "content": base64.b64encode(data).decode(),
            "encoding": "base64",
            "append": append,
        }
        if mode is not None:
            args["mode"] = mode
        out = await self._structured(ref, "file_write", args)
        return int(out["size"])

    async def read_archive(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """The tar stream of the guest's ``path`` (``services.archive.download``)."""
        return await archive.download(await self._link(ref), path)

    async def write_archive(self, ref: str, path: str, body: AsyncIterable[bytes], cp: bool) -> dict[str, Any]:
        """Unpack the tar stream ``body`` into the guest's ``path`` (``services.archive.upload``)."""
        return await archive.upload(await self._link(ref), path, body, cp)
