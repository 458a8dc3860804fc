"""Helpers every command module uses: the global options and a client built from them."""

from __future__ import annotations

from pathlib import Path

import typer

from nexus.cli.output import Ctx
from nexus.client import NexusClient
from nexus.domain import Invalid


def ctx_of(ctx: typer.Context) -> Ctx:
    obj = ctx.find_root().obj
    if not isinstance(obj, Ctx):
        raise RuntimeError("global options were not parsed")
    return obj


def client(ctx: typer.Context) -> NexusClient:
    obj = ctx_of(ctx)
    return NexusClient(
        Path(obj.socket) if obj.socket else None,
        url=obj.url,
        token=obj.token,
        ca_file=Path(obj.ca_file) if obj.ca_file else None,
        timeout_s=600.0,
    )


def read_token(token_file: Path | None, token: str | None) -> str | None:
    """The bearer token: from ``token_file`` when given, else ``token`` ($NEXUS_TOKEN)."""
    if token_file is None:
        return token or None
    try:
        text = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise Invalid(f"cannot read token file {token_file}: {exc.strerror}") from exc
    if not text:
        raise Invalid(f"token file {token_file} is empty")
    return text
