"""``nexusctl admin cleanup-network`` and ``nexusctl setup-firewall``: host networking maintenance."""

from __future__ import annotations

from typing import Any

import typer

from nexus.cli.common import client, ctx_of
from nexus.cli.output import console, emit, plain

app = typer.Typer(help="Host-level maintenance.", no_args_is_help=True)


def _cleaned(report: dict[str, Any]) -> None:
    links = ", ".join(report["links"]) or "none"
    console.print(f"removed links: {links}")
    console.print(f"nftables table: {'removed' if report['table'] else 'there was none'}")
    if report["leases_dropped"]:
        console.print(f"dropped {report['leases_dropped']} lease(s) of an older subnet (renewed at the next start)")


@app.command("cleanup-network")
def cleanup_network(ctx: typer.Context) -> None:
    """Remove every TAP and bridge nexus made and its nftables table (refused while networked VMs run)."""
    with client(ctx) as c:
        report = plain(c.network.cleanup())
    emit(ctx_of(ctx), report, _cleaned)


def setup_firewall(ctx: typer.Context) -> None:
    """Let the host forward VM traffic: enable ip_forward; with ufw or firewalld active, allow the bridge."""
    with client(ctx) as c:
        result = plain(c.network.setup_firewall())
    emit(ctx_of(ctx), result, lambda r: console.print("\n".join(r["done"])))
