"""What every guest tool shares: the result shape, the error type, the call context, argument checks.

A tool is a plain function ``(arguments, context) -> ToolResult``. It raises ``ToolError`` for anything
the caller can fix (bad argument, missing file, ...); ``Toolbox.call`` turns that - and any ``OSError`` -
into an MCP tool result with ``isError: true`` so the model sees the message and can correct itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ProgressFn",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolHandler",
    "ToolResult",
    "arg_bool",
    "arg_choice",
    "arg_int",
    "arg_number",
    "arg_path",
    "arg_str",
    "check_keys",
]


class ToolError(Exception):
    """A failure the caller can act on; its message becomes the text of an ``isError`` result."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    structured: dict[str, Any]
    text: str
    is_error: bool = False

    @classmethod
    def ok(cls, structured: dict[str, Any], text: str) -> ToolResult:
        """A success. ``text`` is what a model reads: a rendering of the result, not its JSON again. Clients show a
        model one of the two (Claude Code the structured content, text-only clients the text), so both carry the
        payload; neither repeats the other's encoding."""
        return cls(structured=structured, text=text)

    @classmethod
    def error(cls, message: str) -> ToolResult:
        return cls(structured={"error": message}, text=message, is_error=True)

    def to_mcp(self) -> dict[str, Any]:
        """The ``tools/call`` result object."""
        return {
            "content": [{"type": "text", "text": self.text}],
            "structuredContent": self.structured,
            "isError": self.is_error,
        }


ProgressFn = Callable[[int, str, str], None]
"""``(progress, message, stream)``: progress strictly increases; stream is "stdout" or "stderr"."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Per-call context: cancellation (set by notifications/cancelled or a lost peer) and progress."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    progress: ProgressFn | None = None


ToolHandler = Callable[[dict[str, Any], ToolContext], ToolResult]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    handler: ToolHandler
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False

    def to_mcp(self) -> dict[str, Any]:
        """The entry of this tool in a ``tools/list`` result."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": self.input_schema,
            "annotations": {
                "title": self.title,
                "readOnlyHint": self.read_only,
                "destructiveHint": self.destructive,
                "idempotentHint": self.idempotent,
                "openWorldHint": False,
            },
        }


# --- argument checks ----------------------------------------------------------------------------------

_MISSING: Any = object()


def check_keys(args: dict[str, Any], allowed: Collection[str]) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ToolError(f"unknown argument(s): {', '.join(unknown)}; expected: {', '.join(sorted(allowed))}")


def _get(args: dict[str, Any], key: str, default: Any) -> Any:
    value = args.get(key)
    if value is None:
        if default is _MISSING:
            raise ToolError(f"missing required argument {key!r}")
        return default
    return value


def arg_str(args: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = _get(args, key, default)
    if value is not default and not isinstance(value, str):
        raise ToolError(f"argument {key!r} must be a string, got {type(value).__name__}")
    return value


def arg_path(args: dict[str, Any], key: str = "path") -> str:
    """A non-empty path; relative paths are taken from the agent's working directory (``/`` in the guest)."""
    value: str = arg_str(args, key)
    if not value or "\0" in value:
        raise ToolError(f"argument {key!r} must be a non-empty path without NUL bytes")
    return os.path.abspath(value)


def arg_bool(args: dict[str, Any], key: str, default: bool = False) -> bool:
    value = _get(args, key, default)
    if not isinstance(value, bool):
        raise ToolError(f"argument {key!r} must be a boolean, got {type(value).__name__}")
    return value


def arg_int(args: dict[str, Any], key: str, default: Any = _MISSING, minimum: int | None = None) -> Any:
    value = _get(args, key, default)
    if value is default:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ToolError(f"argument {key!r} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ToolError(f"argument {key!r} must be >= {minimum}, got {value}")
    return value


def arg_number(args: dict[str, Any], key: str, default: float, minimum: float, maximum: float) -> float:
    value = _get(args, key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError(f"argument {key!r} must be a number, got {value!r}")
    if not minimum < value <= maximum:
        raise ToolError(f"argument {key!r} must be > {minimum} and <= {maximum}, got {value}")
    return float(value)


def arg_choice(args: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = arg_str(args, key, default)
    if value not in choices:
        raise ToolError(f"argument {key!r} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)
