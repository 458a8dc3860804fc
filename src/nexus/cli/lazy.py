"""Command groups whose modules are imported only when a command of theirs runs (or help lists them).

Every nexusctl call is a new process: building all ~50 commands and importing every module behind them cost more
than the command itself. ``nexusctl version`` now builds two commands, ``nexusctl vm list`` the ``vm`` group."""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

# name → "module:attribute": a Typer app (a group) or a function (one command)
LAZY: dict[str, str] = {
    "vm": "nexus.cli.vm:app",
    "kernel": "nexus.cli.assets:kernel_app",
    "image": "nexus.cli.assets:image_app",
    "firecracker": "nexus.cli.assets:firecracker_app",
    "settings": "nexus.cli.settings:app",
    "admin": "nexus.cli.admin:app",
    "setup-firewall": "nexus.cli.admin:setup_firewall",
    "drive": "nexus.cli.workspaces:drive_app",
    "snapshot": "nexus.cli.workspaces:snapshot_app",
    "token": "nexus.cli.tokens:app",
    "policy": "nexus.cli.policy:app",
    "secret": "nexus.cli.secrets:app",
    "pool": "nexus.cli.pools:app",
    "audit": "nexus.cli.audit:audit",
}


def load(name: str) -> Any:
    """The click command for lazy entry ``name`` (imports its module)."""
    module, _, attr = LAZY[name].partition(":")
    target = getattr(importlib.import_module(module), attr)
    holder = typer.Typer()  # mounted as add_typer/command would mount it on the root
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    built = typer.main.get_command(holder)
    return built.commands[name] if isinstance(built, TyperGroup) else built


class LazyGroup(TyperGroup):
    """nexusctl's root: its own commands built at once, the groups of ``LAZY`` when asked for."""

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY})

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in LAZY:
            self.commands[cmd_name] = load(cmd_name)
        return super().get_command(ctx, cmd_name)
