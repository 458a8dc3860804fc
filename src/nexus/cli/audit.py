"""``nexusctl audit``: what was done through nexusd, by whom, to which VM (never with the arguments' contents).

The newest entries are shown oldest first, so the latest is at the bottom where ``-f`` goes on adding them.
``--json`` prints the API's page; with ``-f``, one JSON entry per line instead (a stream has no single document).
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import datetime
from typing import Annotated, Any

import typer

from nexus.cli.common import client, ctx_of
from nexus.cli.output import console, plain, table
from nexus.domain import Invalid, parse_lifetime

COLUMNS = ["ID", "TIME", "CALLER", "VIA", "ACTION", "TARGET", "DECISION", "MS", "RESULT"]
_AGO_RE = re.compile(r"\d+[smhdw]")


def parse_since(text: str) -> datetime:
    """``10m``, ``2h``, ``7d`` ago, or an ISO time (local time when it names no zone)."""
    try:
        if _AGO_RE.fullmatch(text.strip().lower()):
            return datetime.now().astimezone() - parse_lifetime(text)
        when = datetime.fromisoformat(text)
    except (ValueError, Invalid):
        raise Invalid(f"--since takes a duration such as 10m, 2h, 7d or an ISO time, got {text!r}") from None
    return when if when.tzinfo is not None else when.astimezone()


def _row(e: dict[str, Any]) -> tuple[object, ...]:
    at = datetime.fromisoformat(e["at"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    decision = e["decision"] if e["rule"] is None else f"{e['decision']} (rule {e['rule']})"
    result = (e["reason"] or "denied") if e["decision"] == "deny" else ("error" if e["is_error"] else "ok")
    target = e["target"] or ""
    return (e["id"], at, e["caller"], e["via"], e["action"], target, decision, f"{e['duration_ms']:.0f}", result)


def audit(
    ctx: typer.Context,
    vm: Annotated[str | None, typer.Option("--vm", help="only entries about this VM (a removed one's too)")] = None,
    since: Annotated[str | None, typer.Option(help="only entries since: 10m, 2h, 7d, or an ISO time")] = None,
    caller: Annotated[
        str | None, typer.Option(help="only this caller: host, admin, token:<id>, vm:<name>, anonymous")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="the newest this many entries")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="then show new entries as they come, until ^C")
    ] = False,
) -> None:
    """Show the audit log: every management action and routed call, who made it, the VM, the decision."""
    opts = ctx_of(ctx)
    since_at = parse_since(since) if since is not None else None
    with client(ctx) as c:
        page = c.audit.list(vm=vm, caller=caller, since=since_at, limit=limit)
        if not follow:
            shown = plain(page)
            if opts.json:
                print(json.dumps(shown, indent=2, sort_keys=True))
            else:
                table(COLUMNS, [_row(e) for e in reversed(shown["entries"])])
            return

        def show(entry: dict[str, Any]) -> None:
            if opts.json:
                print(json.dumps(entry, sort_keys=True), flush=True)
            else:
                console.print("  ".join(str(cell) for cell in _row(entry)))

        for entry in reversed(page.entries):
            show(plain(entry))
        # after the newest shown (0 when none: what matched nothing so far, from since on, cannot be older)
        after = page.next_after or 0
        with contextlib.suppress(KeyboardInterrupt):
            for entry in c.audit.follow(vm=vm, caller=caller, since=since_at, after=after):
                show(plain(entry))
