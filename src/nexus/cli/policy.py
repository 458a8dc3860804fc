"""``nexusctl policy ...``: the rules that let portal VMs use work VMs through their gateway (default deny)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nexus.cli.common import client, ctx_of
from nexus.cli.output import ago, console, emit, plain, table
from nexus.schemas import PolicyCreate

app = typer.Typer(
    help="Portal policy: which work VMs a portal VM may use through its gateway, with which tools (default deny).",
    no_args_is_help=True,
)


@app.command("allow")
def policy_allow(
    ctx: typer.Context,
    portal: Annotated[str, typer.Argument(help="the portals it applies to: a VM name, or tag:TAG")],
    work: Annotated[str, typer.Argument(help="the VMs they may use: a VM name, tag:TAG, or @created")],
    tools: Annotated[
        str, typer.Option(help="comma-separated guest tools allowed on them (run_command,file_read,...), or *")
    ] = "",
    calls_per_minute: Annotated[int | None, typer.Option(min=1, help="per portal")] = None,
    max_concurrent: Annotated[int | None, typer.Option(min=1, help="calls at once per portal")] = None,
    max_result_bytes: Annotated[int | None, typer.Option(min=1, help="a bigger result is refused")] = None,
    manage: Annotated[bool, typer.Option(help="the portal may create VMs and manage those it created")] = False,
    max_vms: Annotated[int | None, typer.Option(min=1, help="with --manage: VMs at once [default: 1]")] = None,
    image: Annotated[
        list[str] | None, typer.Option(help="with --manage: an image it may use (repeat; default any)")
    ] = None,
    max_vcpus: Annotated[int | None, typer.Option(help="with --manage: vCPUs per VM")] = None,
    max_mem: Annotated[int | None, typer.Option(help="with --manage: memory per VM, MiB")] = None,
) -> None:
    """Let portals PORTAL use the VMs WORK through their gateway: the --tools named, within the limits given."""
    rule = PolicyCreate(
        portal=portal,
        work=work,
        tools=[t.strip() for t in tools.split(",") if t.strip()],
        calls_per_minute=calls_per_minute,
        max_concurrent=max_concurrent,
        max_result_bytes=max_result_bytes,
        manage=manage,
        max_vms=max_vms,
        images=image or [],
        max_vcpus=max_vcpus,
        max_mem_mib=max_mem,
    )
    with client(ctx) as c:
        made = plain(c.policies.allow(**rule.model_dump(exclude_defaults=True)))
    emit(ctx_of(ctx), made, lambda r: console.print(f"rule {r['id']}: {_summary(r)}"))


def _limits(rule: dict[str, Any]) -> str:
    words = (("calls_per_minute", "calls/min"), ("max_concurrent", "at once"), ("max_result_bytes", "result bytes"))
    return ", ".join(f"{rule[key]} {word}" for key, word in words if rule[key] is not None)


def _manage(rule: dict[str, Any]) -> str:
    if not rule["manage"]:
        return ""
    parts = [f"max {rule['max_vms']} VMs"]
    if rule["images"]:
        parts.append("images " + ", ".join(rule["images"]))
    if rule["max_vcpus"] is not None:
        parts.append(f"≤ {rule['max_vcpus']} vCPUs")
    if rule["max_mem_mib"] is not None:
        parts.append(f"≤ {rule['max_mem_mib']} MiB")
    return "manage: " + ", ".join(parts)


def _summary(rule: dict[str, Any]) -> str:
    extras = "; ".join(x for x in (_limits(rule), _manage(rule)) if x)
    return f"{rule['portal']} → {rule['work']}: {', '.join(rule['tools']) or 'no tools'}" + (
        f" ({extras})" if extras else ""
    )


@app.command("ls")
def policy_ls(ctx: typer.Context) -> None:
    """List the rules, oldest first (the first one allowing a call decides)."""
    with client(ctx) as c:
        rules = plain(c.policies.list())
    emit(
        ctx_of(ctx),
        rules,
        lambda rs: table(
            ["ID", "PORTAL", "WORK", "TOOLS", "LIMITS", "MANAGE", "CREATED"],
            [
                (
                    r["id"],
                    r["portal"],
                    r["work"],
                    ", ".join(r["tools"]) or "-",
                    _limits(r) or "-",
                    _manage(r).removeprefix("manage: ") or "-",
                    ago(r["created_at"]),
                )
                for r in rs
            ],
        ),
    )


@app.command("rm")
def policy_rm(ctx: typer.Context, rule_id: Annotated[int, typer.Argument(metavar="ID", help="the rule's id")]) -> None:
    """Remove a rule: the next call it allowed is refused."""
    with client(ctx) as c:
        c.policies.remove(rule_id)
    emit(ctx_of(ctx), {"removed": rule_id}, lambda _: console.print(f"removed rule {rule_id}"))
