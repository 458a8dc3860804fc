"""Newline-delimited JSON-RPC 2.0: framing, message shapes and the standard error codes.

One message is one UTF-8 JSON object on one line (JSON escapes every newline inside strings, so a raw
``\\n`` only ever ends a message). Blank lines are ignored; a trailing ``\\r`` is tolerated. Lines longer
than ``MAX_LINE_BYTES`` raise ``FrameTooLarge`` once and are then skipped up to their newline, so one
oversized message never desynchronises the stream.

This module does no I/O of its own: ``LineReader`` wraps any ``read() -> bytes`` callable (``b""`` means
end of stream) and ``LineBuffer`` is the incremental splitter underneath it, usable from asyncio too.
Batches (JSON arrays) are not supported: MCP removed them in 2025-06-18, and the parser rejects them as
an invalid request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "JSONRPC_VERSION",
    "MAX_LINE_BYTES",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "ErrorObject",
    "FrameTooLarge",
    "InvalidMessage",
    "JsonRpcError",
    "LineBuffer",
    "LineReader",
    "Request",
    "RequestId",
    "Response",
    "decode_message",
    "encode_message",
    "error_response",
    "notification",
    "parse_message",
    "request",
    "result_response",
]

JSONRPC_VERSION: Final = "2.0"

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

MAX_LINE_BYTES: Final = 64 * 1024 * 1024
"""Largest accepted message line (without its newline): room for a 32 MiB file chunk in base64."""

RequestId = str | int


class FrameTooLarge(ValueError):
    """A line grew past the reader's limit; the rest of it is skipped."""

    def __init__(self, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(f"JSON-RPC message line of at least {size_bytes} bytes exceeds the {limit_bytes}-byte limit")
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class JsonRpcError(Exception):
    """An error to report as a JSON-RPC error object; raise it from a method handler."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            obj["data"] = self.data
        return obj


class InvalidMessage(JsonRpcError):
    """A line that is JSON but not a valid JSON-RPC 2.0 message; ``request_id`` is what to reply to."""

    def __init__(self, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(INVALID_REQUEST, message)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class ErrorObject:
    code: int
    message: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class Request:
    """A request (``id`` set) or a notification (``id`` is None)."""

    method: str
    params: dict[str, Any] | list[Any] | None = None
    id: RequestId | None = None

    @property
    def is_notification(self) -> bool:
        return self.id is None


@dataclass(frozen=True, slots=True)
class Response:
    """A result (``error`` is None) or an error response."""

    id: RequestId | None
    result: Any = None
    error: ErrorObject | None = None


# --- encoding -----------------------------------------------------------------------------------------


def encode_message(message: Mapping[str, Any]) -> bytes:
    """One message as compact UTF-8 JSON ending in ``b"\\n"``; raises ValueError for NaN/inf."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def decode_message(line: bytes | str) -> Any:
    """Parse one line of JSON; raises ``JsonRpcError(PARSE_ERROR)`` when it is not valid UTF-8 JSON."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise JsonRpcError(PARSE_ERROR, f"parse error: {exc}") from exc


def request(request_id: RequestId, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "id": request_id, "method": method}
    if params is not None:
        msg["params"] = dict(params)
    return msg


def notification(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": method}
    if params is not None:
        msg["params"] = dict(params)
    return msg


def result_response(request_id: RequestId | None, result: Any) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC_VERSION, "id": request_id, "result": result}


def error_response(request_id: RequestId | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {
        "jsonrpc": JSONRPC_VERSION,
        "id": request_id,
        "error": JsonRpcError(code, message, data).to_object(),
    }


# --- validation ---------------------------------------------------------------------------------------


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse_message(obj: Any) -> Request | Response:
    """Validate a decoded JSON value as one JSON-RPC 2.0 message; raises ``InvalidMessage``."""
    if isinstance(obj, list):
        raise InvalidMessage("batch requests are not supported")
    if not isinstance(obj, dict):
        raise InvalidMessage(f"a JSON-RPC message must be an object, got {type(obj).__name__}")
    raw_id = obj.get("id")
    reply_id: RequestId | None = raw_id if _valid_id(raw_id) else None
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        raise InvalidMessage('"jsonrpc" must be "2.0"', reply_id)
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or not method:
            raise InvalidMessage('"method" must be a non-empty string', reply_id)
        if "id" in obj and reply_id is None:
            raise InvalidMessage('"id" must be a string or an integer')
        params = obj.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise InvalidMessage('"params" must be an object or an array', reply_id)
        return Request(method=method, params=params, id=reply_id)
    if "result" in obj or "error" in obj:
        error = obj.get("error")
        if error is None:
            return Response(id=reply_id, result=obj.get("result"))
        if not isinstance(error, dict) or not isinstance(error.get("code"), int):
            raise InvalidMessage('"error" must be an object with an integer "code"', reply_id)
        return Response(
            id=reply_id,
            error=ErrorObject(code=error["code"], message=str(error.get("message", "")), data=error.get("data")),
        )
    raise InvalidMessage('a JSON-RPC message needs "method", "result" or "error"', reply_id)


# --- framing ------------------------------------------------------------------------------------------


class LineBuffer:
    """Incremental newline splitter with a size limit; feed bytes, take complete lines."""

    __slots__ = ("_buf", "_discarding", "_scan", "max_line_bytes")

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._scan = 0  # bytes before this offset hold no newline
        self._discarding = False  # inside an oversized line that was already reported

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def reset(self) -> None:
        """Forget any partial line (the peer went away mid-message)."""
        self._buf.clear()
        self._scan = 0
        self._discarding = False

    def next_line(self) -> bytes | None:
        """The next complete non-blank line without its newline, or None if none is complete yet."""
        while True:
            end = self._buf.find(b"\n", self._scan)
            if end < 0:
                self._scan = len(self._buf)
                if self._scan > self.max_line_bytes:
                    size = self._scan
                    self._buf.clear()
                    self._scan = 0
                    if not self._discarding:
                        self._discarding = True
                        raise FrameTooLarge(size, self.max_line_bytes)
                return None
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._scan = 0
            if self._discarding:
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line_bytes:
                raise FrameTooLarge(len(line), self.max_line_bytes)
            if line.strip():
                return line


class LineReader:
    """Blocking line reader over ``read() -> bytes`` (``b""`` = end of stream)."""

    __slots__ = ("_buffer", "_eof", "_read")

    def __init__(self, read: Callable[[], bytes], max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._read = read
        self._buffer = LineBuffer(max_line_bytes)
        self._eof = False

    def read_line(self) -> bytes | None:
        """The next line, or None at end of stream (a partial last line is dropped)."""
        while True:
            line = self._buffer.next_line()
            if line is not None:
                return line
            if self._eof:
                return None
            data = self._read()
            if not data:
                self._eof = True
                self._buffer.reset()
                return None
            self._buffer.feed(data)
