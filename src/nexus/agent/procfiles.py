"""The files of one background process, shared by its supervisor (``nexus.agent.supervise``), which writes them,
and the agent (``nexus.agent.processes``), which reads them - the only state there is, so an agent that restarts
finds everything again by reading the directory.

``<process dir>/<id>/``:
  ``spec.json``     what was asked: id, name, command, cwd, log bounds, when (never the environment: it may hold
                    secrets); written by the agent before the supervisor starts
  ``pid.json``      the running command: pid (= its process group), its start time in clock ticks since boot
                    (``/proc/PID/stat`` field 22) and the boot id, so a recycled pid or a pid of another boot is
                    never taken for it; the supervisor's own pid and start time likewise
  ``status.json``   how it ended (exit_code, negative = killed by that signal; or ``error`` when it could not
                    start), written once by the supervisor after reaping it
  ``reason``        why nexus itself stopped it (a readiness check that failed), written by the agent
  ``out.<offset>``  the output (stdout and stderr together, as written): segments of ``segment_bytes`` each,
                    named by the absolute offset of their first byte; only the last ``KEEP_SEGMENTS`` are kept, so
                    offsets stay valid across rotation and what was dropped is known
Every JSON file is written beside and renamed, so a reader sees all of it or none. Stdlib only; imported by the
supervisor, so it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "KEEP_SEGMENTS",
    "PID_FILE",
    "REASON_FILE",
    "SPEC_FILE",
    "STATUS_FILE",
    "LogWriter",
    "boot_id",
    "proc_start_ticks",
    "read_json",
    "read_output",
    "segments",
    "write_json",
]

SPEC_FILE: Final = "spec.json"
PID_FILE: Final = "pid.json"
STATUS_FILE: Final = "status.json"
REASON_FILE: Final = "reason"
SEGMENT_PREFIX: Final = "out."
KEEP_SEGMENTS: Final = 2


def write_json(path: str, value: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any] | None:
    """The object in ``path``; None when there is none (or it is not an object)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def proc_start_ticks(pid: int, live_only: bool = True) -> int | None:
    """When ``pid`` started (clock ticks since boot); None when there is no such process (nor, with
    ``live_only``, when it is a zombie: it has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": the name may hold spaces and parens
    if len(fields) < 20 or (live_only and fields[0] in (b"Z", b"X")):
        return None
    return int(fields[19])  # field 22 of the whole line


@dataclass(frozen=True, slots=True)
class Segment:
    start: int  # absolute offset of its first byte
    path: str
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


def segments(directory: str) -> list[Segment]:
    """The output segments there now, oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            suffix = entry.name.removeprefix(SEGMENT_PREFIX)
            if suffix != entry.name and suffix.isdigit():
                with contextlib.suppress(FileNotFoundError):
                    found.append(Segment(int(suffix), entry.path, entry.stat().st_size))
    return sorted(found, key=lambda s: s.start)


def read_output(directory: str, offset: int, limit: int) -> tuple[bytes, int, int, int]:
    """Up to ``limit`` bytes of output from ``offset``: (data, offset of data, oldest offset kept, total written).

    An offset that was rotated away reads from the oldest kept byte; one past the end reads nothing. A segment the
    writer removes meanwhile makes it look again."""
    for _ in range(5):
        found = segments(directory)
        if not found:
            return b"", 0, 0, 0
        first, total = found[0].start, found[-1].end
        start = min(max(offset, first), total)
        data = bytearray()
        try:
            for segment in found:
                if segment.end <= start + len(data) or len(data) >= limit:
                    continue
                with open(segment.path, "rb") as f:
                    f.seek(start + len(data) - segment.start)
                    data += f.read(min(limit - len(data), segment.end - start - len(data)))
        except FileNotFoundError:
            continue  # rotated away under us
        return bytes(data), start, first, total
    return b"", offset, offset, offset


class LogWriter:
    """Appends output to rotating segments of ``segment_bytes``; keeps the last ``KEEP_SEGMENTS``."""

    def __init__(self, directory: str, segment_bytes: int) -> None:
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._total = 0
        self._file = self._open(0)
        self._room = segment_bytes

    def _open(self, start: int) -> Any:
        return open(os.path.join(self._dir, f"{SEGMENT_PREFIX}{start}"), "ab", buffering=0)

    def write(self, data: bytes) -> None:
        """Append ``data``; what the disk refuses (full) is dropped, and offsets stay those of what was kept."""
        while data:
            if self._room == 0:
                self._file.close()
                self._file = self._open(self._total)
                self._room = self._segment_bytes
                for old in segments(self._dir)[:-KEEP_SEGMENTS]:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(old.path)
            try:
                written = self._file.write(data[: self._room]) or 0
            except OSError:
                written = 0
            if written == 0:
                return
            self._total += written
            self._room -= written
            data = data[written:]

    def close(self) -> None:
        self._file.close()
