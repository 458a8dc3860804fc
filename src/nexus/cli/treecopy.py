"""Tree copy for ``nexusctl vm cp -r``: a file or directory tree into or out of a VM as one streamed tar.

``cp -r`` placement both ways: an existing directory receives the copy under the source's name, any other
destination path becomes the copy. The host side packs and unpacks with the same code as the agent
(``nexus.protocol.tarpack``, ``tarunpack``), and a tar coming from a guest is untrusted: it gets the same
refusals (nothing lands outside the destination) and, on the host, neither the guest's uid/gid nor setuid/setgid
bits. ``-`` is a tar stream on stdin or stdout, as is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator

from nexus.cli.transfer import progress_bar
from nexus.domain import Invalid, NexusError
from nexus.protocol import ARCHIVE_CHUNK_BYTES, ArchiveError, cp_destination
from nexus.protocol.tarpack import pack
from nexus.protocol.tarunpack import Unpacker
from nexus.sdk import Nexus


class _Reader:
    """``read(n)`` over an iterator of byte strings."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int, /) -> bytes:
        while len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def _grouped(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """``pieces`` regrouped into chunks of about ``ARCHIVE_CHUNK_BYTES`` (a tree of small files is many small
    headers)."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        if len(buffer) >= ARCHIVE_CHUNK_BYTES:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def _host_errors(exc: ArchiveError | OSError) -> NexusError:
    if isinstance(exc, ArchiveError):
        return Invalid(str(exc))
    return NexusError(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))


def download_tree(client: Nexus, ref: str, path: str, dst: str) -> dict[str, int]:
    """Copy the guest's ``path`` to ``dst`` ('-' = a tar on stdout); the counts of what was copied."""
    chunks = client.vms.files(ref).read_archive(path)
    try:
        with progress_bar(None, path) as bar:
            if dst == "-":
                sent = 0
                for chunk in chunks:
                    sys.stdout.buffer.write(chunk)
                    sent += len(chunk)
                    bar.update(bar.task_ids[0], completed=sent)
                sys.stdout.buffer.flush()
                return {"bytes": sent}
            dest, top = cp_destination(dst)

            def counted() -> Iterator[bytes]:
                got = 0
                for chunk in chunks:
                    got += len(chunk)
                    bar.update(bar.task_ids[0], completed=got)
                    yield chunk

            try:
                with Unpacker(dest, rename_top=top, keep_owner=False) as unpacker:
                    return unpacker.run(_Reader(counted())).as_dict()
            except (ArchiveError, OSError) as exc:
                raise _host_errors(exc) from exc
    finally:
        chunks.close()  # early: ends the transfer, and the guest's session with it


def upload_tree(client: Nexus, src: str, ref: str, path: str) -> dict[str, int]:
    """Copy ``src`` ('-' = a tar on stdin, unpacked into ``path``) into the guest; the counts the agent gives."""
    files = client.vms.files(ref)
    if src == "-":
        stdin = iter(lambda: sys.stdin.buffer.read(ARCHIVE_CHUNK_BYTES), b"")
        return _counts(files.write_archive(path, stdin).model_dump())
    source = os.path.abspath(src)
    if not os.path.lexists(source):
        raise Invalid(f"cannot read {src}: no such file or directory")
    if source == "/":
        raise Invalid("cannot copy / itself: name a directory below it")
    sent = 0
    with progress_bar(None, src) as bar:

        def chunks() -> Iterator[bytes]:
            nonlocal sent
            try:
                for chunk in _grouped(pack([(source, os.path.basename(source))])):
                    yield chunk
                    sent += len(chunk)
                    bar.update(bar.task_ids[0], completed=sent)
            except (ArchiveError, OSError) as exc:
                raise _host_errors(exc) from exc

        return _counts(files.write_archive(path, chunks(), cp=True).model_dump())


def _counts(result: dict[str, object]) -> dict[str, int]:
    return {k: v for k, v in result.items() if isinstance(v, int)}
