"""The slice of the Model Context Protocol the guest agent speaks on its MCP stream.

Only names and version negotiation live here; the server is ``nexus.agent.mcp_server``. Versions are
those reachable through the ``initialize`` handshake (the official Python SDK 2.x offers
``2025-11-25``; its ``mode="auto"`` first probes ``server/discover``, which the agent answers with
-32601 so the SDK falls back to the handshake). The 2026-07-28 per-request-envelope era is not spoken.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "AGENT_INSTRUCTIONS",
    "CANCELLED_NOTIFICATION",
    "FILE_CHUNK_BYTES",
    "INITIALIZED_NOTIFICATION",
    "INITIALIZE_METHOD",
    "MCP_LATEST_PROTOCOL_VERSION",
    "MCP_SUPPORTED_PROTOCOL_VERSIONS",
    "PING_METHOD",
    "PROGRESS_NOTIFICATION",
    "SERVER_NAME",
    "STREAM_META_KEY",
    "TOOLS_CALL_METHOD",
    "TOOLS_LIST_METHOD",
    "command_text",
    "negotiate_protocol_version",
]

MCP_SUPPORTED_PROTOCOL_VERSIONS: Final[tuple[str, ...]] = (
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
)
"""Oldest to newest."""

MCP_LATEST_PROTOCOL_VERSION: Final = MCP_SUPPORTED_PROTOCOL_VERSIONS[-1]

SERVER_NAME: Final = "nexus-agent"

FILE_CHUNK_BYTES: Final = 512 * 1024
"""The most one file_read returns and one chunked transfer moves: base64-encoded, a result carrying it still fits
the 1 MiB an MCP client takes in one message."""

AGENT_INSTRUCTIONS: Final = (
    "These tools act inside one Nexus microVM, a Linux machine of your own: paths are paths inside the VM and "
    "commands run there as the agent's user. Results are sized for you: file_read returns 256 KiB unless you ask "
    "for more (page with offset until eof), list_dir pages with offset/limit, and run_command keeps the start and "
    "the end of long output (redirect to a file and file_read it for all of it). Use encoding base64 with "
    "file_read/file_write for binary data. run_command waits for the command; start a process meant to keep "
    "running (a server, a long build) with process_start (optionally waiting until a port accepts or a log line "
    "appears), then read it with process_output and stop it with process_signal: it outlives the call. For an "
    "interactive program (a REPL, a debugger, an editor, a command that asks questions) open a terminal with "
    "shell_open, type with shell_write (text and keys such as Enter or C-c), read with shell_read (mode screen "
    "for full-screen programs) and end it with shell_close."
)

INITIALIZE_METHOD: Final = "initialize"
INITIALIZED_NOTIFICATION: Final = "notifications/initialized"
PING_METHOD: Final = "ping"
TOOLS_LIST_METHOD: Final = "tools/list"
TOOLS_CALL_METHOD: Final = "tools/call"
PROGRESS_NOTIFICATION: Final = "notifications/progress"
CANCELLED_NOTIFICATION: Final = "notifications/cancelled"

STREAM_META_KEY: Final = "nexus/stream"
"""Key in a progress notification's ``_meta`` naming the stream of its chunk: "stdout" or "stderr"."""


def negotiate_protocol_version(requested: Any) -> str:
    """The client's requested version when the agent supports it, else the agent's latest."""
    if isinstance(requested, str) and requested in MCP_SUPPORTED_PROTOCOL_VERSIONS:
        return requested
    return MCP_LATEST_PROTOCOL_VERSION


BACKGROUND_NOTE: Final = (
    "note: a background process still holds the command's output; it keeps running, its further output is "
    "discarded. Start long-running processes with process_start, which keeps their output"
)


def command_text(result: dict[str, Any]) -> str:
    """What a model reads of a run_command result (the agent's, or nexusd's vm_exec): the verdict first, then each
    stream that said something."""
    if result.get("timed_out"):
        verdict = f"timed out after {result.get('duration_s', 0):.0f} s: process group killed"
    else:
        verdict = f"exit code {result.get('exit_code')} in {result.get('duration_s', 0):.2f} s"
    parts = [verdict]
    for name in ("stdout", "stderr"):
        text = result.get(name)
        if isinstance(text, str) and text:
            parts.append(f"--- {name} ---\n{text.rstrip(chr(10))}")
    if len(parts) == 1:
        parts.append("(no output)")
    if result.get("background"):
        parts.append(BACKGROUND_NOTE)
    return "\n".join(parts)
