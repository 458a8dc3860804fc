"""``nexusctl token ...``: agent tokens, each opening one VM's MCP endpoint over TCP and nothing else.

``token create`` prints the token once (nexusd keeps only its hash); ``token ls`` never shows it.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from nexus.cli.common import client, ctx_of
from nexus.cli.output import ago, console, emit, plain, table

app = typer.Typer(help="Agent tokens: each opens one VM's MCP endpoint over TCP, nothing else.", no_args_is_help=True)


def _expiry(token: dict[str, Any]) -> str:
    expires = token["expires_at"]
    if expires is None:
        return "never"
    when = datetime.fromisoformat(expires)
    return f"{expires} (expired)" if when <= datetime.now().astimezone() else expires


@app.command("create")
def token_create(
    ctx: typer.Context,
    vm: Annotated[str, typer.Option("--vm", help="the VM (name or id) whose MCP endpoint the token opens")],
    expires: Annotated[
        str | None, typer.Option(help="lifetime: 30m, 1h, 7d, 2w... (default: valid until removed)")
    ] = None,
) -> None:
    """Make an agent token for VM --vm and print it. It is shown this once: nexusd keeps only its hash."""
    opts = ctx_of(ctx)
    with client(ctx) as c:
        made = plain(c.tokens.create(vm, expires=expires))

    def human(t: dict[str, Any]) -> None:
        print(t["token"])  # alone on stdout, so `nexusctl token create --vm X > file` saves just the token
        expiry = f"until {t['expires_at']}" if t["expires_at"] else "until removed"
        print(
            f"token {t['id']} opens VM {t['vm_name']}'s MCP endpoint ({expiry}); it is not shown again",
            file=sys.stderr,
        )

    emit(opts, made, human)


@app.command("ls")
def token_ls(
    ctx: typer.Context,
    vm: Annotated[str | None, typer.Option("--vm", help="only this VM's tokens")] = None,
) -> None:
    """List agent tokens (never their secrets)."""
    with client(ctx) as c:
        tokens = plain(c.tokens.list(vm=vm))
    emit(
        ctx_of(ctx),
        tokens,
        lambda ts: table(
            ["ID", "VM", "CREATED", "EXPIRES", "LAST USED"],
            [
                (
                    t["id"],
                    t["vm_name"],
                    ago(t["created_at"]),
                    _expiry(t),
                    ago(t["last_used"]) if t["last_used"] else "never",
                )
                for t in ts
            ],
        ),
    )


@app.command("rm")
def token_rm(ctx: typer.Context, token_id: Annotated[str, typer.Argument(metavar="ID", help="the token's id")]) -> None:
    """Remove an agent token: requests with it get 401 from now on."""
    with client(ctx) as c:
        c.tokens.remove(token_id)
    emit(ctx_of(ctx), {"removed": token_id}, lambda _: console.print(f"removed token {token_id}"))
