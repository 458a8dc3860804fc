"""Helpers every command module uses: the global options and a client built from them."""

from __future__ import annotations

from pathlib import Path

import typer

from nexus.cli.output import Ctx
from nexus.client import NexusClient


def ctx_of(ctx: typer.Context) -> Ctx:
    obj = ctx.find_root().obj
    if not isinstance(obj, Ctx):
        raise RuntimeError("global options were not parsed")
    return obj


def client(ctx: typer.Context) -> NexusClient:
    socket = ctx_of(ctx).socket
    return NexusClient(Path(socket) if socket else None, timeout_s=600.0)
