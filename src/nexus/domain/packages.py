"""Debian packages an image is built with: the name rule, the documented profiles, and expanding both into the
one sorted list a build installs (and its base cache is keyed by).

Names follow Debian policy (lowercase letters, digits, ``+ - .``; two characters at least, starting with a letter
or digit) and may not end in ``-`` or ``.``: apt reads a trailing ``-`` as "remove". No ``=version`` pins: the
suite's mirror serves one version of each package, and a base layer is cached per package set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from nexus.domain.errors import Invalid

PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,98}[a-z0-9+]$")
PROFILE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
MAX_PACKAGES = 200

# What a coding agent reaches for, and little more (about 650 MiB of files with the base; the image is sized to
# leave as much again free). Documented in README.md and docs/design.md: keep them in step.
PROFILES: dict[str, tuple[str, ...]] = {
    "dev": (
        "build-essential",
        "ca-certificates",
        "curl",
        "file",
        "git",
        "jq",
        "less",
        "openssh-client",
        "patch",
        "procps",
        "python3-dev",
        "python3-pip",
        "python3-venv",
        "ripgrep",
        "unzip",
        "xz-utils",
    ),
}


def check_package(name: str) -> str:
    if "=" in name:
        raise Invalid(f"package {name!r}: version pins are not supported; give the name alone")
    if not PACKAGE_RE.fullmatch(name):
        raise Invalid(
            f"invalid package name {name!r}: Debian names are 2-100 of a-z 0-9 + - . starting with a letter or "
            "digit (and not ending in - or .)"
        )
    return name


def check_profile(name: str) -> str:
    if name not in PROFILES:
        raise Invalid(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}")
    return name


def expand_packages(profiles: Iterable[str], packages: Iterable[str]) -> tuple[str, ...]:
    """The profiles' packages and the packages given, checked, without duplicates, sorted."""
    wanted: set[str] = set()
    for profile in profiles:
        wanted.update(PROFILES[check_profile(profile)])
    wanted.update(check_package(name) for name in packages)
    if len(wanted) > MAX_PACKAGES:
        raise Invalid(f"at most {MAX_PACKAGES} packages per image, got {len(wanted)}")
    return tuple(sorted(wanted))
