"""Helpers every command module uses: the global options and a client built from them."""

from __future__ import annotations

from pathlib import Path

import typer

from nexus.cli.output import Ctx
from nexus.domain import Invalid
from nexus.sdk import Nexus


def ctx_of(ctx: typer.Context) -> Ctx:
    obj = ctx.find_root().obj
    if not isinstance(obj, Ctx):
        raise RuntimeError("global options were not parsed")
    return obj


def client(ctx: typer.Context) -> Nexus:
    """The SDK's client, reaching nexusd as the global options say."""
    obj = ctx_of(ctx)
    return Nexus(obj.socket, url=obj.url, token=obj.token, ca_file=obj.ca_file, timeout=600.0)


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
