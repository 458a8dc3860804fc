"""The vendored Firecracker spec: present in the repository, the unmodified upstream file, and refused otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.firecracker_spec import SPEC_PATH, SPEC_SHA256, load_spec
from tests.helpers import REPO


def test_the_vendored_spec_is_in_the_repository_with_its_license() -> None:
    folder = SPEC_PATH.parent
    assert folder.is_relative_to(REPO / "tests")
    for name in ("LICENSE", "NOTICE", "README.md"):
        assert (folder / name).is_file(), name
    assert "Apache License" in (folder / "LICENSE").read_text()
    assert SPEC_SHA256 in (folder / "README.md").read_text()
    spec = load_spec()
    assert spec["info"]["version"] == "1.16.1"
    assert "MachineConfiguration" in spec["definitions"]


def test_an_edited_copy_is_refused(tmp_path: Path) -> None:
    edited = tmp_path / "spec.yaml"
    edited.write_bytes(SPEC_PATH.read_bytes().replace(b"1.16.1", b"1.16.2", 1))
    with pytest.raises(ValueError, match="must be the upstream file"):
        load_spec.__wrapped__(edited)


def test_a_missing_copy_is_an_error_not_a_skip(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_spec.__wrapped__(tmp_path / "absent.yaml")
