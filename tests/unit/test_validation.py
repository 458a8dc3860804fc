from __future__ import annotations

import pytest

from nexus.domain import Invalid, NotFound, spec_for
from nexus.domain.validation import check_mem_mib, check_name, check_tag, check_vcpus


@pytest.mark.parametrize("name", ["a", "web-1", "0abc", "a" * 63, "x-y-z"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "A", "a_b", "a.b", "a" * 64, "héllo", "a b", "a\n"])
def test_bad_names(name: str) -> None:
    with pytest.raises(Invalid, match="invalid name"):
        check_name(name)


@pytest.mark.parametrize("tag", ["ml", "team=ml", "env:prod", "v1.2_x"])
def test_good_tags(tag: str) -> None:
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "=x", "a/b", "a b", "x" * 64])
def test_bad_tags(tag: str) -> None:
    with pytest.raises(Invalid):
        check_tag(tag)


def test_vcpus_bounds() -> None:
    assert check_vcpus(1) == 1
    assert check_vcpus(32) == 32
    for bad in (0, 33, -1, True):
        with pytest.raises(Invalid, match="vcpus must be an integer from 1 to 32"):
            check_vcpus(bad)


def test_mem_bounds() -> None:
    assert check_mem_mib(64) == 64
    assert check_mem_mib(65536) == 65536
    for bad in (63, 65537):
        with pytest.raises(Invalid, match="mem_mib"):
            check_mem_mib(bad)


def test_settings_checks() -> None:
    assert spec_for("default_vcpus").check(4) == 4
    assert spec_for("vmm").check("qemu") == "qemu"
    assert spec_for("default_image").check(" img ") == "img"
    with pytest.raises(Invalid):
        spec_for("vmm").check("xen")
    with pytest.raises(Invalid):
        spec_for("default_mem_mib").check("512")
    with pytest.raises(Invalid):
        spec_for("default_image").check("")
    with pytest.raises(NotFound, match="unknown setting 'colour'"):
        spec_for("colour")
