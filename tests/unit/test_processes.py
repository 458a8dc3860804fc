"""The pure parts of background processes: rotating output segments and reads across them by absolute offset,
UTF-8 cuts, /proc start times, the host schemas' limits against the agent's, and the service's error mapping."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from nexus import schemas
from nexus.agent import processes
from nexus.agent.procfiles import LogWriter, proc_start_ticks, read_output, segments
from nexus.agent.tools import processes as tools
from nexus.domain import Conflict, GuestError, NotFound
from nexus.services.processes import ProcessService


def test_segments_rotate_and_offsets_stay_absolute(tmp_path: Path) -> None:
    writer = LogWriter(str(tmp_path), segment_bytes=10)
    data = bytes(range(65, 65 + 26)) * 2  # 52 bytes
    for start in range(0, len(data), 7):
        writer.write(data[start : start + 7])
    writer.close()
    kept = segments(str(tmp_path))
    assert [(s.start, s.size) for s in kept] == [(40, 10), (50, 2)]  # the last two of 10-byte segments
    assert read_output(str(tmp_path), 0, 100) == (data[40:], 40, 40, 52)  # rotated away: from the oldest kept
    assert read_output(str(tmp_path), 45, 6) == (data[45:51], 45, 40, 52)  # across a segment boundary
    assert read_output(str(tmp_path), 99, 10) == (b"", 52, 40, 52)
    assert read_output(str(tmp_path / "none"), 0, 10) == (b"", 0, 0, 0)


def test_a_full_disk_drops_output_without_shifting_offsets(tmp_path: Path) -> None:
    writer = LogWriter(str(tmp_path), segment_bytes=1 << 20)
    writer.write(b"kept\n")
    writer._file.close()  # writes now fail as a full disk's would
    writer._file = open(os.devnull, "rb", buffering=0)  # noqa: SIM115 - read-only: every write raises
    writer.write(b"lost\n")
    writer._file.close()
    assert read_output(str(tmp_path), 0, 100) == (b"kept\n", 0, 0, 5)


def test_utf8_cut_before_a_partial_character() -> None:
    cut = processes._whole_characters
    assert cut("aé".encode()[:2], more=True) == b"a"
    assert cut("a€".encode()[:3], more=True) == b"a"
    assert cut("a€".encode(), more=True) == "a€".encode()
    assert cut("a😀".encode()[:4], more=True) == b"a"
    assert cut("aé".encode()[:2], more=False) == b"a\xc3"  # the end of all output: nothing follows to complete it
    assert cut(b"\x80\x80\x80\x80", more=True) == b"\x80\x80\x80\x80"  # not UTF-8 at all: left as it is


def test_start_ticks_of_this_process_and_of_none() -> None:
    ticks = proc_start_ticks(os.getpid())
    assert isinstance(ticks, int) and ticks > 0
    assert proc_start_ticks(2**22 + 1) is None  # above pid_max's ceiling: never a process


def test_the_host_publishes_the_agents_limits() -> None:
    start = schemas.ProcessStartIn.model_fields
    assert schemas.PROCESS_LOG_BYTES_RANGE == (processes.MIN_LOG_BYTES, processes.MAX_LOG_BYTES)
    assert f"^{processes.NAME_RE.pattern}$" == schemas.PROCESS_NAME_PATTERN
    assert schemas.PROCESS_READY_TIMEOUT_MAX_S == tools.MAX_READY_TIMEOUT_S
    assert start["ready_timeout_s"].default == tools.DEFAULT_READY_TIMEOUT_S
    assert schemas.PROCESS_WAIT_MAX_S == tools.MAX_WAIT_S
    assert schemas.PROCESS_OUTPUT_LIMIT_MAX == tools.MAX_OUTPUT_LIMIT
    assert schemas.ProcessSignalIn.model_json_schema()["properties"]["signal"]["enum"] == list(tools.SIGNALS)


class _Guest:
    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result

    async def call_tool(self, ref: str, name: str, arguments: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        return self.result


def _refusal(code: str | None, text: str) -> dict[str, Any]:
    return {"isError": True, "content": [{"type": "text", "text": text}], "structuredContent": {"code": code}}


@pytest.mark.parametrize(
    ("code", "error", "message"),
    [
        ("not_found", NotFound, "no process 'p9' in VM 'box'"),
        ("conflict", Conflict, "process p9 is not running (exited with 0)"),
        ("not_ready", GuestError, "process p9 is not running (exited with 0)"),
        (None, GuestError, "process p9 is not running (exited with 0)"),
    ],
)
def test_tool_refusals_become_domain_errors(code: str | None, error: type[Exception], message: str) -> None:
    service = ProcessService(_Guest(_refusal(code, "process_signal: process p9 is not running (exited with 0)")))  # type: ignore[arg-type]
    with pytest.raises(error) as caught:
        asyncio.run(service.signal("box", "p9", "TERM"))
    assert str(caught.value) == message
