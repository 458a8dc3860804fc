"""``nexusctl settings ...``: preferences such as default image, kernel, vCPUs, memory and VMM."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from nexus.cli.common import client, ctx_of
from nexus.cli.output import emit, plain, table

app = typer.Typer(help="Show and change preferences.", no_args_is_help=True)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _rows(settings: list[dict[str, Any]]) -> None:
    table(
        ["KEY", "VALUE", "DEFAULT", "DESCRIPTION"],
        [(s["key"], _show(s["value"]), _show(s["default"]), s["description"]) for s in settings],
    )


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List every setting with its value and default."""
    with client(ctx) as c:
        result = plain(c.settings.list())
    emit(ctx_of(ctx), result, _rows)


@app.command("get")
def get(ctx: typer.Context, key: str) -> None:
    """Print one setting's value."""
    with client(ctx) as c:
        result = plain(c.settings.get(key))
    emit(ctx_of(ctx), result, lambda s: print(_show(s["value"])))


@app.command("set")
def set_(
    ctx: typer.Context,
    key: str,
    value: Annotated[str, typer.Argument(help='the value; JSON (2, true, ["a"]) or plain text')],
) -> None:
    """Change one setting."""
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    with client(ctx) as c:
        result = plain(c.settings.set(key, parsed))
        driver = plain(c.health())["driver"] if key == "vmm" else None

    def show(s: dict[str, Any]) -> None:
        print(f"{s['key']} = {_show(s['value'])}")
        if driver is not None:  # the choice applies at once, to the VMs started from now on
            print(f"VMs started from now on: {driver['name'] or 'none'} ({driver['reason']}); running VMs keep theirs")

    emit(ctx_of(ctx), result, show)
