"""Secrets: the value checks, the vault's files (modes, atomic writes, the sweep) and SecretService on a real
SQLite store and a tmp state dir: limits, refusals that store nothing, bindings by VM and tag, cascades."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nexus.domain import Conflict, Invalid, NotFound, Role, TooLarge, Unavailable, Vm, VmState
from nexus.domain.egress import MAX_SECRET_BYTES
from nexus.domain.secrets import check_bound_host, check_value
from nexus.services.secrets import SecretService
from nexus.store import SecretFiles, SecretRepo, VmRepo, open_database

AT = datetime(2026, 1, 1, tzinfo=UTC)


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "nexus.db"
        self.conn = open_database(self.db)
        self.vms = VmRepo(self.conn)
        self.dir = tmp_path / "secrets"
        self.files = SecretFiles(self.dir)
        self.repo = SecretRepo(self.conn)
        self.service = SecretService(self.repo, self.files, self.vms, now=lambda: AT)

    def vm(self, vm_id: str, name: str, *tags: str) -> Vm:
        vm = Vm(vm_id, name, Role.WORK, 1, 256, "img", "k", VmState.CREATED, AT, AT)
        self.vms.insert(vm, reason="created")
        if tags:
            self.vms.add_tags(vm_id, tags)
        return self.vms.get(vm_id)

    def stored(self) -> tuple[list[str], list[str]]:
        """Secret rows and the files of the secrets dir (temp files included)."""
        return [m.name for m in self.repo.all()], sorted(os.listdir(self.dir))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("value", [b"k", b"sk-ant-0123", "päss wörd x".encode(), b"x" * MAX_SECRET_BYTES])
def test_values_that_can_be_a_header(value: bytes) -> None:
    assert check_value(value) == value


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (b"", Invalid, "empty"),
        (b"x" * (MAX_SECRET_BYTES + 1), TooLarge, "at most 65536 bytes"),
        (b"abc\xff", Invalid, "UTF-8"),
        (b"abc\r\nX-Evil: 1", Invalid, "line breaks"),
        (b"abc\n", Invalid, "line breaks"),
        (b"a\x00b", Invalid, "control"),
        (b"a\x7fb", Invalid, "control"),
        (b"a\tb", Invalid, "tabs"),  # what the proxy would never put in a header: refused now, not silently unused
        ("a€b".encode(), Invalid, "Latin-1"),
    ],
)
def test_values_that_cannot_are_refused_without_being_quoted(
    value: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        check_value(value)
    assert "abc" not in str(caught.value)


@pytest.mark.parametrize("host", ["api.example.com", "localhost", "a-b.c0"])
def test_bound_hosts(host: str) -> None:
    assert check_bound_host(host) == host


@pytest.mark.parametrize("host", ["*.example.com", "API.example.com", "api.example.com:443", "-a.b", "a..b", "", "a b"])
def test_bad_bound_hosts(host: str) -> None:
    with pytest.raises(Invalid, match="invalid host"):
        check_bound_host(host)


def test_files_are_root_only_and_written_whole(world: World) -> None:
    world.service.set("K", b"v1")
    assert _mode(world.dir) == 0o700 and _mode(world.dir / "K") == 0o600
    assert (world.dir / "K").read_bytes() == b"v1"
    inode = (world.dir / "K").stat().st_ino
    world.service.set("K", b"v2-longer")
    assert (world.dir / "K").read_bytes() == b"v2-longer"
    assert (world.dir / "K").stat().st_ino != inode  # replaced by a rename, never rewritten in place
    assert world.stored() == (["K"], ["K"])  # no temp file left
    assert world.service.value("K") == "v2-longer"
    meta = world.repo.get("K")
    assert meta is not None and meta.size_bytes == 9


def test_an_existing_dir_is_made_root_only(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir(mode=0o755)
    SecretFiles(tmp_path / "s")
    assert _mode(tmp_path / "s") == 0o700


def test_a_failed_write_leaves_the_old_value_and_no_temp_file(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.service.set("K", b"old")

    def no_space(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        world.service.set("K", b"new")
    monkeypatch.undo()
    assert world.stored() == (["K"], ["K"])
    assert world.service.value("K") == "old"


def test_a_row_that_cannot_be_written_takes_a_new_file_back(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(*_: object) -> None:
        raise Unavailable("the state database is busy")

    monkeypatch.setattr(world.repo, "put", busy)
    with pytest.raises(Unavailable):
        world.service.set("K", b"v")
    assert world.stored() == ([], [])


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("K", b"x" * (MAX_SECRET_BYTES + 1), TooLarge),
        ("K", b"", Invalid),
        ("K", b"a\nb", Invalid),
        ("../etc/passwd", b"v", Invalid),
        (".K", b"v", Invalid),
        ("K/x", b"v", Invalid),
        ("1K", b"v", Invalid),
    ],
)
def test_refusals_store_nothing(world: World, name: str, value: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        world.service.set(name, value)
    assert world.stored() == ([], [])


def test_a_value_at_the_limit_is_kept(world: World) -> None:
    world.service.set("BIG", b"x" * MAX_SECRET_BYTES)
    assert world.service.value("BIG") == "x" * MAX_SECRET_BYTES


def test_bindings_by_vm_and_tag_and_placeholders(world: World) -> None:
    web = world.vm("a1b2c3d4e5f6", "web", "team=a")
    db = world.vm("0f0e0d0c0b0a", "db")
    world.service.set("ANTHROPIC_API_KEY", b"sk-1")
    world.service.set("GH", b"ghp-1")
    by_vm = world.service.bind("ANTHROPIC_API_KEY", "api.anthropic.com", vm="web", header="X-Api-Key")
    by_tag = world.service.bind("GH", "api.github.com", tag="team=a", bearer=True)
    assert (by_vm.vm_name, by_vm.binding.vm_id, by_vm.binding.header, by_vm.binding.bearer) == (
        "web",
        web.id,
        "x-api-key",
        False,
    )
    assert (by_tag.binding.tag, by_tag.binding.header, by_tag.binding.bearer) == ("team=a", "authorization", True)
    assert world.service.bindings_for_vm(web) == (by_vm.binding, by_tag.binding)
    assert world.service.bindings_for_vm(db) == ()
    assert world.service.placeholders_for_vm(web) == {
        "ANTHROPIC_API_KEY": "nexus-secret:ANTHROPIC_API_KEY",
        "GH": "nexus-secret:GH",
    }
    listed = {info.meta.name: info for info in world.service.list()}
    assert [r.binding for r in listed["GH"].bindings] == [by_tag.binding] and listed["GH"].usable
    world.service.unbind(by_tag.binding.id)
    assert world.service.bindings_for_vm(web) == (by_vm.binding,)
    with pytest.raises(NotFound, match="no secret binding"):
        world.service.unbind(by_tag.binding.id)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "NOPE", "host": "a.test", "vm": "web", "header": "x"}, NotFound, "no secret 'NOPE'"),
        ({"name": "K", "host": "a.test", "vm": "nope", "header": "x"}, NotFound, "nope"),
        ({"name": "K", "host": "*.test", "vm": "web", "header": "x"}, Invalid, "invalid host"),
        ({"name": "K", "host": "a.test:443", "vm": "web", "header": "x"}, Invalid, "invalid host"),
        ({"name": "K", "host": "a.test", "vm": "web", "header": "x y"}, Invalid, "invalid header"),
        ({"name": "K", "host": "a.test", "header": "x"}, Invalid, "exactly one of vm and tag"),
        ({"name": "K", "host": "a.test", "vm": "web", "tag": "t", "header": "x"}, Invalid, "exactly one of vm and"),
        ({"name": "K", "host": "a.test", "vm": "web"}, Invalid, "exactly one of them"),
        ({"name": "K", "host": "a.test", "vm": "web", "header": "x", "bearer": True}, Invalid, "exactly one of"),
        ({"name": "K", "host": "a.test", "tag": "bad tag", "header": "x"}, Invalid, "invalid tag"),
    ],
)
def test_bad_bindings_store_nothing(
    world: World, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    world.vm("a1b2c3d4e5f6", "web")
    world.service.set("K", b"v")
    with pytest.raises(error, match=message):
        world.service.bind(**kwargs)  # type: ignore[arg-type]
    assert world.repo.bindings() == []


def test_the_same_binding_twice_is_a_conflict(world: World) -> None:
    world.vm("a1b2c3d4e5f6", "web")
    world.service.set("K", b"v")
    world.service.bind("K", "a.test", vm="web", header="x-key")
    with pytest.raises(Conflict, match="already bound"):
        world.service.bind("K", "a.test", vm="web", header="X-Key")
    world.service.bind("K", "a.test", tag="web", header="x-key")  # a tag is another target
    assert len(world.repo.bindings()) == 2


def test_a_bound_secret_is_removed_only_when_forced(world: World) -> None:
    world.vm("a1b2c3d4e5f6", "web")
    world.service.set("K", b"v")
    made = world.service.bind("K", "a.test", vm="web", header="x-key")
    with pytest.raises(Conflict, match=f"secret K is bound \\(binding {made.binding.id}\\)"):
        world.service.remove("K")
    assert world.stored() == (["K"], ["K"]) and len(world.repo.bindings()) == 1
    with pytest.raises(Conflict):  # the store refuses too, whoever asks (ON DELETE RESTRICT)
        world.repo.delete("K", with_bindings=False)
    world.service.remove("K", force=True)
    assert world.stored() == ([], []) and world.repo.bindings() == []
    assert world.service.value("K") is None
    with pytest.raises(NotFound):
        world.service.remove("K")


def test_an_unbound_secret_is_removed(world: World) -> None:
    world.vm("a1b2c3d4e5f6", "web")
    world.service.set("K", b"v")
    made = world.service.bind("K", "a.test", vm="web", header="x-key")
    world.service.unbind(made.binding.id)
    world.service.remove("K")
    assert world.stored() == ([], [])


def test_removing_a_vm_removes_its_bindings_but_not_tag_ones(world: World) -> None:
    web = world.vm("a1b2c3d4e5f6", "web", "team=a")
    world.service.set("K", b"v")
    world.service.bind("K", "a.test", vm="web", header="x-key")
    by_tag = world.service.bind("K", "a.test", tag="team=a", header="x-key")
    world.vms.delete(web.id)
    assert [r.binding for r in world.repo.bindings()] == [by_tag.binding]
    assert world.stored() == (["K"], ["K"])


def test_the_sweep_removes_files_without_rows_and_flags_rows_without_files(world: World) -> None:
    world.service.set("KEPT", b"v")
    world.service.set("LOST", b"v")
    (world.dir / "LOST").unlink()  # the state dir restored without it, say
    (world.dir / "ORPHAN").write_bytes(b"a set cut short before its row")
    (world.dir / ".KEPT.tmp123").write_bytes(b"a write cut short before its rename")
    world.service.recover()
    assert world.stored() == (["KEPT", "LOST"], ["KEPT"])
    usable = {info.meta.name: info.usable for info in world.service.list()}
    assert usable == {"KEPT": True, "LOST": False}
    assert world.service.value("LOST") is None and world.service.value("KEPT") == "v"
    world.service.set("LOST", b"again")
    assert world.service.get("LOST").usable


def test_values_stay_out_of_the_database(world: World) -> None:
    value = b"sk-unique-7f3a9c1e"
    world.vm("a1b2c3d4e5f6", "web")
    world.service.set("K", value)
    world.service.bind("K", "a.test", vm="web", bearer=True)
    world.conn.close()
    for path in world.db.parent.glob("nexus.db*"):
        assert value not in path.read_bytes(), path


@pytest.mark.parametrize("name", ["PATH", "SSL_CERT_FILE", "https_proxy", "LD_PRELOAD", "NEXUS_X"])
def test_names_the_guest_needs_are_refused(name: str) -> None:
    from nexus.domain.egress import check_secret_name

    with pytest.raises(Invalid, match="the guest needs for itself"):
        check_secret_name(name)
