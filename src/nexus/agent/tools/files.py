"""File tools: file_read, file_write, file_delete, list_dir.

Paths are guest paths; relative ones are resolved against the agent's working directory (``/``).
Results are sized for models: file_read returns ``DEFAULT_READ_BYTES`` unless asked for more (at most
``MAX_READ_BYTES`` per call) and says where to read on; list_dir sorts every name, then returns one page
(``offset``/``limit``) with the total. Large files move in chunks: file_read pages with
``offset``/``length`` and file_write appends with ``append: true``. Only regular files are read (no FIFOs or devices,
which could block a worker forever). Nothing here follows the caller's intent past what it asked:
no atomic replace, no ownership changes, and ``/`` itself is never deleted.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import stat
from typing import Any, Final

from nexus.agent.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolResult,
    arg_bool,
    arg_choice,
    arg_int,
    arg_path,
    arg_str,
    check_keys,
)
from nexus.protocol import FILE_CHUNK_BYTES

__all__ = ["DEFAULT_DIR_ENTRIES", "DEFAULT_READ_BYTES", "FILE_TOOLS", "MAX_DIR_ENTRIES", "MAX_READ_BYTES"]

DEFAULT_READ_BYTES: Final = 256 * 1024
MAX_READ_BYTES: Final = FILE_CHUNK_BYTES
DEFAULT_DIR_ENTRIES: Final = 500
MAX_DIR_ENTRIES: Final = 10_000
_ENCODINGS: Final = ("text", "base64")
_MODE_RE: Final = re.compile(r"^(?:0o|0)?([0-7]{1,4})$")


def _file_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _decode_text(data: bytes, eof: bool) -> tuple[str, bytes, bool]:
    """UTF-8 text of ``data``; a multi-byte character cut by the chunk end is left for the next read."""
    try:
        return data.decode("utf-8"), data, eof
    except UnicodeDecodeError as exc:
        if not eof and exc.reason == "unexpected end of data" and exc.start >= len(data) - 3:
            head = data[: exc.start]
            try:
                return head.decode("utf-8"), head, False
            except UnicodeDecodeError:
                pass
        raise ToolError(
            f"file is not valid UTF-8 text (invalid byte at offset {exc.start} of this chunk); "
            'read it with encoding "base64"'
        ) from exc


def file_read(args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
    check_keys(args, ("path", "encoding", "offset", "length"))
    path = arg_path(args)
    encoding = arg_choice(args, "encoding", _ENCODINGS, "text")
    offset: int = arg_int(args, "offset", 0, minimum=0)
    limit: int = arg_int(args, "length", DEFAULT_READ_BYTES, minimum=0)
    if limit > MAX_READ_BYTES:
        raise ToolError(f"argument 'length' must be <= {MAX_READ_BYTES}; page with offset for more")
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise ToolError(f"{path} is a directory; use list_dir")
    if not stat.S_ISREG(st.st_mode):
        raise ToolError(f"{path} is not a regular file")
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(limit)
        eof = len(data) < limit or f.read(1) == b""
    if encoding == "base64":
        content = base64.b64encode(data).decode("ascii")
    else:
        content, data, eof = _decode_text(data, eof)
    structured = {
        "path": path,
        "content": content,
        "encoding": encoding,
        "offset": offset,
        "bytes_read": len(data),
        "size": st.st_size,
        "eof": eof,
    }
    text = content
    if not eof and encoding == "text":
        end = offset + len(data)
        text += f"\n[… bytes {offset}-{end} of {st.st_size} shown; read on with offset={end} …]"
    return ToolResult.ok(structured, text)


def _parse_mode(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        match = _MODE_RE.match(value.strip())
        if not match:
            raise ToolError(f"argument 'mode' must be an octal string like \"0644\", got {value!r}")
        return int(match.group(1), 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise ToolError(f"argument 'mode' must be an octal string like \"0644\" or an integer <= 4095, got {value!r}")


def file_write(args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
    check_keys(args, ("path", "content", "encoding", "mode", "append"))
    path = arg_path(args)
    content: str = arg_str(args, "content")
    encoding = arg_choice(args, "encoding", _ENCODINGS, "text")
    mode = _parse_mode(args.get("mode"))
    append = arg_bool(args, "append", False)
    if encoding == "base64":
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ToolError(f"content is not valid base64: {exc}") from exc
    else:
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ToolError(f"content is not encodable as UTF-8 ({exc.reason}); use base64") from exc
    os.makedirs(os.path.dirname(path), exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o644 if mode is None else mode)
    with os.fdopen(fd, "wb") as f:
        if mode is not None:
            os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        st = os.fstat(f.fileno())
    structured = {
        "path": path,
        "bytes_written": len(data),
        "size": st.st_size,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
    }
    verb = "appended" if append else "wrote"
    return ToolResult.ok(
        structured, f"{verb} {len(data)} bytes to {path} (now {st.st_size} bytes, mode {structured['mode']})"
    )


def file_delete(args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
    check_keys(args, ("path", "recursive"))
    path = arg_path(args)
    recursive = arg_bool(args, "recursive", False)
    if path == "/":
        raise ToolError("refusing to delete /")
    st = os.lstat(path)
    kind = _file_type(st.st_mode)
    if kind == "dir":
        if not recursive:
            raise ToolError(f"{path} is a directory; pass recursive: true to delete it and everything in it")
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return ToolResult.ok({"path": path, "deleted": True, "type": kind}, f"deleted {kind} {path}")


def _entry(path: str, name: str) -> dict[str, Any] | None:
    try:
        st = os.lstat(os.path.join(path, name))
    except OSError:
        return None  # vanished between readdir and stat
    return {
        "name": name,
        "type": _file_type(st.st_mode),
        "size": st.st_size,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "mtime": st.st_mtime,
    }


_TYPE_MARK: Final = {"dir": "/", "symlink": "@", "other": "?", "file": ""}


def list_dir(args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
    check_keys(args, ("path", "offset", "limit"))
    path = arg_path(args)
    offset: int = arg_int(args, "offset", 0, minimum=0)
    limit: int = arg_int(args, "limit", DEFAULT_DIR_ENTRIES, minimum=1)
    if limit > MAX_DIR_ENTRIES:
        raise ToolError(f"argument 'limit' must be <= {MAX_DIR_ENTRIES}; page with offset for more")
    with os.scandir(path) as it:
        names = sorted(entry.name for entry in it)  # all of them, so pages follow one order with no hole
    page = names[offset : offset + limit]
    entries = [e for e in (_entry(path, name) for name in page) if e is not None]
    end = offset + len(page)
    next_offset = end if end < len(names) else None
    structured = {"path": path, "entries": entries, "total": len(names), "offset": offset, "next_offset": next_offset}
    lines = [f"{path}: {len(names)} entries" + (f", showing {offset}-{end}" if len(page) < len(names) else "")]
    lines += [f"{e['mode']} {e['size']:>12} {e['name']}{_TYPE_MARK[e['type']]}" for e in entries]
    if next_offset is not None:
        lines.append(f"[… {len(names) - end} more; list on with offset={next_offset} …]")
    return ToolResult.ok(structured, "\n".join(lines))


_PATH_PROP: Final = {"type": "string", "description": "Absolute path inside the VM."}
_ENCODING_PROP: Final = {
    "type": "string",
    "enum": list(_ENCODINGS),
    "default": "text",
    "description": '"text" (UTF-8) or "base64" (any bytes).',
}

FILE_TOOLS: Final = (
    Tool(
        name="file_read",
        title="Read file",
        description=(
            "Read a regular file inside the VM. Returns the content (UTF-8 text, or base64 for binary "
            f"data) plus size and eof. Reads {DEFAULT_READ_BYTES} bytes from offset unless length says otherwise "
            f"(at most {MAX_READ_BYTES}): page with offset until eof is true."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "path": _PATH_PROP,
                "encoding": _ENCODING_PROP,
                "offset": {"type": "integer", "minimum": 0, "default": 0, "description": "Byte offset."},
                "length": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_READ_BYTES,
                    "default": DEFAULT_READ_BYTES,
                    "description": "Bytes to read.",
                },
            },
            "required": ["path"],
            "additionalProperties": False,
        },
        handler=file_read,
        read_only=True,
        idempotent=True,
    ),
    Tool(
        name="file_write",
        title="Write file",
        description=(
            "Create or overwrite a file inside the VM (parent directories are created). Use encoding "
            '"base64" for binary data and append: true to upload a large file in chunks.'
        ),
        input_schema={
            "type": "object",
            "properties": {
                "path": _PATH_PROP,
                "content": {"type": "string", "description": "The data, encoded as given by encoding."},
                "encoding": _ENCODING_PROP,
                "mode": {
                    "type": ["string", "integer"],
                    "description": 'Permission bits as an octal string like "0755" (or an integer).',
                },
                "append": {"type": "boolean", "default": False, "description": "Append instead of replace."},
            },
            "required": ["path", "content"],
            "additionalProperties": False,
        },
        handler=file_write,
        destructive=True,
    ),
    Tool(
        name="file_delete",
        title="Delete file",
        description="Delete a file or symlink inside the VM; a directory only with recursive: true.",
        input_schema={
            "type": "object",
            "properties": {
                "path": _PATH_PROP,
                "recursive": {"type": "boolean", "default": False, "description": "Delete directory trees."},
            },
            "required": ["path"],
            "additionalProperties": False,
        },
        handler=file_delete,
        destructive=True,
        idempotent=False,
    ),
    Tool(
        name="list_dir",
        title="List directory",
        description=(
            "List a directory inside the VM: name, type (file, dir, symlink, other), size, octal mode "
            f"and mtime of each entry, sorted by name, {DEFAULT_DIR_ENTRIES} entries per page unless limit says "
            f"otherwise (at most {MAX_DIR_ENTRIES}). total counts all entries; next_offset (null at the end) "
            "continues the listing."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "path": _PATH_PROP,
                "offset": {"type": "integer", "minimum": 0, "default": 0, "description": "Entries to skip."},
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_DIR_ENTRIES,
                    "default": DEFAULT_DIR_ENTRIES,
                    "description": "Entries per page.",
                },
            },
            "required": ["path"],
            "additionalProperties": False,
        },
        handler=list_dir,
        read_only=True,
        idempotent=True,
    ),
)
