"""Input rules shared by every edge: names, tags, sizes. Each check raises Invalid with a clear message."""

from __future__ import annotations

import re

from nexus.domain.errors import Invalid

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,62}$")
VCPUS_RANGE = (1, 32)
MEM_MIB_RANGE = (64, 65536)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise Invalid(
            f"invalid name {name!r}: use 1-63 lowercase letters, digits or '-', starting with a letter or digit"
        )
    return name


def check_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise Invalid(f"invalid tag {tag!r}: use 1-63 of letters, digits and _.:=-, starting with a letter or digit")
    return tag


def check_range(what: str, value: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value


def check_vcpus(vcpus: int) -> int:
    return check_range("vcpus", vcpus, VCPUS_RANGE)


def check_mem_mib(mem_mib: int) -> int:
    return check_range("mem_mib", mem_mib, MEM_MIB_RANGE)
