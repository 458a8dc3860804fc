"""``nexusctl pool ...``: warm pools, templates of VMs nexusd keeps booted so that a matching ``vm run`` is ready
at once."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nexus.cli.common import client, ctx_of
from nexus.cli.output import console, emit, plain, table

app = typer.Typer(
    help="Warm pools: VMs kept booted per template; a `vm run` of exactly that shape takes one, ready at once.",
    no_args_is_help=True,
)

PoolName = Annotated[str, typer.Argument(help="the pool's name")]


def _shape(p: dict[str, Any]) -> str:
    net = "no network" if not p["network"] else f"egress {p['egress']}"
    return f"{p['image']}, {p['vcpus']} vCPU, {p['mem_mib']} MiB, {net}"


@app.command("set")
def pool_set(
    ctx: typer.Context,
    name: PoolName,
    size: Annotated[int, typer.Option("--size", help="ready VMs to keep (0-16)")],
    image: Annotated[str | None, typer.Option(help="image name (default from settings)")] = None,
    vcpus: Annotated[int | None, typer.Option(help="vCPUs (default from settings)")] = None,
    mem: Annotated[int | None, typer.Option(help="memory in MiB (default from settings)")] = None,
    no_network: Annotated[bool, typer.Option("--no-network", help="its VMs have no NIC")] = False,
    egress: Annotated[
        str | None, typer.Option(metavar="MODE", help="open, none or proxy [default: default_egress]")
    ] = None,
) -> None:
    """Make or replace pool NAME (defaults resolved now); nexusd boots its VMs in the background."""
    with client(ctx) as c:
        pool = plain(
            c.pools.set(
                name,
                size,
                image=image,
                vcpus=vcpus,
                mem_mib=mem,
                network=False if no_network else None,
                egress=egress,
            )
        )
    emit(ctx_of(ctx), pool, lambda p: console.print(f"pool {p['name']}: {p['size']} x {_shape(p)}"))


@app.command("ls")
def pool_ls(ctx: typer.Context) -> None:
    """List pools: their shape, and how many VMs are ready and booting of the size each keeps."""
    with client(ctx) as c:
        pools = plain(c.pools.list())
    emit(
        ctx_of(ctx),
        pools,
        lambda ps: table(
            ["NAME", "READY", "BOOTING", "SIZE", "SHAPE", "PROBLEM"],
            [(p["name"], p["ready"], p["booting"], p["size"], _shape(p), p["problem"] or "") for p in ps],
        ),
    )


@app.command("rm")
def pool_rm(ctx: typer.Context, name: PoolName) -> None:
    """Remove pool NAME; its idle VMs are removed (VMs claimed from it are users' and stay)."""
    with client(ctx) as c:
        c.pools.remove(name)
    emit(ctx_of(ctx), {"removed": name}, lambda _: console.print(f"removed pool {name}"))
