"""``nexusctl drive ...``, ``nexusctl snapshot ...`` and ``nexusctl vm clone``: drives, snapshots, clones."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nexus.cli.common import client, ctx_of
from nexus.cli.output import ago, console, emit, plain, table

drive_app = typer.Typer(help="Drives: a VM's root drive and named data drives.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Snapshots of a VM's drives: create, list, roll back, remove.", no_args_is_help=True)

Ref = Annotated[str, typer.Argument(help="VM name or id")]
DriveRef = Annotated[str, typer.Argument(help="drive name or id")]


def _drive_rows(drives: list[dict[str, Any]], vms: dict[str, str]) -> None:
    table(
        ["ID", "NAME", "KIND", "SIZE", "VM", "MOUNT", "IMAGE", "CREATED"],
        [
            (
                d["id"],
                d["name"],
                d["kind"],
                f"{d['size_mib']} MiB",
                vms.get(d["vm_id"], d["vm_id"]) if d["vm_id"] else "",
                d["mount_path"],
                d["image"],
                ago(d["created_at"]),
            )
            for d in drives
        ],
    )


@drive_app.command("create")
def drive_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="unique name: lowercase letters, digits, '-'")],
    image: Annotated[str | None, typer.Option(help="copy this image onto the drive")] = None,
    size: Annotated[int | None, typer.Option(help="an empty ext4 drive of this many MiB")] = None,
) -> None:
    """Create a data drive: a copy of an image (--image) or an empty ext4 filesystem (--size MIB)."""
    if (image is None) == (size is None):
        raise typer.BadParameter("give exactly one of --image or --size")
    with client(ctx) as c:
        drive = plain(c.drives.create(name, image=image, size_mib=size))
    emit(ctx_of(ctx), drive, lambda d: console.print(f"created drive {d['name']} ({d['size_mib']} MiB)"))


@drive_app.command("ls")
def drive_ls(ctx: typer.Context) -> None:
    """List drives (root drives are named <vm>.root)."""
    with client(ctx) as c:
        drives = plain(c.drives.list())
        vms = {vm.id: vm.name for vm in c.vms.list()} if not ctx_of(ctx).json else {}
    emit(ctx_of(ctx), drives, lambda ds: _drive_rows(ds, vms))


@drive_app.command("attach")
def drive_attach(
    ctx: typer.Context,
    name: DriveRef,
    vm: Annotated[str, typer.Option("--vm", help="the VM (stopped) to attach it to")],
    mount: Annotated[str | None, typer.Option(help="where the agent mounts it at boot, e.g. /data")] = None,
) -> None:
    """Attach a data drive to a stopped VM; it appears at the VM's next boot (mounted at --mount)."""
    with client(ctx) as c:
        drive = plain(c.drives.attach(name, vm, mount=mount))
    where = f" at {drive['mount_path']}" if drive["mount_path"] else ""
    emit(ctx_of(ctx), drive, lambda d: console.print(f"attached {d['name']} to {vm}{where}"))


@drive_app.command("detach")
def drive_detach(ctx: typer.Context, name: DriveRef) -> None:
    """Detach a data drive from its (stopped) VM; the drive and its data stay."""
    with client(ctx) as c:
        drive = plain(c.drives.detach(name))
    emit(ctx_of(ctx), drive, lambda d: console.print(f"detached {d['name']}"))


@drive_app.command("resize")
def drive_resize(
    ctx: typer.Context,
    name: DriveRef,
    size: Annotated[int, typer.Option(help="the new size in MiB (drives only grow)")],
) -> None:
    """Grow a drive and its ext4 filesystem (its VM must be stopped)."""
    with client(ctx) as c:
        drive = plain(c.drives.resize(name, size))
    emit(ctx_of(ctx), drive, lambda d: console.print(f"{d['name']} is now {d['size_mib']} MiB"))


@drive_app.command("rm")
def drive_rm(ctx: typer.Context, name: DriveRef) -> None:
    """Remove a drive. Refuses (exit 5) while it is attached or a snapshot holds it."""
    with client(ctx) as c:
        drive = plain(c.drives.get(name))
        c.drives.remove(drive["id"])
    emit(ctx_of(ctx), {"removed": drive["id"], "name": drive["name"]}, lambda _: console.print(f"removed {name}"))


@snapshot_app.command("create")
def snapshot_create(
    ctx: typer.Context,
    ref: Ref,
    name: Annotated[str | None, typer.Option(help="snapshot name (default: snap-<UTC time>)")] = None,
) -> None:
    """Snapshot all of a VM's drives together (a running VM's filesystems are frozen for the moment it takes)."""
    with client(ctx) as c:
        snap = plain(c.snapshots.create(ref, name))
    emit(ctx_of(ctx), snap, lambda s: console.print(f"snapshot {s['name']} of {ref} ({len(s['drives'])} drives)"))


@snapshot_app.command("ls")
def snapshot_ls(ctx: typer.Context, ref: Ref) -> None:
    """List a VM's snapshots."""
    with client(ctx) as c:
        snaps = plain(c.snapshots.list(ref))
    emit(
        ctx_of(ctx),
        snaps,
        lambda ss: table(
            ["ID", "NAME", "DRIVES", "MEMORY", "CREATED"],
            [
                (
                    s["id"],
                    s["name"],
                    ", ".join(d["drive_name"] for d in s["drives"]),
                    f"{s['state']['size_bytes'] / 2**20:.0f} MiB" if s["state"] else "-",
                    ago(s["created_at"]),
                )
                for s in ss
            ],
        ),
    )


@snapshot_app.command("rollback")
def snapshot_rollback(
    ctx: typer.Context,
    ref: Ref,
    name: Annotated[str, typer.Argument(help="snapshot name")],
    restart: Annotated[bool, typer.Option("--restart", help="stop a running VM, roll back, start it again")] = False,
) -> None:
    """Put a VM's drives back as the snapshot holds them. Refuses (exit 5) while the VM runs, unless --restart."""
    with client(ctx) as c:
        vm = plain(c.snapshots.rollback(ref, name, restart=restart))
    emit(ctx_of(ctx), vm, lambda v: console.print(f"{v['name']} rolled back to {name} ({v['state']})"))


@snapshot_app.command("rm")
def snapshot_rm(ctx: typer.Context, ref: Ref, name: Annotated[str, typer.Argument(help="snapshot name")]) -> None:
    """Remove a snapshot."""
    with client(ctx) as c:
        c.snapshots.remove(ref, name)
    emit(ctx_of(ctx), {"removed": name}, lambda _: console.print(f"removed snapshot {name}"))


def vm_checkpoint(
    ctx: typer.Context,
    ref: Ref,
    name: Annotated[str | None, typer.Option(help="checkpoint name (default: ckpt-<UTC time>)")] = None,
) -> None:
    """Save a running VM's memory with its drives: `vm restore` brings it back running from this moment. The guest
    is paused while it is taken; listed with the VM's snapshots."""
    with client(ctx) as c:
        snap = plain(c.snapshots.checkpoint(ref, name))
    emit(
        ctx_of(ctx),
        snap,
        lambda s: console.print(f"checkpoint {s['name']} of {ref} ({s['state']['size_bytes'] / 2**20:.0f} MiB memory)"),
    )


def vm_restore(ctx: typer.Context, ref: Ref, name: Annotated[str, typer.Argument(help="checkpoint name")]) -> None:
    """Bring a VM back running from a checkpoint: processes, files and connections as they were then. Whatever
    runs in it now is thrown away. Refuses (exit 5) when the VM's vCPUs, memory, kernel or VMM differ."""
    with client(ctx) as c:
        vm = plain(c.snapshots.restore(ref, name))
    emit(ctx_of(ctx), vm, lambda v: console.print(f"{v['name']} restored from {name} ({v['state']})"))


def vm_fork(
    ctx: typer.Context,
    ref: Ref,
    new: Annotated[str, typer.Argument(help="the new VM's name")],
    checkpoint: Annotated[str | None, typer.Option(help="fork at this checkpoint (default: one taken now)")] = None,
) -> None:
    """Start a new VM running on from a checkpoint of a running VM: same processes and files, its own name, machine
    id and address, its own copies of the drives. Both run on."""
    with client(ctx) as c:
        vm = plain(c.vms.fork(ref, new, checkpoint=checkpoint))
    emit(ctx_of(ctx), vm, lambda v: console.print(f"{v['name']} forked from {ref} ({v['state']})"))


def vm_clone(
    ctx: typer.Context,
    ref: Ref,
    new: Annotated[str, typer.Argument(help="the new VM's name")],
    snapshot: Annotated[str | None, typer.Option(help="clone this snapshot instead of the current drives")] = None,
) -> None:
    """Create a new VM from a VM's current drives (or one of its snapshots); it is not started."""
    with client(ctx) as c:
        vm = plain(c.vms.clone(ref, new, snapshot=snapshot))
    emit(ctx_of(ctx), vm, lambda v: console.print(f"created {v['name']} ({v['id']}) from {ref}"))
