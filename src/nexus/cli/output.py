"""Printing results: exactly one JSON document with --json, Rich tables otherwise."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

# Piped output is not cut to 80 columns: whole ids and names matter more than a tidy width there.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 4096)


@dataclass(frozen=True, slots=True)
class Ctx:
    """What every command gets from the global options."""

    socket: str | None
    json: bool
    url: str | None = None  # nexusd's TCP listener instead of the socket
    token: str | None = None  # its bearer token
    ca_file: str | None = None  # the CA an https:// --url's certificate is checked against


def plain(value: Any) -> Any:
    """What the SDK returned (models, lists of them) as the JSON a --json reader gets and the tables render."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def emit(ctx: Ctx, data: Any, human: Callable[[Any], None]) -> None:
    if ctx.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        human(data)


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*("" if cell is None else str(cell) for cell in row))
    console.print(t)


def fields(pairs: Iterable[tuple[str, object]]) -> None:
    t = Table(box=None, pad_edge=False, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for key, value in pairs:
        t.add_row(key, "" if value is None else str(value))
    console.print(t)


def ago(stamp: str) -> str:
    """'3m ago'-style age of an ISO timestamp, as container tools show it."""
    seconds = max(0, int((datetime.now().astimezone() - datetime.fromisoformat(stamp)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
