"""``nexusctl``: the CLI over nexusd's API. Global options, top-level commands, and the one place errors
become exit codes and a single line on stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nexus import __version__
from nexus.cli.common import client, ctx_of, read_token
from nexus.cli.errors import ERROR, exit_code_for, in_cli_words
from nexus.cli.lazy import LazyGroup
from nexus.cli.output import Ctx, console, emit, fields, plain
from nexus.client import Connection, DaemonUnreachable
from nexus.domain import Invalid, NexusError

app = typer.Typer(
    name="nexusctl",
    help="Nexus: a computer for every AI agent. Manage microVMs through nexusd.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=LazyGroup,  # the vm, image, drive… groups are built only when used (start-up time)
)


@app.callback()
def root(
    ctx: typer.Context,
    socket: Annotated[
        str | None,
        typer.Option(envvar="NEXUS_SOCKET", help="nexusd API socket [default: /run/nexus/nexusd.sock]"),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="print one JSON document instead of tables")] = False,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="NEXUS_URL", help="reach nexusd's TCP listener (http[s]://HOST:PORT) instead of the socket"
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="NEXUS_TOKEN_FILE", help="file holding the bearer token for --url (or the token in $NEXUS_TOKEN)"
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(envvar="NEXUS_CA_FILE", help="CA certificate (PEM) that an https:// --url is checked against"),
    ] = None,
) -> None:
    token = read_token(token_file, os.environ.get("NEXUS_TOKEN"))
    if token is not None and url is None:
        raise Invalid("a token is only sent over TCP: give --url (or $NEXUS_URL) too")
    if ca_file is not None and not (url or "").startswith("https://"):
        raise Invalid("--ca-file checks a TLS listener: give an https:// --url (or $NEXUS_URL) too")
    ctx.obj = Ctx(socket=socket, json=json_, url=url, token=token, ca_file=str(ca_file) if ca_file else None)


@app.command()
def status(ctx: typer.Context) -> None:
    """Show whether nexusd is up, its version, VM count, VMM driver, storage backend, the VMs' way out and the warm
    pools."""
    with client(ctx) as c:
        health = plain(c.health())
    driver, storage, network = health["driver"], health["storage"], health["network"]
    emit(
        ctx_of(ctx),
        health,
        lambda h: fields(
            [
                ("nexusd", f"{h['status']} (version {h['version']})"),
                ("vms", h["vms"]),
                ("vmm", f"{driver['name'] or 'none'} ({driver['reason']})"),
                ("storage", f"{storage['name']} ({storage['reason']})"),
                ("network", f"{'ok' if network['egress'] else 'NO WAY OUT'} ({network['reason']})"),
                *[(f"pool {p['name']}", _pool_line(p)) for p in h["pools"]],
            ]
        ),
    )


def _pool_line(p: dict[str, Any]) -> str:
    line = f"{p['ready']}/{p['size']} ready, {p['booting']} booting"
    return f"{line}; last boot failed: {p['problem']}" if p["problem"] else line


@app.command()
def version(ctx: typer.Context) -> None:
    """Print nexusctl's and nexusd's versions."""
    daemon: str | None = None
    unreachable: DaemonUnreachable | None = None
    try:
        with client(ctx) as c:
            daemon = c.health().version
    except DaemonUnreachable as exc:
        unreachable = exc
    emit(
        ctx_of(ctx),
        {"client": __version__, "daemon": daemon},
        lambda v: console.print(f"nexusctl {v['client']}\nnexusd   {v['daemon'] or 'unreachable'}"),
    )
    if unreachable is not None:
        raise unreachable


@app.command("mcp-bridge")
def mcp_bridge_command(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="VM name or id")],
    keepalive: Annotated[
        float,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="ping nexusd after this long without a message, so an idle session does not time out (0: never)",
        ),
    ] = 60.0,  # mcp_bridge.KEEPALIVE_S, not imported for every command (tests/unit/test_cli_help.py checks)
) -> None:
    """Serve VM REF's tools as MCP over stdio (for Claude Code and other MCP clients), forwarded to nexusd.

    A session nexusd closed (idle past its timeout, or nexusd restarted) is reopened transparently."""
    import asyncio

    from nexus.cli import mcp_bridge  # the MCP SDK takes ~0.6 s to import: only the bridge pays for it

    obj = ctx_of(ctx)
    ca_file = Path(obj.ca_file) if obj.ca_file else None
    target = Connection(Path(obj.socket) if obj.socket else None, obj.url, obj.token, ca_file)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(mcp_bridge.bridge(target, ref, keepalive))


def _hoist_global_flags(args: list[str]) -> list[str]:
    """Let ``--json`` stand anywhere before ``--`` (``nexusctl vm list --json``), as users expect."""
    end = args.index("--") if "--" in args else len(args)
    if "--json" not in args[:end]:
        return args
    return ["--json", *(a for i, a in enumerate(args) if not (i < end and a == "--json"))]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; NexusErrors become one line on stderr and the exit code from the table."""
    args = _hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    try:
        typer.main.get_command(app).main(args=args, prog_name="nexusctl", standalone_mode=True)
    except NexusError as exc:
        print(f"nexusctl: {in_cli_words(exc.message)}", file=sys.stderr)
        return exit_code_for(exc)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
