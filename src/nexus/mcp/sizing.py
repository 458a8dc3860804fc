"""No tool result over what an MCP client takes in one message leaves nexusd.

The official SDK clients refuse a server-sent event over 1 MiB, and the tool result is one event. The agent's
defaults keep results far below that; a call that asked for the most of everything can still come near it, because
the result carries its payload twice (the text a text-only client shows a model, and the structured content that
Claude Code shows). Then the text copy is dropped first, and only a result too big even so becomes an ``isError``
result saying what to ask for instead. Pure: measures and rewrites dicts.
"""

from __future__ import annotations

import json
from typing import Any, Final

MAX_RESULT_BYTES: Final = 1024 * 1024 - 32 * 1024  # the client's 1 MiB per event, less room for the envelope


def message_bytes(result: dict[str, Any]) -> int:
    """A result's bytes as one JSON message carries it."""
    return len(json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode())


def fit(tool: str, result: dict[str, Any], limit: int = MAX_RESULT_BYTES) -> dict[str, Any]:
    """``result`` as it is when it fits in ``limit`` bytes of JSON, else slimmed, else an error result."""
    size = message_bytes(result)
    if size <= limit:
        return result
    if isinstance(result.get("structuredContent"), dict):
        note = f"[{tool}: a {size}-byte result; text copy dropped to fit one MCP message: read structuredContent]"
        slim = {**result, "content": [{"type": "text", "text": note}]}
        if message_bytes(slim) <= limit:
            return slim
    message = (
        f"{tool}: the result is {size} bytes, more than the {limit} bytes one MCP message carries; ask for less "
        "(file_read length, list_dir limit, run_command max_output_bytes) or write the data to a file and read it "
        "in pages"
    )
    return {"content": [{"type": "text", "text": message}], "structuredContent": {"error": message}, "isError": True}
