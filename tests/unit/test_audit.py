"""The audit log below the API: the SQLite repository (a real database in tmp) and the service (recording that never
raises, pages, live followers and their bounded queues, retention)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from nexus.domain import Invalid, NotFound, Role, Unavailable, Vm, VmState
from nexus.domain.audit import AuditEntry, AuditQuery, Decision, Via, digest
from nexus.services import SettingsService
from nexus.services.audit import AuditService, Lagged
from nexus.store import AuditRepo, SettingsRepo, VmRepo, open_database

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def entry(n: int = 0, **fields: object) -> AuditEntry:
    values: dict[str, object] = {
        "at": T0 + timedelta(minutes=n),
        "caller": "host",
        "via": Via.REST,
        "action": "POST /v1/vms/{ref}/start",
        "decision": Decision.ALLOW,
        **fields,
    }
    return AuditEntry(**values)  # type: ignore[arg-type]


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return open_database(tmp_path / "nexus.db")


@pytest.fixture
def repo(conn: sqlite3.Connection) -> AuditRepo:
    return AuditRepo(conn)


def service(conn: sqlite3.Connection, store: object = None, now: datetime = T0, queue_size: int = 1000) -> AuditService:
    return AuditService(
        store=store or AuditRepo(conn),  # type: ignore[arg-type]
        vms=VmRepo(conn),
        settings=SettingsService(SettingsRepo(conn)),
        now=lambda: now,
        queue_size=queue_size,
    )


# -- store ------------------------------------------------------------------------------------------------------


def test_insert_and_read_back_every_field(repo: AuditRepo) -> None:
    args_digest, size = digest({"command": "ls"})
    full = entry(
        caller="token:0123456789ab",
        via=Via.MCP,
        action="run_command",
        decision=Decision.DENY,
        target_id="a1b2c3d4e5f6",
        target="web",
        rule=3,
        reason="rule 3 denies run_command",
        args_digest=args_digest,
        args_bytes=size,
        duration_ms=1.5,
        result_bytes=42,
        is_error=True,
    )
    first, second = repo.insert(full), repo.insert(entry(1))
    assert second > first
    assert repo.find(AuditQuery(after=first - 1, limit=1)) == [dataclasses.replace(full, id=first)]


def test_filters_by_vm_id_or_name_caller_and_since(repo: AuditRepo) -> None:
    repo.insert(entry(0, target_id="aaaaaaaaaaaa", target="web"))
    repo.insert(entry(1, target_id="bbbbbbbbbbbb", target="db", caller="admin"))
    repo.insert(entry(2, target_id="aaaaaaaaaaaa", target="web", caller="admin"))
    repo.insert(entry(3))

    def minutes(query: AuditQuery) -> list[int]:
        return [int((e.at - T0).total_seconds() // 60) for e in repo.find(query)]

    assert minutes(AuditQuery(vm=("web",))) == [2, 0]
    assert minutes(AuditQuery(vm=("bbbbbbbbbbbb",))) == [1]
    assert minutes(AuditQuery(caller="admin")) == [2, 1]
    assert minutes(AuditQuery(since=T0 + timedelta(minutes=2))) == [3, 2]
    assert minutes(AuditQuery(vm=("web",), caller="admin")) == [2]


def test_pages_newest_first_below_before_and_oldest_first_above_after(repo: AuditRepo) -> None:
    ids = [repo.insert(entry(n)) for n in range(5)]
    assert [e.id for e in repo.find(AuditQuery(limit=2))] == [ids[4], ids[3]]
    assert [e.id for e in repo.find(AuditQuery(before=ids[3], limit=2))] == [ids[2], ids[1]]
    assert [e.id for e in repo.find(AuditQuery(after=ids[1], limit=2))] == [ids[2], ids[3]]


def test_prune_removes_only_older_entries_and_ids_are_never_reused(repo: AuditRepo) -> None:
    ids = [repo.insert(entry(n)) for n in range(5)]
    assert repo.prune(T0 + timedelta(minutes=3), batch=2) == 2
    assert repo.prune(T0 + timedelta(minutes=3), batch=2) == 1
    assert repo.prune(T0 + timedelta(minutes=3), batch=2) == 0
    assert [e.id for e in repo.find(AuditQuery())] == [ids[4], ids[3]]
    repo.insert(entry(9))
    repo.prune(T0 + timedelta(days=1), batch=100)
    assert repo.insert(entry(10)) > ids[4] + 1  # AUTOINCREMENT: a stream's Last-Event-ID stays meaningful


def test_times_from_any_zone_compare_as_times(repo: AuditRepo) -> None:
    repo.insert(entry(at=datetime(2026, 12, 1, 13, 0, tzinfo=timezone(timedelta(hours=2)))))  # 11:00 UTC
    repo.insert(entry(at=datetime(2026, 12, 1, 11, 30, tzinfo=UTC)))
    found = repo.find(AuditQuery(since=datetime(2026, 12, 1, 11, 15, tzinfo=UTC)))
    assert [e.at for e in found] == [datetime(2026, 12, 1, 11, 30, tzinfo=UTC)]


# -- service: recording ----------------------------------------------------------------------------------------


class BrokenStore:
    def insert(self, entry: AuditEntry) -> int:
        raise Unavailable("the state database cannot be written: the disk is full; free space in the state dir")

    def find(self, query: AuditQuery) -> list[AuditEntry]:
        raise sqlite3.DatabaseError("malformed")

    def prune(self, older_than: datetime, batch: int) -> int:
        raise Unavailable("busy")


async def test_record_never_raises_and_logs_the_dropped_entry(
    conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    audit = service(conn, store=BrokenStore())
    with caplog.at_level(logging.WARNING, logger="nexus.services.audit"):
        audit.record(entry(action="vm_start", via=Via.MCP))
    assert "audit entry dropped (mcp vm_start by host)" in caplog.text
    assert "disk is full" in caplog.text


async def test_record_survives_any_exception_from_the_store(conn: sqlite3.Connection) -> None:
    class Bug(BrokenStore):
        def insert(self, entry: AuditEntry) -> int:
            raise RuntimeError("a bug")

    service(conn, store=Bug()).record(entry())


async def test_target_names_a_known_vm_and_nothing_else(conn: sqlite3.Connection) -> None:
    vms = VmRepo(conn)
    vm = Vm("a1b2c3d4e5f6", "web", Role.WORK, 1, 256, "i", "k", VmState.CREATED, T0, T0, network=False)
    vms.insert(vm, "created")
    audit = service(conn)
    assert audit.target("web") == ("a1b2c3d4e5f6", "web")
    assert audit.target("a1b2") == ("a1b2c3d4e5f6", "web")
    assert audit.target("sk-secret-given-as-a-ref") == (None, None)  # a caller's input is never stored as is
    with pytest.raises(NotFound):
        vms.get("sk-secret-given-as-a-ref")


# -- service: pages ---------------------------------------------------------------------------------------------


async def test_query_pages_and_cursors(conn: sqlite3.Connection) -> None:
    audit = service(conn)
    for n in range(5):
        audit.record(entry(n))
    first = audit.query(limit=2)
    assert [e.id for e in first.entries] == [5, 4]
    assert (first.next_before, first.next_after) == (4, 5)
    last = audit.query(before=first.next_before, limit=3)
    assert [e.id for e in last.entries] == [3, 2, 1]
    assert last.next_before is None  # nothing older
    newer = audit.query(after=3, limit=10)
    assert ([e.id for e in newer.entries], newer.next_before, newer.next_after) == ([4, 5], None, 5)
    assert audit.query(after=5).next_after == 5  # nothing new: poll again with the same cursor
    assert audit.query(since=datetime(2026, 12, 1, 12, 3)).entries[-1].id == 4  # no zone: UTC


@pytest.mark.parametrize(("kwargs", "message"), [({"before": 2, "after": 1}, "not both"), ({"limit": 0}, "limit")])
async def test_query_refuses_contradictions(conn: sqlite3.Connection, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        service(conn).query(**kwargs)  # type: ignore[arg-type]


# -- service: live followers ------------------------------------------------------------------------------------


async def _take(entries: AsyncIterator[AuditEntry], n: int) -> list[int]:
    got = []
    async with asyncio.timeout(5):
        async for e in entries:
            got.append(e.id or 0)
            if len(got) == n:
                break
    return got


async def test_every_follower_gets_each_new_entry(conn: sqlite3.Connection) -> None:
    audit = service(conn)
    audit.record(entry(0))  # before anyone follows: not sent to a follower that asked for new ones only
    one, two = audit.follow(), audit.follow(AuditQuery(caller="admin"))
    first = asyncio.ensure_future(_take(one, 3))
    second = asyncio.ensure_future(_take(two, 1))
    await asyncio.sleep(0.01)  # both subscribed
    audit.record(entry(1))
    audit.record(entry(2, caller="admin"))
    audit.record(entry(3))
    assert await first == [2, 3, 4]
    assert await second == [3]  # the filter applies to live entries as to stored ones
    await one.aclose()
    await two.aclose()


async def test_follow_replays_stored_entries_after_an_id_then_goes_live(conn: sqlite3.Connection) -> None:
    audit = service(conn)
    for n in range(3):
        audit.record(entry(n))
    follower = audit.follow(after=1)
    taking = asyncio.ensure_future(_take(follower, 3))
    await asyncio.sleep(0.01)
    audit.record(entry(3))
    assert await taking == [2, 3, 4]
    await follower.aclose()


async def test_a_slow_subscriber_loses_entries_and_is_told_so(conn: sqlite3.Connection) -> None:
    audit = service(conn, queue_size=2)
    with audit.subscribe() as slow:
        for n in range(5):
            audit.record(entry(n))  # never waits for the reader
        assert [(await slow.get()).id for _ in range(2)] == [1, 2]  # type: ignore[union-attr]
        with pytest.raises(Lagged) as lag:
            await slow.get()
        assert lag.value.lost == 3
        audit.record(entry(5))
        assert (await slow.get()).id == 6  # type: ignore[union-attr]


async def test_a_slow_follower_reads_its_gap_from_the_store(conn: sqlite3.Connection) -> None:
    audit = service(conn, queue_size=2)
    follower = audit.follow()
    first = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0.01)
    for n in range(6):
        audit.record(entry(n))
    assert (await first).id == 1
    assert await _take(follower, 5) == [2, 3, 4, 5, 6]  # the queue held two; the rest came from the store
    audit.record(entry(7))
    assert await _take(follower, 1) == [7]
    await follower.aclose()


async def test_close_ends_followers(conn: sqlite3.Connection) -> None:
    audit = service(conn)
    follower = audit.follow()
    collected = asyncio.ensure_future(_take(follower, 10))
    await asyncio.sleep(0.01)
    audit.record(entry(0))
    audit.close()
    assert await collected == [1]
    assert [e async for e in audit.follow()] == []  # one that starts after close ends at once


# -- service: retention -----------------------------------------------------------------------------------------


async def test_prune_keeps_the_retention_setting(conn: sqlite3.Connection) -> None:
    settings = SettingsService(SettingsRepo(conn))
    assert settings.int_value("audit_retention_days") == 30
    audit = service(conn, now=T0 + timedelta(days=30, minutes=2))
    for n in range(4):
        audit.record(entry(n))
    assert await audit.prune() == 2  # minutes 0 and 1 are more than 30 days old
    settings.set("audit_retention_days", 0)
    assert await service(conn, now=T0 + timedelta(days=999)).prune() == 0  # 0: forever
    assert [e.id for e in audit.query().entries] == [4, 3]


async def test_retain_prunes_at_once_and_survives_a_failing_store(
    conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    audit = service(conn, now=T0 + timedelta(days=31))
    audit.record(entry(0))
    task = asyncio.ensure_future(audit.retain(every_s=3600))
    await asyncio.sleep(0.05)
    assert audit.query().entries == []
    task.cancel()
    broken = service(conn, store=BrokenStore())
    with caplog.at_level(logging.WARNING, logger="nexus.services.audit"):
        task = asyncio.ensure_future(broken.retain(every_s=0.01))
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
    assert "pruning failed: busy" in caplog.text


# -- the HTTP edge's pieces -------------------------------------------------------------------------------------


def test_route_templates_prefer_literal_segments_and_fall_back_to_any_method() -> None:
    from nexus.api.audit import RouteTemplates

    routes = RouteTemplates(
        {
            "/v1/vms/{ref}": ["get", "delete"],
            "/v1/vms/{ref}/start": ["post"],
            "/v1/kernels/{version}": ["delete"],
            "/v1/kernels/pull": ["post"],
        }
    )
    assert routes.match("POST", "/v1/vms/web/start") == ("/v1/vms/{ref}/start", {"ref": "web"})
    assert routes.match("POST", "/v1/kernels/pull") == ("/v1/kernels/pull", {})
    assert routes.match("DELETE", "/v1/kernels/6.1") == ("/v1/kernels/{version}", {"version": "6.1"})
    assert routes.match("PUT", "/v1/vms/web") == ("/v1/vms/{ref}", {"ref": "web"})  # a refused method still names it
    assert routes.match("POST", "/v1/vms/web/start/now") is None


async def test_event_stream_sends_ids_data_and_keepalives() -> None:
    from nexus.api.sse import event_stream

    closed = asyncio.Event()

    async def source() -> AsyncGenerator[int, None]:
        try:
            yield 1
            await asyncio.sleep(0.05)  # silence: a keep-alive comment goes out
            yield 2
        finally:
            closed.set()

    response = event_stream(source(), lambda n: (n, f'{{"n": {n}}}'), keepalive_s=0.02)
    chunks = [c async for c in response.body_iterator]
    assert chunks[0] == b'id: 1\ndata: {"n": 1}\n\n'
    assert b": keep-alive\n\n" in chunks
    assert chunks[-1] == b'id: 2\ndata: {"n": 2}\n\n'
    assert closed.is_set()
    assert response.media_type == "text/event-stream"
