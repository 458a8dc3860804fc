"""The agent's background processes (``process_*`` tools, ``nexus.agent.processes``) with real processes: output
in rotating files with stable offsets, exit statuses, signals to the group, names, readiness by port and by log
line (and a failed one: killed, reported with its last output, nothing left running), a recycled pid never taken for
ours, and an agent started afresh on the same directory finding and controlling what another agent started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.agent.procfiles import PID_FILE, proc_start_ticks, read_json, segments, write_json
from nexus.agent.tools import Toolbox
from tests.fakes.firecracker import stop_processes
from tests.helpers import REPO, free_port, wait_until


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "procs"
    try:
        yield directory
    finally:
        stop_processes(str(directory))


def call(box: Toolbox, tool: str, /, **arguments: Any) -> dict[str, Any]:
    result = box.call(tool, arguments)
    assert not result.is_error, result.text
    return result.structured


def refused(box: Toolbox, tool: str, /, **arguments: Any) -> tuple[str, dict[str, Any]]:
    result = box.call(tool, arguments)
    assert result.is_error, result.structured
    return result.text, result.structured


def test_output_exit_status_and_paging(procs: Path) -> None:
    box = Toolbox(None, str(procs))
    started = call(box, "process_start", command="for i in 1 2 3; do echo out $i; done; echo err >&2; exit 3")
    assert (started["id"], started["name"], started["cwd"]) == ("p1", None, "/")
    done = call(box, "process_wait", process="p1", timeout_s=10)
    assert (done["state"], done["running"], done["exit_code"], done["signal"], done["timed_out"]) == (
        "exited",
        False,
        3,
        None,
        False,
    )
    everything = "out 1\nout 2\nout 3\nerr\n"  # one stream, as written
    assert done["output_bytes"] == len(everything)
    tail = call(box, "process_output", process="p1")
    assert (tail["text"], tail["offset"], tail["next_offset"], tail["total_bytes"]) == (everything, 0, 22, 22)
    assert call(box, "process_output", process="p1", tail=2)["text"] == "out 3\nerr\n"
    page = call(box, "process_output", process="p1", offset=4, limit=5)
    assert (page["text"], page["offset"], page["next_offset"]) == ("1\nout", 4, 9)
    assert call(box, "process_output", process="p1", offset=100)["text"] == ""
    assert (procs / "p1" / "status.json").is_file()


def test_rotation_keeps_offsets_and_says_what_was_dropped(procs: Path) -> None:
    box = Toolbox(None, str(procs))
    expected = b"".join(b"line %06d\n" % i for i in range(20000))  # 220000 bytes
    script = "import sys; sys.stdout.write(''.join('line %06d\\n' % i for i in range(20000)))"
    call(box, "process_start", command=[sys.executable, "-c", script], max_log_bytes=64 * 1024)
    assert call(box, "process_wait", process="p1", timeout_s=20)["exit_code"] == 0
    kept = segments(str(procs / "p1"))
    assert len(kept) == 2 and all(s.size <= 32 * 1024 for s in kept)
    first = call(box, "process_output", process="p1", offset=0, limit=1000)
    assert first["total_bytes"] == len(expected)
    assert first["dropped_bytes"] == first["offset"] == kept[0].start > 0
    offset, text = first["offset"], ""
    while offset < first["total_bytes"]:
        page = call(box, "process_output", process="p1", offset=offset, limit=7000)
        text, offset = text + page["text"], page["next_offset"]
    assert text.encode() == expected[first["offset"] :]  # every kept byte, at its absolute offset
    assert call(box, "process_output", process="p1", tail=1)["text"] == "line 019999\n"


def test_signal_reaches_the_group_and_wait_gives_the_status(procs: Path) -> None:
    box = Toolbox(None, str(procs))
    started = call(box, "process_start", command="sleep 60 & echo $!; wait", name="sleeper")
    wait_until(lambda: call(box, "process_output", process="sleeper")["text"].strip().isdigit(), 10, "the child pid")
    child = int(call(box, "process_output", process="sleeper")["text"])
    assert call(box, "process_wait", process="sleeper", timeout_s=0.2)["timed_out"] is True
    assert call(box, "process_signal", process="sleeper", signal="TERM")["sent"] == "SIGTERM"
    done = call(box, "process_wait", process=started["id"], timeout_s=10)
    assert (done["state"], done["exit_code"], done["signal"]) == ("exited", -15, "SIGTERM")
    wait_until(lambda: proc_start_ticks(child) is None, 5, "the background child to die with its group")
    text, error = refused(box, "process_signal", process="sleeper", signal="KILL")
    assert error["code"] == "conflict" and "p1 is not running (killed by SIGTERM)" in text


def test_ids_names_and_refusals(procs: Path) -> None:
    box = Toolbox(None, str(procs))
    assert call(box, "process_start", command="sleep 60", name="web")["id"] == "p1"
    text, error = refused(box, "process_start", command="sleep 1", name="web")
    assert error["code"] == "conflict" and "'web' is taken by running process p1" in text
    text, error = refused(box, "process_output", process="p99")
    assert (error["code"], error["process"]) == ("not_found", "p99") and "no process 'p99'" in text
    assert refused(box, "process_wait", process="../etc")[1]["code"] == "not_found"
    for bad, words in (
        ({"command": "x", "name": "p7"}, "not p<N>"),
        ({"command": "x", "name": "a b"}, "must be a letter"),
        ({"command": "x", "ready_port": 80, "ready_log": "x"}, "not both"),
        ({"command": "x", "ready_log": "("}, "not a regular expression"),
        ({"command": "x", "cwd": "/nonexistent"}, "does not exist"),
        ({"command": "x", "max_log_bytes": 10}, "must be >="),
        ({"command": "x", "stdin": "x"}, "unknown argument"),
        ({"command": ["/nonexistent/bin"]}, "cannot start '/nonexistent/bin': No such file"),
    ):
        assert words in refused(box, "process_start", **bad)[0]
    assert refused(box, "process_output", process="p1", offset=0, tail=1)[0].endswith("give offset or tail, not both")
    assert "must be one of" in refused(box, "process_signal", process="p1", signal="BOOM")[0]
    assert [p["id"] for p in call(box, "process_list")["processes"]] == ["p1"]  # refusals recorded nothing
    call(box, "process_signal", process="web", signal="KILL")
    assert call(box, "process_wait", process="web")["signal"] == "SIGKILL"
    # A name is free once its process ended; p2 was the start that failed (its record went, its id is not reused).
    assert call(box, "process_start", command="true", name="web")["id"] == "p3"
    assert call(box, "process_wait", process="web")["id"] == "p3"  # by name: the newest


def test_readiness_by_port_and_by_log(procs: Path) -> None:
    box = Toolbox(None, str(procs))
    port = free_port()
    server = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    ready = call(box, "process_start", command=server, ready_port=port, cwd=str(procs.parent))
    assert ready["running"] and 0 <= ready["ready_after_s"] < 30
    logged = call(
        box, "process_start", command="sleep 0.3; echo 'server: Listening on :1'; sleep 60", ready_log="Listen"
    )
    assert logged["ready_after_s"] >= 0.3 and logged["running"]
    text, error = refused(box, "process_start", command="echo boom; exit 2", ready_port=port + 1)
    assert error["code"] == "not_ready" and "exited with 2 before it was ready" in text and "boom" in text


def test_failed_readiness_kills_the_group_and_reports_the_last_lines(procs: Path) -> None:
    box = Toolbox(None, str(procs))
    script = "for i in $(seq 30); do echo starting $i; done; sleep 60 & echo child $!; sleep 60"
    text, error = refused(box, "process_start", command=script, ready_log="^ready$", ready_timeout_s=1)
    assert error["code"] == "not_ready"
    assert "p1 was not ready: no output line matched within 1 s; it was stopped (killed by SIGKILL)" in text
    assert "starting 12\n" in text and "starting 11\n" not in text  # the last 20 lines
    record = error["process"]
    assert (record["state"], record["signal"]) == ("exited", "SIGKILL")
    assert record["reason"] == "not ready: no output line matched within 1 s"
    child = int(error["output"].split("child ")[1].split()[0])
    # nothing left running (a SIGKILLed process may still be on its way out for a moment on a busy host)
    wait_until(lambda: proc_start_ticks(record["pid"]) is None and proc_start_ticks(child) is None, 5, "the group gone")
    assert call(box, "process_list")["processes"][0]["reason"] == record["reason"]


def test_a_recycled_pid_is_never_taken_for_ours(procs: Path) -> None:
    box = Toolbox(None, str(procs))
    pid = call(box, "process_start", command="sleep 60")["pid"]
    record = read_json(str(procs / "p1" / PID_FILE))
    assert record is not None
    write_json(str(procs / "p1" / PID_FILE), {**record, "start_ticks": record["start_ticks"] + 1, "supervisor_pid": 0})
    assert call(box, "process_wait", process="p1", timeout_s=0)["state"] == "lost"
    assert refused(box, "process_signal", process="p1", signal="KILL")[1]["code"] == "conflict"
    assert proc_start_ticks(pid) is not None  # the process that has the pid now was left alone
    os.killpg(pid, signal.SIGKILL)


def _second_agent(directory: Path, *calls: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A fresh agent on ``directory`` (MCP on stdio): the structured results of ``calls``, in order."""
    lines: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": 0, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]  # fmt: skip
    for i, (name, arguments) in enumerate(calls, 1):
        lines.append(
            {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
        )
    argv = [sys.executable, "-S", "-m", "nexus.agent", "--control", "none", "--mcp", "stdio"]
    done = subprocess.run(
        [*argv, "--cmdline", "/dev/null", "--process-dir", str(directory)],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": os.environ["PATH"]},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    replies = {m["id"]: m["result"] for m in map(json.loads, done.stdout.splitlines())}
    return [replies[i]["structuredContent"] for i in range(1, len(calls) + 1)]


def test_a_new_agent_finds_and_controls_what_another_started(procs: Path) -> None:
    first = Toolbox(None, str(procs))
    call(first, "process_start", command="echo done; exit 4", name="job")
    running = call(first, "process_start", command="echo up; sleep 60", name="server")
    assert call(first, "process_wait", process="job", timeout_s=10)["exit_code"] == 4
    # an agent serves the calls of one session concurrently: the signal goes in a session of its own, after
    listed, output = _second_agent(procs, ("process_list", {}), ("process_output", {"process": "server"}))
    (sent,) = _second_agent(procs, ("process_signal", {"process": "server", "signal": "INT"}))
    assert [(p["id"], p["name"], p["state"], p["exit_code"]) for p in listed["processes"]] == [
        ("p1", "job", "exited", 4),
        ("p2", "server", "running", None),
    ]
    assert listed["processes"][1]["pid"] == running["pid"]
    assert (output["text"], output["running"]) == ("up\n", True)
    assert sent["sent"] == "SIGINT"
    done = call(first, "process_wait", process="server", timeout_s=10)
    assert (done["exit_code"], done["signal"]) == (-2, "SIGINT")
    (started,) = _second_agent(procs, ("process_start", {"command": "true"}))
    assert started["id"] == "p3"  # ids go on from where the other agent left them


def test_output_is_cut_between_characters(procs: Path) -> None:
    box = Toolbox(None, str(procs))
    call(box, "process_start", command=["printf", "%s", "é" * 10])
    call(box, "process_wait", process="p1")
    page = call(box, "process_output", process="p1", offset=0, limit=5)  # 5 bytes: 2 characters and a half
    assert (page["text"], page["next_offset"]) == ("éé", 4)
    rest = call(box, "process_output", process="p1", offset=4)
    assert (rest["text"], rest["next_offset"]) == ("é" * 8, 20)
