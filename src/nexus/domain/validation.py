"""Input rules shared by every edge: names, tags, sizes, versions, references. Each raises Invalid with a message.

The patterns and ranges here are the one source of the limits: the services check them, and the REST API's request
schemas publish (and enforce) the same values as ``pattern``/``minimum``/``maximum``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from nexus.domain.errors import Invalid, NotFound
from nexus.domain.models import Lifetime

T = TypeVar("T")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,62}$")
# Debian kernels: an ABI (6.1.0-56), a flavour (cloud-amd64), a full version (6.1.0-56-cloud-amd64) is both.
KERNEL_ABI = r"[0-9]+\.[0-9]+\.[0-9]+-[0-9]+"
KERNEL_FLAVOUR = r"[a-z][a-z0-9-]*"
KERNEL_VERSION_FLAVOUR = r"[a-z0-9][a-z0-9-]*"  # what may follow the ABI in a full version
# What a user may name a kernel by: a full version, an ABI (of the default flavour) or a flavour (its newest).
KERNEL_REF_RE = re.compile(rf"^(?:{KERNEL_ABI}(?:-{KERNEL_VERSION_FLAVOUR})?|{KERNEL_FLAVOUR})$")
FIRECRACKER_VERSION_RE = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+$")  # a release: 1.16.1 or v1.16.1
VCPUS_RANGE = (1, 32)
MEM_MIB_RANGE = (64, 65536)
DRIVE_SIZE_MIB_RANGE = (16, 1024 * 1024)  # a data drive (empty ext4, or grown to)
IMAGE_SIZE_MIB_RANGE = (128, 1024 * 1024)  # a built image's ext4
TTL_S_RANGE = (1, 10 * 365 * 86400)
POOL_SIZE_RANGE = (0, 16)  # ready VMs kept per warm pool; each holds its memory
IDLE_SUSPEND_S_RANGE = (5, 365 * 86400)  # below a few seconds it would suspend between two calls of one task


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


def check_lifetime(lifetime: Lifetime) -> Lifetime:
    if lifetime.ttl_s is not None:
        check_range("ttl_s", lifetime.ttl_s, TTL_S_RANGE)
    if lifetime.idle_suspend_s is not None:
        check_range("idle_suspend_s", lifetime.idle_suspend_s, IDLE_SUSPEND_S_RANGE)
    return lifetime


def referenced(lookup: Callable[[], T]) -> T:
    """``lookup()`` of something a request names in its input (the VM to attach a drive to, the image to copy, the
    snapshot to clone), where missing is bad input (Invalid, 422), not a missing target of the request (NotFound,
    404: that would say the drive, or the VM being cloned, is gone)."""
    try:
        return lookup()
    except NotFound as exc:
        raise Invalid(exc.message) from exc
