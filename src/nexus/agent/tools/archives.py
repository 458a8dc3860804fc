"""Archive tools: archive_create (paths → a .tar or .tar.gz file) and archive_extract (an archive file → a
directory), both inside the VM.

They use the tar stream code ``vm cp -r`` uses (``nexus.protocol.tarpack``, ``tarunpack``): the same members
go in, the same rules guard the extraction (no absolute names, no ``..``, nothing written through a symbolic
link, hard links only inside the destination, no device nodes or FIFOs: a refusal names the member and stops).
An archive is written next to its final name and renamed into place when complete, so a failed or cancelled
call leaves no half archive behind.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Callable
from typing import Any, Final

from nexus.agent.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolResult,
    arg_choice,
    arg_path,
    check_keys,
)
from nexus.protocol import ArchiveError
from nexus.protocol.tarpack import PackStats, pack
from nexus.protocol.tarunpack import Unpacker

__all__ = ["ARCHIVE_TOOLS"]

_COMPRESSIONS: Final = ("auto", "none", "gzip")
MAX_PATHS: Final = 1000


def _checker(ctx: ToolContext) -> Callable[[], None]:
    def check() -> None:
        if ctx.cancelled.is_set():
            raise ToolError("cancelled")

    return check


def _sources(args: dict[str, Any]) -> list[tuple[str, str]]:
    paths = args.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ToolError("argument 'paths' must be a non-empty list of paths")
    if len(paths) > MAX_PATHS:
        raise ToolError(f"argument 'paths' takes at most {MAX_PATHS} paths; archive their directory instead")
    sources = [(path, os.path.basename(path)) for path in (arg_path({"path": p}) for p in paths)]
    seen: set[str] = set()
    for path, name in sources:
        if not name:
            raise ToolError("cannot archive / itself: name the directories below it")
        if name in seen:
            raise ToolError(f"two paths are named {name!r}: archive entries are named after the last component")
        seen.add(name)
        if not os.path.lexists(path):
            raise ToolError(f"{path} does not exist")
    return sources


def archive_create(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    check_keys(args, ("paths", "output", "compression"))
    sources = _sources(args)
    output = arg_path(args, "output")
    compression = arg_choice(args, "compression", _COMPRESSIONS, "auto")
    gz = compression == "gzip" or (compression == "auto" and output.endswith((".tar.gz", ".tgz")))
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    partial = os.path.join(parent, f".{os.path.basename(output)}.part")
    stats = PackStats()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as raw:
            st = os.fstat(raw.fileno())
            exclude = frozenset({(st.st_dev, st.st_ino)})  # an archive written inside a tree it packs
            zipped = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if gz else None
            out = zipped or raw
            for piece in pack(sources, stats, exclude=exclude, check=_checker(ctx)):
                out.write(piece)
            if zipped is not None:
                zipped.close()  # its trailer; raw stays open
            size = raw.tell()
        os.replace(partial, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    structured = {"output": output, "compression": "gzip" if gz else "none", "size": size, **stats.as_dict()}
    text = (
        f"wrote {output} ({size} bytes{', gzip' if gz else ''}): {stats.files} files, {stats.dirs} directories, "
        f"{stats.symlinks} symlinks, {stats.hardlinks} hard links, {stats.bytes} bytes of file data"
    )
    if stats.skipped:
        text += f"; skipped {len(stats.skipped)} sockets/FIFOs/devices: {', '.join(stats.skipped[:10])}"
        structured["skipped"] = stats.skipped[:100]
    return ToolResult.ok(structured, text)


def archive_extract(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    check_keys(args, ("archive", "destination"))
    archive = arg_path(args, "archive")
    destination = arg_path(args, "destination")
    try:
        with open(archive, "rb") as source, Unpacker(destination) as unpacker:
            stats = unpacker.run(source, check=_checker(ctx))
    except ArchiveError as exc:
        raise ToolError(f"{exc}; what came before it was extracted into {destination}") from exc
    structured = {"archive": archive, "destination": destination, **stats.as_dict()}
    text = (
        f"extracted {archive} into {destination}: {stats.files} files, {stats.dirs} directories, "
        f"{stats.symlinks} symlinks, {stats.hardlinks} hard links, {stats.bytes} bytes of file data"
    )
    return ToolResult.ok(structured, text)


ARCHIVE_TOOLS: Final = (
    Tool(
        name="archive_create",
        title="Create archive",
        description=(
            "Pack files and directory trees inside the VM into one tar archive file (gzip-compressed for a "
            "name ending .tar.gz or .tgz, or with compression: gzip). Each path becomes a top-level entry named "
            "after its last component; modes, owners, mtimes, symlinks and hard links are kept. Returns counts "
            "and the archive's size."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "paths": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": MAX_PATHS,
                    "description": "Absolute paths inside the VM to put in the archive.",
                },
                "output": {"type": "string", "description": "Absolute path of the archive file to write."},
                "compression": {
                    "type": "string",
                    "enum": list(_COMPRESSIONS),
                    "default": "auto",
                    "description": '"auto" (gzip for .tar.gz/.tgz names), "none" or "gzip".',
                },
            },
            "required": ["paths", "output"],
            "additionalProperties": False,
        },
        handler=archive_create,
        destructive=True,
    ),
    Tool(
        name="archive_extract",
        title="Extract archive",
        description=(
            "Extract a tar archive file inside the VM (plain, gzip, bzip2 or xz) into a directory, made if "
            "missing. Refuses, naming the member, anything that would land outside the directory: absolute "
            "names, '..', paths through symlinks, hard links leaving it, device nodes and FIFOs."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "archive": {"type": "string", "description": "Absolute path of the archive inside the VM."},
                "destination": {"type": "string", "description": "Absolute path of the directory to extract into."},
            },
            "required": ["archive", "destination"],
            "additionalProperties": False,
        },
        handler=archive_extract,
        destructive=True,
    ),
)
