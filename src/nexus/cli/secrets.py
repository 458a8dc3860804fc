"""``nexusctl secret ...``: secrets nexusd adds to a VM's requests on the way out (the VM sees a placeholder).

A value is read from stdin or ``--from-file``, never from the command line (argv is visible to every user of the
host in ``ps`` and lands in shell history); ``secret ls`` never shows one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer

from nexus.cli.common import client, ctx_of
from nexus.cli.output import ago, console, emit, plain, table
from nexus.domain import Invalid
from nexus.domain.egress import MAX_SECRET_BYTES

app = typer.Typer(
    help="Secrets: added by nexusd to a VM's requests to a bound host; the VM only sees a placeholder.",
    no_args_is_help=True,
)


def _read(source: BinaryIO) -> bytes:
    """The value less one trailing newline; a value too long is cut to one byte over the limit after that, for
    nexusd to refuse (with the limit in its words)."""
    data = source.read(MAX_SECRET_BYTES + 3)
    for end in (b"\r\n", b"\n"):
        if data.endswith(end):
            return data[: -len(end)]
    return data


def _value(from_file: Path | None) -> bytes:
    if from_file is not None:
        try:
            with from_file.open("rb") as fh:
                return _read(fh)
        except OSError as exc:
            raise Invalid(f"cannot read {from_file}: {exc.strerror}") from exc
    if sys.stdin.isatty():
        raise Invalid("pipe the value in (… | nexusctl secret set NAME) or give --from-file; never on the command line")
    return _read(sys.stdin.buffer)


def _binding(b: dict[str, Any]) -> str:
    where = f"VM {b['vm_name']}" if b["vm_id"] else f"tag {b['tag']}"
    how = "Authorization: Bearer" if b["bearer"] else b["header"]
    return f"#{b['id']} {b['host']} {how} ({where})"


@app.command("set")
def secret_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="its name, also the environment variable a bound VM sees")],
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="read the value from this file (default: stdin)")
    ] = None,
) -> None:
    """Make secret NAME, or replace its value, from stdin or --from-file (one trailing newline is dropped)."""
    value = _value(from_file)
    with client(ctx) as c:
        made = plain(c.secrets.set(name, value))
    emit(ctx_of(ctx), made, lambda s: console.print(f"secret {s['name']} set ({s['size_bytes']} bytes)"))


@app.command("ls")
def secret_ls(ctx: typer.Context) -> None:
    """List secrets with their bindings (never their values)."""
    with client(ctx) as c:
        secrets = plain(c.secrets.list())
    emit(
        ctx_of(ctx),
        secrets,
        lambda ss: table(
            ["NAME", "SIZE", "UPDATED", "BINDINGS"],
            [
                (
                    s["name"] + ("" if s["usable"] else " (unusable: no value file; set it again)"),
                    s["size_bytes"],
                    ago(s["updated_at"]),
                    "\n".join(_binding(b) for b in s["bindings"]) or "-",
                )
                for s in ss
            ],
        ),
    )


@app.command("rm")
def secret_rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the secret's name")],
    force: Annotated[bool, typer.Option("--force", help="also remove its bindings")] = False,
) -> None:
    """Remove a secret (refused while it is bound, unless --force)."""
    with client(ctx) as c:
        c.secrets.remove(name, force=force)
    emit(ctx_of(ctx), {"removed": name}, lambda _: console.print(f"removed secret {name}"))


@app.command("bind")
def secret_bind(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the secret's name")],
    host: Annotated[str, typer.Option("--host", help="the one host whose requests get it: api.example.com")],
    vm: Annotated[str | None, typer.Option("--vm", help="for this VM (name or id)")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="for every VM with this tag (K=V)")] = None,
    header: Annotated[str | None, typer.Option("--header", help="in this header: x-api-key")] = None,
    bearer: Annotated[bool, typer.Option("--bearer", help="as Authorization: Bearer <value>")] = False,
) -> None:
    """Have nexusd put secret NAME in --header (or --bearer) of requests to --host from --vm or --tag's VMs."""
    with client(ctx) as c:
        made = plain(c.secrets.bind(name, host, vm=vm, tag=tag, header=header, bearer=bearer))
    emit(ctx_of(ctx), made, lambda b: console.print(f"secret {b['secret']} bound: {_binding(b)}"))


@app.command("unbind")
def secret_unbind(
    ctx: typer.Context, binding_id: Annotated[int, typer.Argument(metavar="ID", help="the binding's id")]
) -> None:
    """Remove a binding: the proxy stops adding the secret there."""
    with client(ctx) as c:
        c.secrets.unbind(binding_id)
    emit(ctx_of(ctx), {"removed": binding_id}, lambda _: console.print(f"removed binding {binding_id}"))
