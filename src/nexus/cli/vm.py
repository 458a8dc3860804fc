"""``nexusctl vm ...``: create, list, inspect, start, stop, remove, logs, history, tags (background processes:
``vm proc``/``vm ps``, in ``nexus.cli.processes``; terminals: ``vm shell``, ``vm exec -t``, in
``nexus.cli.terminal``)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from nexus.cli import processes, terminal, transfer, treecopy
from nexus.cli.common import client, ctx_of
from nexus.cli.output import ago, console, emit, fields, plain, table
from nexus.cli.progress import progress, stderr
from nexus.cli.workspaces import vm_checkpoint, vm_clone, vm_fork, vm_restore
from nexus.domain import parse_lifetime

app = typer.Typer(help="Manage microVMs.", no_args_is_help=True)
tag_app = typer.Typer(help="Manage a VM's tags.", no_args_is_help=True)
app.add_typer(tag_app, name="tag")
app.command("clone")(vm_clone)  # lives with the other workspace commands
app.command("checkpoint")(vm_checkpoint)
app.command("restore")(vm_restore)
app.command("fork")(vm_fork)
app.add_typer(processes.app, name="proc")
app.command("ps")(processes.ps)
app.command("shell")(terminal.shell)

Ref = Annotated[str, typer.Argument(help="VM name or id (a unique id prefix works too)")]


def _vm_table(vms: list[dict[str, Any]]) -> None:
    table(
        ["ID", "NAME", "STATE", "ADDRESS", "ROLE", "VCPUS", "MEM", "IMAGE", "TAGS", "CREATED"],
        [
            (
                vm["id"],
                vm["name"],
                vm["state"],
                vm["network"]["address"] if vm.get("network") else "-",
                vm["role"],
                vm["vcpus"],
                f"{vm['mem_mib']} MiB",
                vm["image"],
                ",".join(vm["tags"]),
                ago(vm["created_at"]),
            )
            for vm in vms
        ],
    )


def _show(value: Any) -> Any:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):  # the network: address/prefix via gateway, and its ports
        ports = ", ".join(value.get("ports") or []) or "none published"
        where = f"{value['address']}/{value['prefix_len']} via {value['gateway']}"
        return f"{where} ({value['mac']}, {value['tap']}); ports: {ports}"
    return value


# Options `vm create` and `vm run` share.
NewName = Annotated[str, typer.Argument(help="unique name: lowercase letters, digits, '-'")]
Vcpus = Annotated[int | None, typer.Option(help="vCPUs (1-32; default from settings)")]
MemMib = Annotated[int | None, typer.Option(help="memory in MiB (64-65536; default from settings)")]
ImageName = Annotated[str | None, typer.Option(help="image name (default from settings)")]
Tags = Annotated[list[str] | None, typer.Option(help="tag the VM (repeatable)")]
Publish = Annotated[
    list[str] | None,
    typer.Option(
        "--publish", "-p", help=r"HOSTPORT:GUESTPORT\[/tcp|udp]: the host's port reaches the VM's (repeatable)"
    ),
]
NoNetwork = Annotated[bool, typer.Option("--no-network", help="no NIC: the VM is not on the network")]
Egress = Annotated[
    str | None,
    typer.Option(
        metavar="MODE", help="open (NAT), none, or proxy (only --allow hosts, through nexusd) [default: default_egress]"
    ),
]
Allow = Annotated[
    list[str] | None,
    typer.Option(
        "--allow", metavar="HOST", help="a host its egress proxy lets through: HOST or *.DOMAIN[:PORT,...] (repeat)"
    ),
]


Ttl = Annotated[
    str | None, typer.Option("--ttl", metavar="DURATION", help="expire this long after creation: 90s, 30m, 2h, 7d")
]
TtlAction = Annotated[str, typer.Option("--ttl-action", metavar="ACTION", help="on expiry: stop, or rm")]
IdleSuspend = Annotated[
    str | None,
    typer.Option(
        "--idle-suspend",
        metavar="DURATION",
        help="suspend it (memory saved, VMM stopped) after this long unused; the next use resumes it",
    ),
]


def _lifetime(ttl: str | None, ttl_action: str, idle_suspend: str | None) -> dict[str, Any]:
    """The create fields of ``--ttl``, ``--ttl-action`` and ``--idle-suspend`` (durations in seconds)."""
    seconds = {
        "ttl_s": int(parse_lifetime(ttl, "--ttl").total_seconds()) if ttl else None,
        "idle_suspend_s": int(parse_lifetime(idle_suspend, "--idle-suspend").total_seconds()) if idle_suspend else None,
    }
    return {**seconds, "on_expiry": ttl_action}


def _vm_fields(vm: dict[str, Any]) -> None:
    fields((key, _show(value)) for key, value in vm.items())


@app.command("create")
def create(
    ctx: typer.Context,
    name: NewName,
    vcpus: Vcpus = None,
    mem: MemMib = None,
    role: Annotated[str | None, typer.Option(help="work, portal or service")] = None,
    image: ImageName = None,
    kernel: Annotated[str | None, typer.Option(help="kernel version or flavour (default from settings)")] = None,
    tag: Tags = None,
    publish: Publish = None,
    no_network: NoNetwork = False,
    egress: Egress = None,
    allow: Allow = None,
    ttl: Ttl = None,
    ttl_action: TtlAction = "stop",
    idle_suspend: IdleSuspend = None,
) -> None:
    """Create a VM (it is not started)."""
    with client(ctx) as c:
        vm = c.vms.create(
            name,
            vcpus=vcpus,
            mem_mib=mem,
            role=role,
            image=image,
            kernel=kernel,
            tags=tag or None,
            publish=publish or None,
            network=False if no_network else None,
            egress=egress,
            allow=allow or None,
            **_lifetime(ttl, ttl_action, idle_suspend),
        )
    emit(ctx_of(ctx), plain(vm), lambda v: console.print(f"created {v['name']} ({v['id']})"))


@app.command("list")
def list_(
    ctx: typer.Context,
    role: Annotated[str | None, typer.Option(help="only VMs with this role")] = None,
    state: Annotated[str | None, typer.Option(help="only VMs in this state")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="only VMs with this tag (repeatable: all must match)")] = None,
) -> None:
    """List VMs."""
    with client(ctx) as c:
        vms = plain(c.vms.list(role=role, state=state, tags=tuple(tag or ())))
    emit(ctx_of(ctx), vms, _vm_table)


@app.command("inspect")
def inspect(ctx: typer.Context, ref: Ref) -> None:
    """Show everything about one VM."""
    with client(ctx) as c:
        vm = plain(c.vms.get(ref))
    emit(ctx_of(ctx), vm, _vm_fields)


@app.command("rm")
def rm(
    ctx: typer.Context,
    ref: Ref,
    force: Annotated[bool, typer.Option("--force", "-f", help="stop the VM first if it is running")] = False,
) -> None:
    """Remove a VM. Refuses (exit 5) while it runs, unless --force."""
    with client(ctx) as c:
        vm = plain(c.vms.get(ref))
        c.vms.remove(vm["id"], force=force)
    emit(
        ctx_of(ctx),
        {"removed": vm["id"], "name": vm["name"]},
        lambda _: console.print(f"removed {vm['name']}"),
    )


def _boot(ctx: typer.Context, ref: str, wait: bool) -> dict[str, Any]:
    """Fetch/build what the VM needs (with progress), then start it."""
    opts = ctx_of(ctx)
    with client(ctx) as c:
        with progress("preparing", show=not opts.json and stderr.is_terminal) as on_progress:
            c.vms.prepare(ref, on_progress=on_progress)
        if wait and not opts.json and stderr.is_terminal:
            with stderr.status(f"booting {ref}..."):
                vm = c.vms.start(ref, wait=True)
        else:
            vm = c.vms.start(ref, wait=wait)
        if vm.network is not None:
            egress = c.health().network
            if not egress.egress:  # say it plainly: a VM without internet is a puzzle otherwise
                stderr.print(f"warning: {vm.name} has no way out of this host: {egress.reason}", markup=False)
        result: dict[str, Any] = plain(vm)
        return result


@app.command("start")
def start(
    ctx: typer.Context,
    ref: Ref,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="return once the VMM runs, before the agent is up")
    ] = False,
) -> None:
    """Start a VM; by default returns once its agent says hello."""
    vm = _boot(ctx, ref, wait=not no_wait)
    emit(ctx_of(ctx), vm, lambda v: console.print(f"{v['name']} {v['state']}"))


@app.command("run")
def run(
    ctx: typer.Context,
    name: NewName,
    image: ImageName = None,
    vcpus: Vcpus = None,
    mem: MemMib = None,
    tag: Tags = None,
    publish: Publish = None,
    no_network: NoNetwork = False,
    egress: Egress = None,
    allow: Allow = None,
    ttl: Ttl = None,
    ttl_action: TtlAction = "stop",
    idle_suspend: IdleSuspend = None,
) -> None:
    """Create a VM, start it, and wait until its agent is ready; a warm pool of exactly this shape gives a ready
    VM at once instead (see `nexusctl pool`)."""
    with client(ctx) as c:
        created = plain(
            c.vms.create(
                name,
                image=image,
                vcpus=vcpus,
                mem_mib=mem,
                tags=tag or None,
                publish=publish or None,
                network=False if no_network else None,
                egress=egress,
                allow=allow or None,
                claim=True,
                **_lifetime(ttl, ttl_action, idle_suspend),
            )
        )
    vm = created if created["state"] == "ready" else _boot(ctx, created["id"], wait=True)
    emit(
        ctx_of(ctx), vm, lambda v: console.print(f"{v['name']} {v['state']} ({v['vmm']}/{v['accel']}, pid {v['pid']})")
    )


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    ctx: typer.Context,
    ref: Ref,
    command: Annotated[list[str], typer.Argument(help="the command and its arguments (after --)")],
    shell: Annotated[bool, typer.Option("--shell", "-s", help="run the words as one /bin/sh -c script")] = False,
    workdir: Annotated[str | None, typer.Option("--workdir", "-w", help="working directory in the guest")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE (repeatable)")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="seconds before the command is killed [default: 600; not with -t]")
    ] = None,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="send stdin to the command")] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="run it on a terminal (PTY), as `vm shell` does")] = False,
) -> None:
    """Run a command in the VM, streaming its stdout and stderr; exits with the command's exit code. With -t it runs
    on a terminal (stdout and stderr as one), with -i it gets stdin (-it: an interactive program)."""
    environment = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--env wants KEY=VALUE, got {item!r}")
        environment[key] = value
    if command[:1] == ["--"]:  # click keeps the separator when interspersed args are off
        command = command[1:]
    if not command:
        raise typer.BadParameter("no command given (nexusctl vm exec REF -- CMD [ARGS...])")
    argv: str | list[str] = " ".join(command) if shell else command
    if tty:
        if timeout is not None:
            raise typer.BadParameter("--timeout does not apply to a terminal (-t): it runs until it ends")
        words = ["/bin/sh", "-c", argv] if isinstance(argv, str) else argv
        raise typer.Exit(
            terminal.run_terminal(ctx, ref, words, cwd=workdir, env=environment, forward_input=interactive)
        )
    stdin = sys.stdin.read() if interactive else None
    timeout = 600.0 if timeout is None else timeout

    def write(stream: str, text: str) -> None:
        out = sys.stderr if stream == "stderr" else sys.stdout
        out.write(text)
        out.flush()

    with client(ctx) as c:
        result = c.vms.exec(
            ref, argv, cwd=workdir, env=environment or None, stdin=stdin, timeout_s=timeout, on_output=write
        )
    if result.timed_out:
        stderr.print(f"nexusctl: the command timed out after {timeout:g}s and was killed")
        raise typer.Exit(124)
    if result.truncated:
        stderr.print("nexusctl: output was truncated by the agent's output cap")
    code = result.exit_code
    raise typer.Exit(code if isinstance(code, int) and code >= 0 else 1)


def _split_remote(spec: str) -> tuple[str, str] | None:
    """``REF:/path`` → (ref, path); a local path (no colon before the first slash) → None."""
    ref, sep, path = spec.partition(":")
    if sep and ref and "/" not in ref and path.startswith("/"):
        return ref, path
    return None


@app.command("cp")
def cp(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="REF:/path in a VM, or a local path ('-' for stdin)")],
    dst: Annotated[str, typer.Argument(help="REF:/path in a VM, or a local path ('-' for stdout)")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="copy a directory tree (as a streamed tar; '-' is a tar)")
    ] = False,
) -> None:
    """Copy a file into or out of a VM, in chunks (binary safe); with -r, a directory tree."""
    remote_src, remote_dst = _split_remote(src), _split_remote(dst)
    if (remote_src is None) == (remote_dst is None):
        raise typer.BadParameter("exactly one of SRC and DST must be REF:/absolute/path")
    with client(ctx) as c:
        if recursive:
            if remote_src is not None:
                counts = treecopy.download_tree(c, *remote_src, dst)
            elif remote_dst is not None:
                counts = treecopy.upload_tree(c, src, *remote_dst)
            emit(ctx_of(ctx), {"src": src, "dst": dst, **counts}, _copied_tree if dst != "-" else lambda _: None)
            return
        if remote_src is not None:
            size = transfer.download(c, *remote_src, dst)
        elif remote_dst is not None:
            size = transfer.upload(c, src, *remote_dst)
    emit(
        ctx_of(ctx),
        {"src": src, "dst": dst, "bytes": size},
        lambda r: stderr.print(f"copied {r['bytes']} bytes") if dst != "-" else None,
    )


def _copied_tree(r: dict[str, Any]) -> None:
    stderr.print(
        f"copied {r.get('files', 0)} files, {r.get('dirs', 0)} directories, {r.get('symlinks', 0)} symlinks "
        f"({r.get('bytes', 0)} bytes)"
    )


@app.command("stop")
def stop(ctx: typer.Context, ref: Ref) -> None:
    """Stop a VM: graceful power-off, then kill after a timeout."""
    with client(ctx) as c:
        vm = plain(c.vms.stop(ref))
    emit(ctx_of(ctx), vm, lambda v: console.print(f"{v['name']} {v['state']}"))


@app.command("pause")
def pause(ctx: typer.Context, ref: Ref) -> None:
    """Freeze a running VM's vCPUs; its memory and state stay until resume."""
    with client(ctx) as c:
        vm = plain(c.vms.pause(ref))
    emit(ctx_of(ctx), vm, lambda v: console.print(f"{v['name']} {v['state']}"))


@app.command("resume")
def resume(ctx: typer.Context, ref: Ref) -> None:
    """Let a paused VM run again."""
    with client(ctx) as c:
        vm = plain(c.vms.resume(ref))
    emit(ctx_of(ctx), vm, lambda v: console.print(f"{v['name']} {v['state']}"))


@app.command("logs")
def logs(
    ctx: typer.Context,
    ref: Ref,
    tail: Annotated[int | None, typer.Option(min=1, help="only the last N lines")] = None,
) -> None:
    """Print a VM's console log."""
    with client(ctx) as c:
        result = plain(c.vms.logs(ref, tail=tail))
    emit(ctx_of(ctx), result, lambda r: print("\n".join(r["lines"])) if r["lines"] else None)


@app.command("history")
def history(ctx: typer.Context, ref: Ref) -> None:
    """Show a VM's state transitions and why each happened."""
    with client(ctx) as c:
        changes = plain(c.vms.history(ref))
    emit(
        ctx_of(ctx),
        changes,
        lambda rows: table(
            ["AT", "FROM", "TO", "REASON"],
            [(r["at"], r["from_state"] or "-", r["to_state"], r["reason"]) for r in rows],
        ),
    )


@tag_app.command("add")
def tag_add(ctx: typer.Context, ref: Ref, tags: Annotated[list[str], typer.Argument(help="tags to add")]) -> None:
    """Add tags to a VM."""
    with client(ctx) as c:
        result = c.vms.add_tags(ref, tags)
    emit(ctx_of(ctx), result, lambda t: console.print(" ".join(t)))


@tag_app.command("ls")
def tag_ls(ctx: typer.Context, ref: Ref) -> None:
    """List a VM's tags."""
    with client(ctx) as c:
        result = c.vms.tags(ref)
    emit(ctx_of(ctx), result, lambda t: print("\n".join(t)) if t else None)


@tag_app.command("rm")
def tag_rm(ctx: typer.Context, ref: Ref, tags: Annotated[list[str], typer.Argument(help="tags to remove")]) -> None:
    """Remove tags from a VM."""
    with client(ctx) as c:
        vm_id = c.vms.get(ref).id
        for tag in tags:
            c.vms.remove_tag(vm_id, tag)
        result = c.vms.tags(vm_id)
    emit(ctx_of(ctx), result, lambda t: console.print(" ".join(t)))


@app.command("egress")
def egress_(
    ctx: typer.Context,
    ref: Ref,
    mode: Annotated[
        str | None, typer.Option(metavar="MODE", help="change it: open, none or proxy (VM stopped)")
    ] = None,
    allow: Allow = None,
    no_allow: Annotated[bool, typer.Option("--no-allow", help="empty the proxy's allow-list (VM stopped)")] = False,
) -> None:
    """Show how a VM reaches the outside: its egress mode, its proxy's allow-list and the proxy's latest decisions
    for it; with --mode, --allow (replaces the list) or --no-allow, change them first (the VM must be stopped)."""
    if allow and no_allow:
        raise typer.BadParameter("give --allow HOST... (the new list) or --no-allow (an empty one), not both")
    with client(ctx) as c:
        if mode is not None or allow or no_allow:
            out = plain(c.vms.set_egress(ref, mode=mode, allow=[] if no_allow else allow or None))
        else:
            out = plain(c.vms.egress(ref))

    def human(e: dict[str, Any]) -> None:
        fields(
            [
                ("vm", e["vm"]),
                ("mode", e["mode"]),
                ("allow", ", ".join(e["allow"]) or "-"),
                ("proxy", e["proxy"] or "-"),
            ]
        )
        if e["recent"]:
            table(
                ["WHEN", "REQUEST", "DECISION", "REASON"],
                [(ago(r["at"]), r["action"], r["decision"], r["reason"]) for r in e["recent"]],
            )

    emit(ctx_of(ctx), out, human)
