"""File transfer for ``nexusctl vm cp``: chunked, binary safe, with a progress bar for large files."""

from __future__ import annotations

import itertools
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from nexus.cli.progress import stderr
from nexus.domain import GuestError, Invalid
from nexus.protocol import FILE_CHUNK_BYTES
from nexus.sdk import Nexus

CHUNK_BYTES = FILE_CHUNK_BYTES  # the daemon's per-request cap
BAR_ABOVE_BYTES = 8 * CHUNK_BYTES


@contextmanager
def progress_bar(total: int | None, title: str) -> Iterator[Progress]:
    show = stderr.is_terminal and (total is None or total > BAR_ABOVE_BYTES)
    with Progress(
        BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=stderr, disable=not show, transient=True
    ) as bar:
        bar.add_task(title, total=total)
        yield bar


def download(client: Nexus, ref: str, path: str, dst: str) -> int:
    """Copy the guest file ``path`` to ``dst`` ('-' = stdout); returns the bytes copied."""
    target = Path(dst)
    if dst != "-" and target.is_dir():
        target = target / Path(path).name
    out: BinaryIO
    tmp: Path | None = None
    if dst == "-":
        out = sys.stdout.buffer
    else:
        tmp = target.with_name(f".{target.name}.nexus-part")
        out = tmp.open("wb")
    offset = 0
    try:
        chunks = client.vms.files(ref).chunks(path)
        try:
            first = next(chunks)
        except GuestError as exc:
            if f"{path} is a directory" in exc.message:  # file_read's own words
                raise Invalid(f"{path} is a directory in the VM: copy it with -r") from exc
            raise
        with progress_bar(first.size, path) as bar:
            for chunk in itertools.chain((first,), chunks):
                out.write(chunk.data)
                offset += len(chunk.data)
                bar.update(bar.task_ids[0], completed=offset)
        out.flush()
        if tmp is not None:
            out.close()
            tmp.replace(target)
            tmp = None
    finally:
        if tmp is not None:
            out.close()
            tmp.unlink(missing_ok=True)
    return offset


def upload(client: Nexus, src: str, ref: str, path: str) -> int:
    """Copy ``src`` ('-' = stdin) to the guest file ``path``; returns the bytes copied."""
    mode: str | None = None
    total: int | None = None
    if src != "-":
        try:
            info = os.stat(src)
        except OSError as exc:
            raise Invalid(f"cannot read {src}: {exc.strerror}") from exc
        if stat.S_ISDIR(info.st_mode):
            raise Invalid(f"{src} is a directory: copy it with -r")
        if not stat.S_ISREG(info.st_mode):
            raise Invalid(f"{src} is not a regular file")
        mode, total = f"{stat.S_IMODE(info.st_mode):04o}", info.st_size
    if path.endswith("/"):
        path += Path(src).name if src != "-" else "stdin"
    sent = 0
    with ExitStack() as stack:
        source = sys.stdin.buffer if src == "-" else stack.enter_context(Path(src).open("rb"))
        bar = stack.enter_context(progress_bar(total, path))

        def chunks() -> Iterator[bytes]:
            nonlocal sent
            while chunk := source.read(CHUNK_BYTES):
                yield chunk
                sent += len(chunk)
                bar.update(bar.task_ids[0], completed=sent)

        client.vms.files(ref).write_chunks(path, chunks(), mode=mode)  # an empty source makes an empty file
    return sent
