"""Agent tokens and transport rules: the pure parts (token format, hashing, lifetimes, bearer parsing, which paths
are MCP endpoints, which image bases are host files, pinned Firecracker sums) and TokenService on a real SQLite
store with a clock the test moves."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nexus.api.middleware import bearer, is_mcp_path
from nexus.assets.firecracker import PINNED_SHA256, expected_sha256
from nexus.domain import (
    AGENT_TOKEN_PREFIX,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Role,
    Transport,
    Vm,
    VmState,
    names_host_file,
    parse_lifetime,
    require_host_access,
)
from nexus.domain.access import hash_secret, new_secret, secret_matches, split_bearer
from nexus.services.tokens import TOUCH_EVERY, TokenService
from nexus.store import TokenRepo, VmRepo, open_database


def test_a_new_token_is_prefixed_random_and_stored_only_as_the_sha256_of_its_secret() -> None:
    made = new_secret()
    assert made.bearer.startswith(AGENT_TOKEN_PREFIX) and len(made.bearer) == 4 + 12 + 1 + 64
    parts = split_bearer(made.bearer)
    assert parts is not None and parts[0] == made.id
    assert made.hash == hashlib.sha256(parts[1].encode()).hexdigest() == hash_secret(parts[1])
    assert parts[1] not in made.hash
    assert secret_matches(parts[1], made.hash)
    assert not secret_matches(parts[1][:-1] + ("0" if parts[1][-1] != "0" else "1"), made.hash)
    assert new_secret().bearer != made.bearer


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nxa_",
        "Bearer nxa_x",
        "nxa_0123456789ab" + "0" * 64,
        "nxa_0123456789ab_" + "0" * 63,
        "nxa_0123456789AB_" + "0" * 64,
    ],
)
def test_misshapen_agent_tokens_are_not_split(text: str) -> None:
    assert split_bearer(text) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 7 * 86400), ("2w", 14 * 86400), (" 7D ", 7 * 86400)],
)
def test_lifetimes(text: str, seconds: int) -> None:
    assert parse_lifetime(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0h", "7", "1y", "-1h", "1.5h", "3651d", "h", "1 h 2m"])
def test_bad_lifetimes(text: str) -> None:
    with pytest.raises(Invalid, match="lifetime"):
        parse_lifetime(text)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer abc", "abc"),
        (b"bearer abc", "abc"),
        (b"BEARER   abc  ", "abc"),
        (b"Basic abc", None),
        (b"Bearer", None),
        (b"Bearer ", None),
        (b"", None),
        (b"abc", None),
    ],
)
def test_bearer_scheme_is_case_insensitive(header: bytes, token: str | None) -> None:
    assert bearer(header) == token


@pytest.mark.parametrize(
    ("path", "mcp"),
    [
        ("/mcp", True),
        ("/v1/vms/box/mcp", True),
        ("/v1/vms/0123abcd/mcp", True),
        ("/v1/vms/box/tools/mcp", False),
        ("/v1/vms/box/mcp/", False),
        ("/v1/vms//mcp", False),
        ("/v1/vms/a/b/mcp", False),
        ("/v1/mcp", False),
        ("/mcp/x", False),
    ],
)
def test_only_the_real_mcp_routes_are_mcp_paths(path: str, mcp: bool) -> None:
    assert is_mcp_path(path) is mcp


@pytest.mark.parametrize(
    ("base", "host_file"),
    [
        ("debian-bookworm", False),
        ("debian-trixie", False),
        ("https://example.org/rootfs.tar.gz", False),
        ("http://example.org/rootfs.tar", False),
        ("/srv/rootfs.tar", True),
        ("rootfs.tar", True),
        ("./debian-bookworm", True),
        ("debian-x/../../etc/shadow", True),
        ("file:///etc/shadow", True),
    ],
)
def test_which_image_bases_are_host_files(base: str, host_file: bool) -> None:
    assert names_host_file(base) is host_file


def test_host_access_only_over_the_unix_socket() -> None:
    require_host_access(Transport.UNIX, "reading x")
    with pytest.raises(Forbidden, match="reading x reads or runs a file on nexusd's host: only over the Unix socket"):
        require_host_access(Transport.TCP, "reading x")


def test_firecracker_sums_are_pinned_or_given() -> None:
    assert expected_sha256("1.16.1", "x86_64", None) == PINNED_SHA256[("1.16.1", "x86_64")]
    assert expected_sha256("1.16.1", "aarch64", None) == PINNED_SHA256[("1.16.1", "aarch64")]
    given = "AB" * 32
    assert expected_sha256("1.16.1", "x86_64", given) == "ab" * 32  # the user's sum wins, even over a pin
    assert expected_sha256("9.9.9", "x86_64", given) == "ab" * 32
    with pytest.raises(Invalid) as caught:
        expected_sha256("9.9.9", "x86_64", None)
    assert "no pinned sha256 for Firecracker 9.9.9 on x86_64" in caught.value.message
    assert "nexusctl firecracker pull 9.9.9 --sha256 <sha256 of firecracker-v9.9.9-x86_64.tgz>" in caught.value.message
    with pytest.raises(Invalid, match="64 hex digits"):
        expected_sha256("1.16.1", "x86_64", "abc")
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in PINNED_SHA256.values())


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> tuple[TokenService, VmRepo, Clock]:
    conn = open_database(tmp_path / "nexus.db")
    vms = VmRepo(conn)
    for vm_id, name in (("a1b2c3d4e5f6", "box"), ("a1ffffffffff", "other")):
        at = datetime(2026, 1, 1, tzinfo=UTC)
        vms.insert(Vm(vm_id, name, Role.WORK, 1, 256, "img", "k", VmState.CREATED, at, at), reason="created")
    clock = Clock()
    return TokenService(TokenRepo(conn), vms, now=clock), vms, clock


def test_token_lifecycle(world: tuple[TokenService, VmRepo, Clock]) -> None:
    tokens, vms, clock = world
    issued = tokens.create("box", "1h")
    token = issued.token
    assert (token.vm_id, token.vm_name, token.expires_at) == ("a1b2c3d4e5f6", "box", clock.now + timedelta(hours=1))
    forever = tokens.create("a1b2c3d4e5f6").token
    assert forever.expires_at is None
    assert [t.id for t in tokens.list()] == [token.id, forever.id]
    assert [t.id for t in tokens.list("box")] == [token.id, forever.id]
    assert tokens.list("other") == []

    found = tokens.authenticate(issued.bearer)
    assert found is not None and found.id == token.id
    assert tokens.opens(found, "box") and tokens.opens(found, "a1b2c3d4e5f6") and tokens.opens(found, "a1b2c3")
    assert not tokens.opens(found, "other") and not tokens.opens(found, "nope")
    assert not tokens.opens(found, "a1")  # an ambiguous prefix resolves to no VM
    assert tokens.authenticate(issued.bearer[:-1] + ("0" if issued.bearer[-1] != "0" else "1")) is None
    assert tokens.authenticate("nxa_ffffffffffff_" + "0" * 64) is None
    assert tokens.authenticate("some-admin-token") is None

    clock.now += timedelta(hours=1)
    assert tokens.authenticate(issued.bearer) is None  # expired
    assert tokens.authenticate(tokens.create("box", "2w").bearer) is not None

    tokens.remove(forever.id)
    with pytest.raises(NotFound):
        tokens.remove(forever.id)
    with pytest.raises(NotFound):
        tokens.create("nope")
    with pytest.raises(Invalid):
        tokens.create("box", "forever")

    vms.delete("a1b2c3d4e5f6")  # vm rm: its tokens go with it
    assert tokens.list() == []
    assert tokens.authenticate(issued.bearer) is None


def test_last_used_is_written_at_most_once_a_minute(world: tuple[TokenService, VmRepo, Clock]) -> None:
    tokens, _, clock = world
    issued = tokens.create("box")
    start = clock.now
    assert tokens.authenticate(issued.bearer) is not None
    assert tokens.list()[0].last_used == start
    clock.now += TOUCH_EVERY / 2
    assert tokens.authenticate(issued.bearer) is not None
    assert tokens.list()[0].last_used == start
    clock.now += TOUCH_EVERY
    assert tokens.authenticate(issued.bearer) is not None
    assert tokens.list()[0].last_used == clock.now


def test_the_store_refuses_a_duplicate_hash(world: tuple[TokenService, VmRepo, Clock], tmp_path: Path) -> None:
    tokens, _, _ = world
    issued = tokens.create("box")
    repo = TokenRepo(open_database(tmp_path / "nexus.db"))
    found = repo.get(issued.token.id)
    assert found is not None
    twin = type(issued.token)(
        id="000000000000", vm_id=issued.token.vm_id, vm_name="box", created_at=issued.token.created_at
    )
    with pytest.raises(Conflict):
        repo.insert(twin, found[1])
