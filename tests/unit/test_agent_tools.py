"""The guest tools, called through the real Toolbox on a tmp_path (real files, real processes)."""

from __future__ import annotations

import base64
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any

from nexus.agent.tools import DEFAULT_OUTPUT_BYTES, MAX_OUTPUT_BYTES, Toolbox, ToolContext, ToolResult
from nexus.agent.tools.files import DEFAULT_DIR_ENTRIES, DEFAULT_READ_BYTES, MAX_READ_BYTES

TOOLS = Toolbox(image_id="img-test")


def call(name: str, ctx: ToolContext | None = None, **arguments: Any) -> ToolResult:
    return TOOLS.call(name, arguments, ctx)


def ok(name: str, ctx: ToolContext | None = None, **arguments: Any) -> dict[str, Any]:
    result = call(name, ctx, **arguments)
    assert not result.is_error, result.text
    return result.structured


def err(name: str, **arguments: Any) -> str:
    result = call(name, **arguments)
    assert result.is_error, result.structured
    mcp = result.to_mcp()
    assert mcp["isError"] is True and mcp["content"][0]["type"] == "text"
    return result.text


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before open, or between open and read
        return False


# --- listing and shapes --------------------------------------------------------------------------------


def test_tools_list_has_mcp_shapes() -> None:
    tools = {t["name"]: t for t in TOOLS.list()}
    assert set(tools) == {
        "file_read", "file_write", "file_delete", "list_dir", "archive_create", "archive_extract", "run_command",
        "system_info", "process_start", "process_list", "process_output", "process_signal", "process_wait",
        "shell_open", "shell_write", "shell_read", "shell_close",
    }  # fmt: skip
    for tool in tools.values():
        assert tool["description"]
        assert tool["inputSchema"]["type"] == "object"
        assert set(tool["inputSchema"].get("required", [])) <= set(tool["inputSchema"]["properties"])


def test_unknown_tool_and_unknown_argument_are_tool_errors(tmp_path: Path) -> None:
    assert "unknown tool 'nope'" in err("nope")
    assert "unknown argument(s): pth" in err("file_read", pth=str(tmp_path))
    assert "missing required argument 'path'" in err("file_read")
    assert "must be an integer" in err("file_read", path=str(tmp_path), offset="x")


# --- files ---------------------------------------------------------------------------------------------


def test_text_round_trip_with_offsets(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    text = "héllo wörld\nline two\n"
    written = ok("file_write", path=str(path), content=text)
    assert written == {
        "path": str(path),
        "bytes_written": len(text.encode()),
        "size": len(text.encode()),
        "mode": written["mode"],
    }
    assert path.read_text() == text
    whole = ok("file_read", path=str(path))
    assert (whole["content"], whole["eof"], whole["size"], whole["encoding"]) == (
        text,
        True,
        len(text.encode()),
        "text",
    )
    part = ok("file_read", path=str(path), offset=7, length=5)
    assert part["content"] == text.encode()[7:12].decode()
    assert part["eof"] is False
    tail = ok("file_read", path=str(path), offset=len(text.encode()) - 4)
    assert tail["content"] == "two\n"
    assert tail["eof"] is True
    assert call("file_read", path=str(path)).text == text  # the text block is the content itself


def test_file_read_pages_by_default_and_says_where_to_go_on(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"0123456789abcde\n" * (5 * 2**20 // 16))  # 5 MiB
    first = call("file_read", path=str(path))
    assert first.structured["bytes_read"] == DEFAULT_READ_BYTES and first.structured["eof"] is False
    trailer = f"[… bytes 0-{DEFAULT_READ_BYTES} of {5 * 2**20} shown; read on with offset={DEFAULT_READ_BYTES} …]"
    assert first.text == first.structured["content"] + "\n" + trailer
    most = ok("file_read", path=str(path), length=MAX_READ_BYTES)
    assert most["bytes_read"] == MAX_READ_BYTES
    assert "page with offset" in err("file_read", path=str(path), length=MAX_READ_BYTES + 1)
    last = call("file_read", path=str(path), offset=5 * 2**20 - 16)
    assert last.structured["eof"] is True and last.text == "0123456789abcde\n"  # no trailer at the end


def test_text_read_never_splits_a_character(tmp_path: Path) -> None:
    path = tmp_path / "u.txt"
    path.write_text("aé")  # b"a\xc3\xa9"
    first = ok("file_read", path=str(path), length=2)
    assert (first["content"], first["bytes_read"], first["eof"]) == ("a", 1, False)
    rest = ok("file_read", path=str(path), offset=1)
    assert (rest["content"], rest["eof"]) == ("é", True)


def test_binary_round_trip_base64(tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    path = tmp_path / "bin" / "blob"
    ok("file_write", path=str(path), content=base64.b64encode(data).decode(), encoding="base64")
    assert path.read_bytes() == data
    got = ok("file_read", path=str(path), encoding="base64", offset=100, length=1000)
    assert base64.b64decode(got["content"]) == data[100:1100]
    assert got["size"] == len(data)
    assert "base64" in err("file_read", path=str(path))  # not UTF-8 → suggests base64
    assert "not valid base64" in err("file_write", path=str(path), content="***", encoding="base64")


def test_append_mode_and_parents(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "f.sh"
    ok("file_write", path=str(path), content="one\n", mode="0750")
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    res = ok("file_write", path=str(path), content="two\n", append=True)
    assert res["size"] == 8 and res["bytes_written"] == 4
    assert path.read_text() == "one\ntwo\n"
    ok("file_write", path=str(path), content="x", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "x"
    assert "octal" in err("file_write", path=str(path), content="x", mode="rwx")


def test_read_refusals(tmp_path: Path) -> None:
    assert "No such file" in err("file_read", path=str(tmp_path / "missing"))
    assert "is a directory" in err("file_read", path=str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in err("file_read", path=str(fifo))


def test_delete_file_symlink_and_directory_refusal(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert ok("file_delete", path=str(link))["type"] == "symlink"
    assert tmp_path.exists()
    assert ok("file_delete", path=str(f)) == {"path": str(f), "deleted": True, "type": "file"}
    assert not f.exists()
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "g").write_text("y")
    assert "recursive" in err("file_delete", path=str(d))
    assert d.exists()
    ok("file_delete", path=str(d), recursive=True)
    assert not d.exists()
    assert "No such file" in err("file_delete", path=str(d))
    assert "refusing" in err("file_delete", path="/", recursive=True)


def test_list_dir(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("12345")
    (tmp_path / "a").mkdir()
    (tmp_path / "c").symlink_to("b.txt")
    os.chmod(tmp_path / "b.txt", 0o640)
    res = ok("list_dir", path=str(tmp_path))
    entries = {e["name"]: e for e in res["entries"]}
    assert [e["name"] for e in res["entries"]] == ["a", "b.txt", "c"]
    assert entries["a"]["type"] == "dir"
    assert (entries["b.txt"]["type"], entries["b.txt"]["size"], entries["b.txt"]["mode"]) == ("file", 5, "0640")
    assert entries["c"]["type"] == "symlink"
    assert (res["total"], res["offset"], res["next_offset"]) == (3, 0, None)
    lines = call("list_dir", path=str(tmp_path)).text.splitlines()
    assert lines[0] == f"{tmp_path}: 3 entries" and len(lines) == 4
    assert lines[1].endswith(" a/") and lines[2] == "0640" + " " * 12 + "5 b.txt" and lines[3].endswith(" c@")
    assert "Not a directory" in err("list_dir", path=str(tmp_path / "b.txt"))


def test_list_dir_pages_follow_one_sorted_order(tmp_path: Path) -> None:
    names = [f"f{i:05d}" for i in range(2 * DEFAULT_DIR_ENTRIES + 7)]
    for name in reversed(names):  # directory order is not name order
        (tmp_path / name).touch()
    seen: list[str] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        page = ok("list_dir", path=str(tmp_path), offset=offset)
        assert page["total"] == len(names) and len(page["entries"]) <= DEFAULT_DIR_ENTRIES
        seen += [e["name"] for e in page["entries"]]
        offset, pages = page["next_offset"], pages + 1
    assert seen == names and pages == 3  # no hole, no repeat
    first = call("list_dir", path=str(tmp_path), limit=10).text.splitlines()
    assert first[0] == f"{tmp_path}: {len(names)} entries, showing 0-10" and len(first) == 12
    assert first[-1] == f"[… {len(names) - 10} more; list on with offset=10 …]"
    assert "limit" in err("list_dir", path=str(tmp_path), limit=10**6)


# --- run_command ---------------------------------------------------------------------------------------


def test_shell_string_and_exit_code() -> None:
    res = ok("run_command", command="echo out; echo err >&2; exit 7")
    assert (res["exit_code"], res["stdout"], res["stderr"]) == (7, "out\n", "err\n")
    assert res["truncated"] is False and res["timed_out"] is False


def test_argv_without_shell_env_cwd_stdin(tmp_path: Path) -> None:
    res = ok("run_command", command=["printf", "%s|", "$HOME", "a b"])
    assert res["stdout"] == "$HOME|a b|"  # no shell: nothing expanded or split
    res = ok(
        "run_command", command="echo $NEXUS_T; pwd; cat", env={"NEXUS_T": "v1"}, cwd=str(tmp_path), stdin="from stdin"
    )
    assert res["stdout"] == f"v1\n{tmp_path}\nfrom stdin"
    assert "PATH" in ok("run_command", command="env", env={"X": "1"})["stdout"]  # merged, not replaced


def test_large_stdin_does_not_deadlock() -> None:
    data = "x" * (3 * 1024 * 1024)
    res = ok("run_command", command="wc -c", stdin=data)
    assert res["stdout"].strip() == str(len(data))


def test_start_failures_are_tool_errors(tmp_path: Path) -> None:
    assert "cannot start" in err("run_command", command=["/nonexistent/binary"])
    assert "cwd" in err("run_command", command="true", cwd=str(tmp_path / "nope"))
    assert "must be a string" in err("run_command", command=[1, 2])
    assert "timeout_s" in err("run_command", command="true", timeout_s=0)


def test_output_over_the_cap_keeps_head_and_tail_on_line_boundaries() -> None:
    res = ok("run_command", command="seq 1 1000000; echo done >&2", timeout_s=60)
    assert res["truncated"] is True and res["exit_code"] == 0 and res["timed_out"] is False
    assert res["stdout_bytes"] == 6888896 and res["stderr"] == "done\n"
    lines = res["stdout"].splitlines()
    marker = next(i for i, line in enumerate(lines) if line.startswith("[… "))
    head, tail = lines[:marker], lines[marker + 1 :]
    assert head == [str(i) for i in range(1, len(head) + 1)]  # whole lines from the start
    assert tail == [str(i) for i in range(1000001 - len(tail), 1000001)]  # whole lines to the very end
    kept = sum(len(line) + 1 for line in head + tail)
    assert lines[marker] == f"[… {6888896 - kept} bytes omitted …]"
    assert DEFAULT_OUTPUT_BYTES - 16 <= kept <= DEFAULT_OUTPUT_BYTES
    text = call("run_command", command="seq 1 1000000", timeout_s=60).text
    assert text.startswith("exit code 0 in ") and text.endswith("\n1000000") and len(text) < DEFAULT_OUTPUT_BYTES + 200


def test_output_cap_is_per_call_and_bounded() -> None:
    res = ok("run_command", command="head -c 5000 /dev/zero | tr '\\0' x", max_output_bytes=1000)
    assert res["truncated"] is True and res["stdout_bytes"] == 5000
    assert res["stdout"] == "x" * 250 + "\n[… 4000 bytes omitted …]\n" + "x" * 750  # one long line: cut raw
    big = ok("run_command", command="head -c 3000000 /dev/zero", max_output_bytes=MAX_OUTPUT_BYTES, timeout_s=30)
    assert big["truncated"] is True and big["stdout_bytes"] == 3000000
    assert "max_output_bytes" in err("run_command", command="true", max_output_bytes=MAX_OUTPUT_BYTES + 1)
    assert ok("run_command", command="echo hi", max_output_bytes=256)["stdout"] == "hi\n"


def test_text_is_a_rendering_not_json() -> None:
    first, *rest = call("run_command", command="echo out; echo err >&2; exit 3").text.splitlines()
    assert re.fullmatch(r"exit code 3 in \d+\.\d\d s", first), first  # the verdict, not the JSON
    assert rest == ["--- stdout ---", "out", "--- stderr ---", "err"]
    assert call("run_command", command="true").text.endswith("(no output)")


def test_invalid_utf8_output_is_replaced() -> None:
    res = ok("run_command", command=r"printf 'a\377b'")
    assert res["stdout"] == "a\ufffdb"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    started = time.monotonic()
    res = ok("run_command", command=f"sleep 30 & echo $! > {pidfile}; echo started; wait", timeout_s=0.5)
    assert time.monotonic() - started < 10
    assert res["timed_out"] is True
    assert res["exit_code"] == -9
    assert res["stdout"] == "started\n"  # output before the kill is kept
    bg = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(bg) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(bg), "the background child survived the timeout"


def test_background_child_holding_the_pipes_does_not_hang_the_call(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    started = time.monotonic()
    res = ok("run_command", command=f"sleep 30 & echo $! > {pidfile}; echo main", timeout_s=20)
    try:
        assert time.monotonic() - started < 5
        assert (res["exit_code"], res["stdout"], res["timed_out"], res["background"]) == (0, "main\n", False, True)
        time.sleep(1)
        assert _alive(int(pidfile.read_text())), "the background process died with the call's pipes"
    finally:
        os.kill(int(pidfile.read_text()), 9)


def test_a_background_process_writing_to_the_pipes_lives_on(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    res = call("run_command", command=f"(while :; do echo tick; sleep 0.1; done) & echo $! > {pidfile}", timeout_s=20)
    try:
        assert "background process" in res.text and res.structured["background"] is True
        time.sleep(1)  # it wrote ~10 more lines after the call returned: to the discarding reader, not a closed pipe
        assert _alive(int(pidfile.read_text()))
    finally:
        os.kill(int(pidfile.read_text()), 9)


def test_progress_streams_all_output_past_the_cap() -> None:
    events: list[str] = []
    ctx = ToolContext(progress=lambda p, msg, stream: events.append(msg))
    res = ok("run_command", ctx, command="seq 1 100000", max_output_bytes=1024)
    assert res["truncated"] is True
    assert "".join(events) == "".join(f"{i}\n" for i in range(1, 100001))


def test_progress_streams_chunks_with_increasing_progress() -> None:
    events: list[tuple[int, str, str]] = []
    ctx = ToolContext(progress=lambda p, msg, stream: events.append((p, msg, stream)))
    res = ok("run_command", ctx, command="echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three")
    assert res["stdout"] == "one\nthree\n" and res["stderr"] == "two\n"
    assert [(m, s) for _, m, s in events] == [("one\n", "stdout"), ("two\n", "stderr"), ("three\n", "stdout")]
    assert [p for p, _, _ in events] == [4, 8, 14]


def test_cancellation_kills_the_command() -> None:
    ctx = ToolContext()
    threading.Timer(0.3, ctx.cancelled.set).start()
    started = time.monotonic()
    res = call("run_command", ctx, command="sleep 30")
    assert time.monotonic() - started < 5
    assert res.is_error and "cancelled" in res.text


# --- system_info ---------------------------------------------------------------------------------------


def test_system_info() -> None:
    res = ok("system_info")
    assert res["image_id"] == "img-test"
    assert res["hostname"] == os.uname().nodename
    assert res["uptime_s"] > 0 and res["boot_time"] < time.time()
    assert res["mem_total_bytes"] > 0 and res["disk"]["total_bytes"] > 0
