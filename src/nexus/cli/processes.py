"""``nexusctl vm proc ...`` and ``nexusctl vm ps``: background processes in a VM, which outlive the command that
started them (``vm logs`` stays the VM's console log; ``vm proc logs`` is a process's output)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from nexus.cli.common import client, ctx_of
from nexus.cli.output import ago, console, emit, fields, plain, table

app = typer.Typer(help="Background processes in a VM: start, ls, logs, kill, wait.", no_args_is_help=True)

Ref = Annotated[str, typer.Argument(help="VM name or id (a unique id prefix works too)")]
Process = Annotated[str, typer.Argument(help="the process's id (p1, p2...) or name")]


def _command(process: dict[str, Any]) -> str:
    command = process["command"]
    return str(command) if isinstance(command, str) else " ".join(command)


def _status(process: dict[str, Any]) -> str:
    if process["running"]:
        return "running"
    if process["signal"]:
        return f"killed ({process['signal']})"
    if process["exit_code"] is not None:
        return f"exited ({process['exit_code']})"
    return str(process["state"])


def _table(processes: list[dict[str, Any]]) -> None:
    table(
        ["ID", "NAME", "STATUS", "PID", "OUTPUT", "STARTED", "COMMAND"],
        [
            (
                p["id"],
                p["name"] or "-",
                _status(p),
                p["pid"] if p["running"] else "-",
                f"{p['output_bytes']} B",
                ago(p["started_at"]),
                _command(p),
            )
            for p in processes
        ],
    )


def _fields(process: dict[str, Any]) -> None:
    fields((key, value) for key, value in process.items() if value is not None)


def ps(ctx: typer.Context, ref: Ref) -> None:
    """List a VM's background processes (running and finished)."""
    with client(ctx) as c:
        processes = plain(c.vms.processes(ref).list())
    emit(ctx_of(ctx), processes, _table)


app.command("ls")(ps)


@app.command("start")
def start(
    ctx: typer.Context,
    ref: Ref,
    command: Annotated[list[str], typer.Argument(help="the command and its arguments (after --)")],
    name: Annotated[str | None, typer.Option(help="a name for it, unique among running processes")] = None,
    shell: Annotated[bool, typer.Option("--shell", "-s", help="run the words as one /bin/sh -c script")] = False,
    workdir: Annotated[str | None, typer.Option("--cwd", "-w", help="working directory in the guest")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE (repeatable)")] = None,
    ready_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="ready once 127.0.0.1:PORT accepts in the guest")
    ] = None,
    ready_log: Annotated[str | None, typer.Option(help="ready once a line of its output matches (regex)")] = None,
    ready_timeout: Annotated[
        float, typer.Option(min=0.001, max=600, help="seconds to wait for readiness; then it is killed")
    ] = 30.0,
) -> None:
    """Start a command in the VM that keeps running; returns once it runs (or is ready). Put the command after --
    (nexusctl vm proc start REF --name web -- python3 -m http.server)."""
    environment = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--env wants KEY=VALUE, got {item!r}")
        environment[key] = value
    with client(ctx) as c:
        process = plain(
            c.vms.processes(ref).start(
                " ".join(command) if shell else command,
                name=name,
                cwd=workdir,
                env=environment or None,
                ready_port=ready_port,
                ready_log=ready_log,
                ready_timeout_s=ready_timeout if ready_port is not None or ready_log is not None else None,
            )
        )

    def human(p: dict[str, Any]) -> None:
        ready = f", ready after {p['ready_after_s']:g} s" if p.get("ready_after_s") is not None else ""
        console.print(f"{p['id']}{' (' + p['name'] + ')' if p['name'] else ''} {_status(p)}, pid {p['pid']}{ready}")

    emit(ctx_of(ctx), process, human)


@app.command("inspect")
def inspect(ctx: typer.Context, ref: Ref, process: Process) -> None:
    """Show one process: command, state, exit status, output size."""
    with client(ctx) as c:
        found = plain(c.vms.processes(ref).get(process))
    emit(ctx_of(ctx), found, _fields)


@app.command("logs")
def logs(
    ctx: typer.Context,
    ref: Ref,
    process: Process,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing output until it ends")] = False,
    tail: Annotated[int | None, typer.Option(min=0, help="start with the last N lines")] = None,
) -> None:
    """Print a process's output (stdout and stderr as written; the oldest may have been rotated away). With --json,
    one JSON document per chunk read."""
    as_json = ctx_of(ctx).json
    with client(ctx) as c:
        procs = c.vms.processes(ref)
        offset = 0
        if tail is not None:
            last = procs.output(process, tail=tail)
            _write(plain(last), as_json)
            offset = last.next_offset
            if not follow:
                return
        chunks = procs.follow(process, offset=offset) if follow else _all(procs, process)
        for chunk in chunks:
            _write(plain(chunk), as_json)


def _all(procs: Any, process: str) -> Any:
    """What is kept of the output now, chunk by chunk."""
    offset = 0
    while True:
        out = procs.output(process, offset=offset)
        yield out
        offset = out.next_offset
        if offset >= out.total_bytes:
            return


def _write(chunk: dict[str, Any], as_json: bool) -> None:
    sys.stdout.write(json.dumps(chunk, sort_keys=True) + "\n" if as_json else chunk["text"])
    sys.stdout.flush()


@app.command("kill")
def kill(
    ctx: typer.Context,
    ref: Ref,
    process: Process,
    signal: Annotated[str, typer.Option("--signal", "-s", help="TERM, KILL, INT, HUP, QUIT, USR1, USR2...")] = "TERM",
) -> None:
    """Send a signal to a running process and its process group (default TERM)."""
    with client(ctx) as c:
        found = plain(c.vms.processes(ref).signal(process, signal.upper().removeprefix("SIG")))
    emit(ctx_of(ctx), found, lambda p: console.print(f"sent SIG{signal.upper().removeprefix('SIG')} to {p['id']}"))


@app.command("wait")
def wait(
    ctx: typer.Context,
    ref: Ref,
    process: Process,
    timeout: Annotated[float, typer.Option(min=0, max=3600, help="seconds to wait at most")] = 30.0,
) -> None:
    """Wait for a process to end; exits with its exit code (1 when killed by a signal, 124 when still running)."""
    with client(ctx) as c:
        found = plain(c.vms.processes(ref).wait(process, timeout_s=timeout))
    emit(ctx_of(ctx), found, lambda p: console.print(f"{p['id']} {_status(p)}"))
    if found["running"]:
        raise typer.Exit(124)
    code = found["exit_code"]
    raise typer.Exit(code if isinstance(code, int) and code >= 0 else 1)
