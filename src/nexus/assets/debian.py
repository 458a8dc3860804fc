"""Debian kernel packages: naming rules, argv builders for apt/dpkg/depmod, and parsers of their output.

Everything here is pure: no process is run and no file is touched (see :mod:`nexus.assets.kernels` for that).
Names follow Debian's scheme: the metapackage ``linux-image-<flavour>`` (``linux-image-cloud-amd64``) depends on
exactly one versioned package ``linux-image-<kver>`` (``linux-image-6.1.0-56-cloud-amd64``), where ``kver`` is
what ``uname -r`` prints in the guest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nexus.domain.errors import Invalid
from nexus.domain.validation import KERNEL_ABI, KERNEL_FLAVOUR, KERNEL_VERSION_FLAVOUR

DEFAULT_FLAVOUR = "cloud-amd64"

_KVER_RE = re.compile(rf"^(?P<abi>{KERNEL_ABI})-(?P<flavour>{KERNEL_VERSION_FLAVOUR})$")
_ABI_RE = re.compile(rf"^{KERNEL_ABI}$")
_FLAVOUR_RE = re.compile(rf"^{KERNEL_FLAVOUR}$")
_DEPENDS_RE = re.compile(r"^\s*\|?Depends:\s*linux-image-(?P<kver>\S+)\s*$")


@dataclass(frozen=True, slots=True)
class KernelRef:
    """What a caller asked for: either one exact kernel version, or the newest of a flavour."""

    flavour: str
    version: str | None  # full kver ("6.1.0-56-cloud-amd64"), None = newest of the flavour


def split_kver(kver: str) -> tuple[str, str]:
    """``"6.1.0-56-cloud-amd64"`` → ``("6.1.0-56", "cloud-amd64")``; Invalid if it is not a Debian kver."""
    match = _KVER_RE.match(kver)
    if match is None:
        raise Invalid(f"{kver!r} is not a Debian kernel version like 6.1.0-56-cloud-amd64")
    return match["abi"], match["flavour"]


def parse_ref(ref: str | None, default_flavour: str = DEFAULT_FLAVOUR) -> KernelRef:
    """Read a user's kernel reference.

    ``None`` → newest of ``default_flavour``; ``"6.1.0-56"`` → that ABI in ``default_flavour``;
    ``"6.1.0-56-cloud-amd64"`` → exactly that; ``"cloud-amd64"`` → newest of that flavour.
    """
    if ref is None or not ref.strip():
        return KernelRef(default_flavour, None)
    ref = ref.strip()
    if _ABI_RE.match(ref):
        return KernelRef(default_flavour, f"{ref}-{default_flavour}")
    if ref[0].isdigit():
        _abi, flavour = split_kver(ref)
        return KernelRef(flavour, ref)
    if _FLAVOUR_RE.match(ref):
        return KernelRef(ref, None)
    raise Invalid(f"{ref!r} is neither a kernel version (6.1.0-56-cloud-amd64) nor a flavour (cloud-amd64)")


def image_package(kver: str) -> str:
    return f"linux-image-{kver}"


def metapackage(flavour: str) -> str:
    return f"linux-image-{flavour}"


def version_key(text: str) -> tuple[tuple[int, str], ...]:
    """A sort key that orders versions naturally ("6.1.0-9" < "6.1.0-56"). Not full dpkg semantics."""
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in re.findall(r"\d+|[a-z]+", text))


def parse_depends(apt_cache_depends_out: str, flavour: str) -> str:
    """From ``apt-cache depends linux-image-<flavour>`` output, the kver the metapackage points at.

    If several candidates appear, the newest wins. Invalid when there is none.
    """
    found: list[str] = []
    for line in apt_cache_depends_out.splitlines():
        match = _DEPENDS_RE.match(line)
        if match and match["kver"].endswith(f"-{flavour}") and _KVER_RE.match(match["kver"]):
            found.append(match["kver"])
    if not found:
        raise Invalid(f"{metapackage(flavour)} depends on no linux-image-<version>-{flavour} package")
    return max(found, key=version_key)


def is_unknown_package(apt_stderr: str) -> bool:
    """Whether apt failed because the package does not exist (as opposed to a network/mirror failure)."""
    markers = (
        "Unable to locate package",
        "Couldn't find any package",
        "has no installation candidate",
        "No packages found",
        "Can't select candidate version",
    )
    return any(marker in apt_stderr for marker in markers)


def apt_cache_depends_argv(package: str) -> list[str]:
    return ["apt-cache", "depends", "--important", package]


def apt_download_argv(package: str, *, as_root: bool) -> list[str]:
    """``apt-get download`` into the working directory. As root, apt's _apt sandbox user would be refused
    access to a private cache dir, so we tell apt to stay root rather than warn."""
    argv = ["apt-get", "download", "-q"]
    if as_root:
        argv += ["-o", "APT::Sandbox::User=root"]
    return [*argv, package]


def dpkg_field_argv(deb: Path, field: str) -> list[str]:
    return ["dpkg-deb", "--field", str(deb), field]


def dpkg_extract_argv(deb: Path, dest: Path) -> list[str]:
    return ["dpkg-deb", "-x", str(deb), str(dest)]


def depmod_argv(root: Path, kver: str) -> list[str]:
    return ["depmod", "-b", str(root), kver]
