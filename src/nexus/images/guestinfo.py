"""Facts about a root filesystem tree read from its files: which Python it has, and what version.

Reads only: ``/usr/bin/python3`` (its link target names the minor version), then the package databases of
dpkg (``/var/lib/dpkg/status``) or apk (``/lib/apk/db/installed``) for the full version. Parsers are pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nexus.images import rootfs

_MINOR_RE = re.compile(r"^python(\d+\.\d+)$")


@dataclass(frozen=True, slots=True)
class GuestPython:
    minor: str  # "3.11"
    version: str  # "3.11.2" when a package database says so, else the minor version


def dpkg_version(status_text: str, package: str) -> str | None:
    """The ``Version:`` of ``package`` in a dpkg status file (upstream part: "3.11.2-6+deb12u6" → "3.11.2")."""
    for stanza in status_text.split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", stanza, re.MULTILINE):
            match = re.search(r"^Version: (?:\d+:)?([^-\s]+)", stanza, re.MULTILINE)
            return match[1] if match else None
    return None


def apk_version(installed_text: str, package: str) -> str | None:
    """The ``V:`` of ``package`` in apk's installed database ("3.12.3-r1" → "3.12.3")."""
    for stanza in installed_text.split("\n\n"):
        if re.search(rf"^P:{re.escape(package)}$", stanza, re.MULTILINE):
            match = re.search(r"^V:([^-\s]+)", stanza, re.MULTILINE)
            return match[1] if match else None
    return None


def guest_python(root: Path) -> GuestPython | None:
    """The tree's python3, or None when ``/usr/bin/python3`` is missing."""
    target = rootfs.link_target_in_root(root, "/usr/bin/python3")
    if target is None:
        return None
    match = _MINOR_RE.match(target.rsplit("/", 1)[-1])
    if match is None:
        candidates = sorted(
            p.name for p in rootfs.resolve_in_root(root, "/usr/bin").glob("python3.*") if _MINOR_RE.match(p.name)
        )
        if not candidates:
            return GuestPython("3", "3")
        match = _MINOR_RE.match(candidates[-1])
        if match is None:
            return GuestPython("3", "3")
    minor = match[1]
    version = None
    for db, reader, package in (
        ("/var/lib/dpkg/status", dpkg_version, f"python{minor}-minimal"),
        ("/lib/apk/db/installed", apk_version, "python3"),
    ):
        path = rootfs.resolve_in_root(root, db)
        if path.is_file():
            version = reader(path.read_text(errors="replace"), package)
            if version:
                break
    return GuestPython(minor, version or minor)
