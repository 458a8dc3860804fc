"""``nexusctl kernel ...`` and ``nexusctl image ...``: fetch, build, list, inspect, remove."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nexus.cli.common import client, ctx_of
from nexus.cli.output import ago, console, emit, fields, plain, table
from nexus.cli.progress import progress

kernel_app = typer.Typer(help="Guest kernels (fetched from Debian, verified, cached).", no_args_is_help=True)
firecracker_app = typer.Typer(
    help="Firecracker binaries (release tarballs, verified and cached).", no_args_is_help=True
)
image_app = typer.Typer(help="Bootable root filesystem images with the guest agent.", no_args_is_help=True)


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / 1048576:.1f} MiB"


@kernel_app.command("list")
def kernel_list(ctx: typer.Context) -> None:
    """List cached kernels."""
    with client(ctx) as c:
        kernels = plain(c.kernels.list())
    emit(
        ctx_of(ctx),
        kernels,
        lambda ks: table(
            ["VERSION", "FLAVOUR", "SIZE", "SHA256", "PULLED"],
            [(k["version"], k["flavour"], _mib(k["size_bytes"]), k["sha256"][:12], ago(k["pulled_at"])) for k in ks],
        ),
    )


@kernel_app.command("pull")
def kernel_pull(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Argument(help="version or flavour (default: newest cloud-amd64)")] = None,
) -> None:
    """Fetch a kernel package with apt, verify and cache it, and build its initramfs."""
    opts = ctx_of(ctx)
    with client(ctx) as c, progress("kernel", show=not opts.json) as on_progress:
        kernel = plain(c.kernels.pull(version, on_progress=on_progress))
    emit(opts, kernel, lambda k: console.print(f"kernel {k['version']} ({_mib(k['size_bytes'])})"))


@kernel_app.command("rm")
def kernel_rm(ctx: typer.Context, version: str) -> None:
    """Remove a cached kernel (refused while a VM names that version)."""
    with client(ctx) as c:
        c.kernels.remove(version)
    emit(ctx_of(ctx), {"removed": version}, lambda _: console.print(f"removed kernel {version}"))


def _image_rows(images: list[dict[str, Any]]) -> None:
    table(
        ["NAME", "ID", "BASE", "INIT", "SIZE", "BUILT"],
        [
            (i["name"], i["id"][:12], i["base"], i["init_system"], f"{i['size_mib']} MiB", ago(i["built_at"]))
            for i in images
        ],
    )


def _names(values: list[str] | None) -> list[str] | None:
    """``--packages a,b --packages c`` as [a, b, c]; None when none were given."""
    names = [n.strip() for value in values or [] for n in value.split(",") if n.strip()]
    return names or None


@image_app.command("build")
def image_build(
    ctx: typer.Context,
    base: Annotated[
        str | None, typer.Option(help="debian-bookworm (the default), a rootfs tarball path, or a URL")
    ] = None,
    name: Annotated[str | None, typer.Option(help="image name (default: from the base, or the VM's name)")] = None,
    size: Annotated[
        int | None, typer.Option(help="ext4 size in MiB (default: twice what the files take, at least 1024)")
    ] = None,
    sha256: Annotated[str | None, typer.Option(help="sha256 of a tarball or URL base")] = None,
    packages: Annotated[
        list[str] | None,
        typer.Option(help="Debian packages to install, comma-separated (repeatable): git,python3-pip"),
    ] = None,
    profile: Annotated[list[str] | None, typer.Option(help="a documented package set (repeatable): dev")] = None,
    from_vm: Annotated[
        str | None, typer.Option("--from-vm", help="save this stopped VM's root drive as the image instead")
    ] = None,
) -> None:
    """Build a bootable ext4 image from a base, with Debian packages, the guest agent and init config; or save a
    stopped VM's root drive as an image (--from-vm, with the current agent put in)."""
    opts = ctx_of(ctx)
    with client(ctx) as c:
        with progress("image", show=not opts.json) as on_progress:
            built = c.images.build(
                base=base,
                name=name,
                size_mib=size,
                sha256=sha256,
                packages=_names(packages),
                profiles=_names(profile),
                from_vm=from_vm,
                on_progress=on_progress,
            )
        image = plain(built)

    def show(i: dict[str, Any]) -> None:
        extra = f", {len(i['packages'])} packages" if i["packages"] else ""
        source = f", from VM {i['origin']['vm_name']}" if i["origin"] else ""
        console.print(f"image {i['name']} ({i['init_system']}, {i['size_mib']} MiB{extra}{source})")

    emit(opts, image, show)


@image_app.command("list")
def image_list(ctx: typer.Context) -> None:
    """List images."""
    with client(ctx) as c:
        images = plain(c.images.list())
    emit(ctx_of(ctx), images, _image_rows)


@image_app.command("inspect")
def image_inspect(ctx: typer.Context, ref: str) -> None:
    """Show one image."""
    with client(ctx) as c:
        image = plain(c.images.get(ref))
    emit(ctx_of(ctx), image, lambda i: fields(_readable(i).items()))


def _readable(image: dict[str, Any]) -> dict[str, Any]:
    """The packages as a list of names, the origin as a sentence."""
    origin = image["origin"]
    return {
        **image,
        "packages": ", ".join(image["packages"]) or None,
        "origin": f"VM {origin['vm_name']} ({origin['vm_id']}), made from image {origin['image']}" if origin else None,
    }


@image_app.command("rm")
def image_rm(ctx: typer.Context, ref: str) -> None:
    """Remove an image (refused, exit 5, while a VM uses it)."""
    with client(ctx) as c:
        c.images.remove(ref)
    emit(ctx_of(ctx), {"removed": ref}, lambda _: console.print(f"removed image {ref}"))


@firecracker_app.command("list")
def firecracker_list(ctx: typer.Context) -> None:
    """List Firecracker binaries."""
    with client(ctx) as c:
        binaries = plain(c.firecracker.list())
    emit(
        ctx_of(ctx),
        binaries,
        lambda bs: table(
            ["VERSION", "PATH", "SHA256", "SOURCE"],
            [(b["version"], b["path"], b["sha256"][:12], b["source"]) for b in bs],
        ),
    )


@firecracker_app.command("pull")
def firecracker_pull(
    ctx: typer.Context,
    version: Annotated[
        str | None, typer.Argument(help="release like 1.16.1 (default: the firecracker_version setting)")
    ] = None,
    path: Annotated[
        str | None, typer.Option(help="register this binary on nexusd's host instead of downloading (socket only)")
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(help="sha256 of the release tarball; needed for a version nexus has no pinned sum of"),
    ] = None,
) -> None:
    """Download a Firecracker release (verified against the sha256 pinned in nexus or given), or register a local
    binary."""
    opts = ctx_of(ctx)
    with client(ctx) as c, progress("firecracker", show=not opts.json) as on_progress:
        binary = plain(c.firecracker.pull(version, path=path, sha256=sha256, on_progress=on_progress))
    emit(opts, binary, lambda b: console.print(f"firecracker {b['version']} at {b['path']}"))


@firecracker_app.command("rm")
def firecracker_rm(ctx: typer.Context, version: str) -> None:
    """Remove a cached Firecracker binary."""
    with client(ctx) as c:
        c.firecracker.remove(version)
    emit(ctx_of(ctx), {"removed": version}, lambda _: console.print(f"removed firecracker {version}"))
