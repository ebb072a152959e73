"""The Watch contract on SQLite with the in-process broker: bootstrap, resume, RESET, bookmarks, ends.

The helpers at the top (`ItemStore`, `Watcher`, `open_db`) are reused by the PostgreSQL tests in
tests/integration/platform/test_watch_postgres.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from foundry.common.v1 import watch_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from prometheus_client import REGISTRY
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.db import Database, platform_metadata
from services.platform.errors import PermissionDenied
from services.platform.messaging.broker import Broker
from services.platform.messaging.memory import MemoryBroker
from services.platform.settings import WatchSettings
from services.platform.watch import Snapshot, TokenCodec, WatchHub, read_scope, record_change
from services.platform.watch.testing import WatchClient
from tests.helpers import assert_eventually

SCOPE = "items:demo"
items_metadata = MetaData()
items = Table(
    "watch_test_items",
    items_metadata,
    Column("name", String(200), primary_key=True),
    Column("value", Integer, nullable=False),
)


def item(value: int) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update({"value": value})
    return message


async def create_tables(db: Database) -> None:
    await db.ensure_schema()
    async with db.engine.begin() as conn:
        await conn.run_sync(platform_metadata.create_all)
        await conn.run_sync(items_metadata.create_all)


class ItemStore:
    """A service's own rows plus the watch log, written in one transaction like real services do."""

    def __init__(self, db: Database, scope: str = SCOPE) -> None:
        self.db = db
        self.scope = scope

    async def put(self, name: str, value: int) -> int:
        async with self.db.transaction() as session:
            await session.execute(items.delete().where(items.c.name == name))
            await session.execute(items.insert().values(name=name, value=value))
            return await record_change(session, scope=self.scope, name=name, resource=item(value))

    async def delete(self, name: str) -> int:
        async with self.db.transaction() as session:
            await session.execute(items.delete().where(items.c.name == name))
            return await record_change(session, scope=self.scope, name=name, resource=None)

    async def snapshot(self, session: AsyncSession) -> Sequence[tuple[str, Message]]:
        rows = (await session.execute(select(items.c.name, items.c.value).order_by(items.c.name))).all()
        return [(row.name, item(row.value)) for row in rows]

    async def truth(self) -> dict[str, struct_pb2.Struct]:
        async with self.db.snapshot() as session:
            return {name: message for name, message in await self.snapshot(session)}  # type: ignore[misc]


class Watcher:
    """Runs one client's streams in a background task, applying every event to `client`.

    `versions` records the version of every UPSERT/DELETE applied, across streams, so tests can
    check that changes arrive exactly once and in order.
    """

    def __init__(self, hub: WatchHub, store: ItemStore, *, snapshot: Snapshot | None = None) -> None:
        self.hub = hub
        self.store = store
        self.snapshot = snapshot or store.snapshot
        self.client = WatchClient()
        self.codec = TokenCodec(store.scope)
        self.versions: list[int] = []
        self.snapshot_token = ""
        self.kinds: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def open(self, hub: WatchHub | None = None) -> None:
        assert self._task is None or self._task.done()
        self._task = asyncio.create_task(self._run(hub or self.hub))

    async def _run(self, hub: WatchHub) -> None:
        self.client.begin()
        stream = hub.stream(
            self.store.scope, resume_token=self.client.token, snapshot=self.snapshot, wrap=_same
        )
        async for event in stream:
            self.client.apply(event)
            self.kinds.append(event.kind)
            if event.kind in (watch_pb2.WATCH_EVENT_KIND_UPSERT, watch_pb2.WATCH_EVENT_KIND_DELETE):
                self.versions.append(self.codec.decode(event.resume_token))
            if event.kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END:
                self.snapshot_token = event.resume_token

    async def drop(self) -> None:
        """The connection drops: the stream is cancelled wherever it is."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def finished(self) -> None:
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)

    async def converged(self) -> None:
        truth = await self.store.truth()
        await assert_eventually(lambda: _same_state(self.client, truth), timeout=10)


def _same(event: watch_pb2.WatchEvent) -> watch_pb2.WatchEvent:
    return event


def _same_state(client: WatchClient, truth: dict[str, struct_pb2.Struct]) -> None:
    assert client.resources(struct_pb2.Struct) == truth


async def collect(stream: AsyncIterator[watch_pb2.WatchEvent], count: int) -> list[watch_pb2.WatchEvent]:
    events: list[watch_pb2.WatchEvent] = []
    async for event in stream:
        events.append(event)
        if len(events) == count:
            break
    return events


async def run_random_interleaving(
    seed: int, stores: Sequence[ItemStore], hubs: Sequence[WatchHub], *, steps: int = 60
) -> Watcher:
    """Random writes and deletes (through any of `stores`), dropped connections and resumes (on
    any of `hubs`).

    Afterwards the client's state equals a fresh snapshot and every change after the bootstrap
    was applied exactly once, in version order.
    """
    rng = random.Random(seed)
    store = stores[0]
    names = [f"items/{i}" for i in range(6)]
    watcher = Watcher(hubs[0], store)
    for name in rng.sample(names, 3):
        await store.put(name, rng.randrange(100))
    watcher.open()
    for _ in range(steps):
        action = rng.random()
        if action < 0.55:
            await rng.choice(stores).put(rng.choice(names), rng.randrange(1000))
        elif action < 0.75:
            await rng.choice(stores).delete(rng.choice(names))
        elif action < 0.9:
            await watcher.drop()
            watcher.open(rng.choice(list(hubs)))
        else:
            await asyncio.sleep(0)  # let the stream run between bursts
    await watcher.converged()
    await watcher.drop()
    first = watcher.codec.decode(watcher.snapshot_token) + 1
    assert watcher.versions == list(range(first, first + len(watcher.versions)))
    async with store.db.snapshot() as session:
        assert watcher.versions[-1:] in ([], [(await read_scope(session, store.scope)).version])
    assert watcher.client.snapshots == 1 and watcher.client.resets == 0
    return watcher


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'watch.sqlite3'}")
    await create_tables(database)
    yield database
    await database.dispose()


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    memory = MemoryBroker()
    await memory.connect()
    yield memory
    await memory.close()


@contextlib.asynccontextmanager
async def running_hub(db: Database, broker: Broker | None, **settings: float) -> AsyncIterator[WatchHub]:
    hub = WatchHub(db, broker, WatchSettings(**settings), service="test")
    async with hub:
        yield hub


class TestBootstrap:
    async def test_bootstrap_sends_paged_snapshot_then_end_marker_then_changes(self, db: Database) -> None:
        store = ItemStore(db)
        for i in range(5):
            await store.put(f"items/{i}", i)
        async with running_hub(db, None, snapshot_page_size=2) as hub:
            stream = hub.stream(SCOPE, snapshot=store.snapshot, wrap=_same)
            first = await collect(stream, 4)
            assert [e.kind for e in first] == [watch_pb2.WATCH_EVENT_KIND_SNAPSHOT] * 3 + [
                watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END
            ]
            assert [len(e.items) for e in first[:3]] == [2, 2, 1]
            assert first[3].resume_token == TokenCodec(SCOPE).encode(5)
            assert {i.version for e in first[:3] for i in e.items} == {first[3].resume_token}
            await store.put("items/9", 9)
            (change,) = await collect(stream, 1)
            assert change.kind == watch_pb2.WATCH_EVENT_KIND_UPSERT
            assert change.items[0].name == "items/9" and change.resume_token == TokenCodec(SCOPE).encode(6)
            await stream.aclose()  # type: ignore[attr-defined]

    async def test_scope_without_changes_sends_one_empty_page_and_a_token(self, db: Database) -> None:
        async with running_hub(db, None) as hub:
            stream = hub.stream("items:never-written", snapshot=ItemStore(db).snapshot, wrap=_same)
            page, end = await collect(stream, 2)
            assert page.kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT
            assert end.kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END and end.resume_token
            await stream.aclose()  # type: ignore[attr-defined]

    async def test_changes_committed_during_bootstrap_arrive_once_after_snapshot_end(
        self, db: Database
    ) -> None:
        store = ItemStore(db)
        await store.put("items/a", 1)
        async with running_hub(db, None) as hub:

            async def slow_snapshot(session: AsyncSession) -> Sequence[tuple[str, Message]]:
                result = await store.snapshot(session)
                await asyncio.gather(*(store.put(f"items/late-{i}", i) for i in range(3)))
                return result

            watcher = Watcher(hub, store, snapshot=slow_snapshot)
            watcher.open()
            await assert_eventually(lambda: _versions_are(watcher, [2, 3, 4]))
            await watcher.converged()
            await watcher.drop()

    async def test_changes_of_other_scopes_are_not_delivered(self, db: Database) -> None:
        store, other = ItemStore(db), ItemStore(db, "items:other")
        async with running_hub(db, None, bookmark_seconds=0.2) as hub:
            stream = hub.stream(SCOPE, snapshot=store.snapshot, wrap=_same)
            await collect(stream, 2)
            await other.put("items/x", 1)
            (event,) = await collect(stream, 1)
            assert event.kind == watch_pb2.WATCH_EVENT_KIND_BOOKMARK
            assert event.resume_token == TokenCodec(SCOPE).encode(0)
            await stream.aclose()  # type: ignore[attr-defined]


class TestResume:
    async def test_resume_replays_changes_after_the_token_without_a_snapshot(self, db: Database) -> None:
        store = ItemStore(db)
        for i in range(4):
            await store.put(f"items/{i}", i)
        await store.delete("items/0")
        async with running_hub(db, None) as hub:
            token = TokenCodec(SCOPE).encode(2)
            stream = hub.stream(SCOPE, resume_token=token, snapshot=store.snapshot, wrap=_same)
            events = await collect(stream, 3)
            assert [e.kind for e in events] == [watch_pb2.WATCH_EVENT_KIND_UPSERT] * 2 + [
                watch_pb2.WATCH_EVENT_KIND_DELETE
            ]
            assert [e.items[0].name for e in events] == ["items/2", "items/3", "items/0"]
            assert not events[2].items[0].HasField("resource")
            await store.put("items/7", 7)
            (live,) = await collect(stream, 1)
            assert live.resume_token == TokenCodec(SCOPE).encode(6)
            await stream.aclose()  # type: ignore[attr-defined]

    async def test_resume_after_dropped_connection_sends_no_second_snapshot(self, db: Database) -> None:
        store = ItemStore(db)
        async with running_hub(db, None) as hub:
            watcher = Watcher(hub, store)
            await store.put("items/a", 1)
            watcher.open()
            await watcher.converged()
            for round_ in range(3):
                await watcher.drop()
                await store.put("items/a", 10 + round_)
                await store.put(f"items/b{round_}", round_)
                watcher.open()
                await watcher.converged()
            assert watcher.client.snapshots == 1
            assert watcher.kinds.count(watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END) == 1
            assert watcher.versions == [2, 3, 4, 5, 6, 7]
            await watcher.drop()

    async def test_bootstraps_and_resumes_are_measured_by_kind_and_outcome(self, db: Database) -> None:
        """foundry_watch_bootstrap_seconds counts streams that took a snapshot (a resume takes
        none); foundry_watch_resumes_total counts reconnects by outcome."""

        def sample(name: str, **labels: str) -> float:
            value = REGISTRY.get_sample_value(name, {"service": "test", "kind": "items", **labels})
            return value or 0.0

        def resumes(outcome: str) -> float:
            return sample("foundry_watch_resumes_total", outcome=outcome)

        before = {o: resumes(o) for o in ("replay", "caught_up", "reset")}
        boots = sample("foundry_watch_bootstrap_seconds_count")
        store = ItemStore(db)
        await store.put("items/a", 1)
        async with running_hub(db, None) as hub:
            watcher = Watcher(hub, store)
            watcher.open()
            await watcher.converged()
            assert sample("foundry_watch_bootstrap_seconds_count") - boots == 1
            await watcher.drop()
            await store.put("items/b", 2)
            watcher.open()  # missed one change: replayed
            await watcher.converged()
            await watcher.drop()
            watcher.open()  # missed nothing
            await assert_eventually(lambda: _eq(resumes("caught_up") - before["caught_up"], 1))
            await watcher.drop()
            stream = hub.stream(SCOPE, resume_token="garbage", snapshot=store.snapshot, wrap=_same)
            events = [e async for e in stream]
            assert events[0].kind == watch_pb2.WATCH_EVENT_KIND_RESET
        assert {o: resumes(o) - before[o] for o in before} == {"replay": 1, "caught_up": 1, "reset": 1}
        assert sample("foundry_watch_bootstrap_seconds_count") - boots == 1

    async def test_expired_token_gets_reset_then_end_expired(self, db: Database) -> None:
        store = ItemStore(db)
        for i in range(3):
            await store.put(f"items/{i}", i)
        async with running_hub(db, None) as hub:
            assert await hub.compact() == 0  # nothing is older than the retention yet
            assert await hub.compact(now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)) == 3
            await store.put("items/3", 3)
            stream = hub.stream(
                SCOPE, resume_token=TokenCodec(SCOPE).encode(1), snapshot=store.snapshot, wrap=_same
            )
            events = [e async for e in stream]
            assert [e.kind for e in events] == [
                watch_pb2.WATCH_EVENT_KIND_RESET,
                watch_pb2.WATCH_EVENT_KIND_END,
            ]
            assert events[1].end_reason == watch_pb2.WATCH_END_REASON_EXPIRED and events[1].resume_token == ""
            # A token at the compaction point still resumes: version 4 is retained.
            stream = hub.stream(
                SCOPE, resume_token=TokenCodec(SCOPE).encode(3), snapshot=store.snapshot, wrap=_same
            )
            (event,) = await collect(stream, 1)
            assert event.kind == watch_pb2.WATCH_EVENT_KIND_UPSERT and event.items[0].name == "items/3"
            await stream.aclose()  # type: ignore[attr-defined]

    @pytest.mark.parametrize(
        "token",
        [
            "garbage",
            "v1.000000000000.x",
            "v1.abc.1",
            TokenCodec("items:other").encode(1),
            TokenCodec(SCOPE).encode(99),
        ],
        ids=["garbage", "non-numeric", "short-tag", "foreign-scope", "newer-than-scope"],
    )
    async def test_unusable_token_gets_reset(self, db: Database, token: str) -> None:
        store = ItemStore(db)
        await store.put("items/a", 1)
        async with running_hub(db, None) as hub:
            events = [
                e async for e in hub.stream(SCOPE, resume_token=token, snapshot=store.snapshot, wrap=_same)
            ]
            assert [e.kind for e in events] == [
                watch_pb2.WATCH_EVENT_KIND_RESET,
                watch_pb2.WATCH_EVENT_KIND_END,
            ]
            client = WatchClient()
            client.token = token
            client.begin()
            for event in events:
                client.apply(event)
            assert client.token == "" and client.end_reason == "expired"

    async def test_rolled_back_write_gives_its_version_back(self, db: Database) -> None:
        store = ItemStore(db)
        assert await store.put("items/a", 1) == 1
        with pytest.raises(RuntimeError):
            async with db.transaction() as session:
                await record_change(session, scope=SCOPE, name="items/b", resource=item(2))
                raise RuntimeError("writer fails after recording")
        assert await store.put("items/c", 3) == 2


class TestServerEnds:
    async def test_bookmark_after_silence_carries_the_current_token(self, db: Database) -> None:
        store = ItemStore(db)
        await store.put("items/a", 1)
        async with running_hub(db, None, bookmark_seconds=0.2) as hub:
            stream = hub.stream(SCOPE, snapshot=store.snapshot, wrap=_same)
            await collect(stream, 2)
            await store.put("items/a", 2)
            # A slow write can let a bookmark (of version 1) go out first: read up to the first
            # bookmark after the change.
            events: list[watch_pb2.WatchEvent] = []
            async for event in stream:
                events.append(event)
                upserts = [e for e in events if e.kind == watch_pb2.WATCH_EVENT_KIND_UPSERT]
                if upserts and event.kind == watch_pb2.WATCH_EVENT_KIND_BOOKMARK:
                    break
            (change,), bookmark = upserts, events[-1]
            assert bookmark.kind == watch_pb2.WATCH_EVENT_KIND_BOOKMARK
            assert bookmark.resume_token == change.resume_token == TokenCodec(SCOPE).encode(2)
            await stream.aclose()  # type: ignore[attr-defined]

    async def test_stream_rotates_after_its_maximum_lifetime(self, db: Database) -> None:
        store = ItemStore(db)
        await store.put("items/a", 1)
        async with running_hub(db, None, max_stream_seconds=0.3) as hub:
            events = [e async for e in hub.stream(SCOPE, snapshot=store.snapshot, wrap=_same)]
            assert events[-1].kind == watch_pb2.WATCH_EVENT_KIND_END
            assert events[-1].end_reason == watch_pb2.WATCH_END_REASON_ROTATE
            assert events[-1].resume_token == TokenCodec(SCOPE).encode(1)
            assert hub.open_streams == 0

    async def test_drain_ends_open_streams_with_their_token_and_refuses_new_ones(self, db: Database) -> None:
        store = ItemStore(db)
        async with running_hub(db, None) as hub:
            watchers = [Watcher(hub, store) for _ in range(3)]
            for watcher in watchers:
                watcher.open()
            await store.put("items/a", 1)
            for watcher in watchers:
                await watcher.converged()
            assert hub.open_streams_by_kind() == {"items": 3}
            await hub.drain(wait_seconds=5)
            for watcher in watchers:
                await watcher.finished()
                assert watcher.client.end_reason == "draining"
                assert watcher.client.token == TokenCodec(SCOPE).encode(1)
            assert hub.open_streams == 0
            late = [e async for e in hub.stream(SCOPE, resume_token="t", snapshot=store.snapshot, wrap=_same)]
            assert [(e.kind, e.end_reason, e.resume_token) for e in late] == [
                (watch_pb2.WATCH_EVENT_KIND_END, watch_pb2.WATCH_END_REASON_DRAINING, "t")
            ]

    async def test_slow_consumer_ends_lagging_with_bounded_buffer(self, db: Database) -> None:
        store = ItemStore(db)
        async with running_hub(db, None, subscriber_buffer=5) as hub:
            stream = hub.stream(SCOPE, snapshot=store.snapshot, wrap=_same)
            await collect(stream, 2)  # bootstrapped; now the client stops reading
            for i in range(30):
                await store.put(f"items/{i % 4}", i)
                assert hub.buffered_events() <= 5
            events = [e async for e in stream]
            assert events[-1].end_reason == watch_pb2.WATCH_END_REASON_LAGGING
            assert all(e.kind != watch_pb2.WATCH_EVENT_KIND_UPSERT for e in events)
            # The lagging client resumes from its token and loses nothing.
            watcher = Watcher(hub, store)
            watcher.client.token = events[-1].resume_token  # the scope was empty at the bootstrap
            watcher.open()
            await watcher.converged()
            assert watcher.versions == list(range(1, 31))
            await watcher.drop()

    async def test_caller_without_access_is_refused_before_any_event(self, db: Database) -> None:
        async def deny() -> None:
            raise PermissionDenied("not a member of organization acme")

        async with running_hub(db, None) as hub:
            stream = hub.stream(SCOPE, snapshot=ItemStore(db).snapshot, authorize=deny, wrap=_same)
            with pytest.raises(PermissionDenied):
                await stream.__anext__()
            resumed = hub.stream(
                SCOPE,
                resume_token=TokenCodec(SCOPE).encode(0),
                snapshot=ItemStore(db).snapshot,
                authorize=deny,
                wrap=_same,
            )
            with pytest.raises(PermissionDenied):
                await resumed.__anext__()
            assert hub.open_streams == 0

    async def test_caller_losing_access_is_ended_unauthorized_at_a_bookmark(self, db: Database) -> None:
        allowed = True

        async def check() -> None:
            if not allowed:
                raise PermissionDenied("removed from organization acme")

        async with running_hub(db, None, bookmark_seconds=0.1) as hub:
            stream = hub.stream(SCOPE, snapshot=ItemStore(db).snapshot, authorize=check, wrap=_same)
            await collect(stream, 3)  # snapshot, end marker, first bookmark
            allowed = False
            events = [e async for e in stream]
            assert [(e.kind, e.end_reason) for e in events] == [
                (watch_pb2.WATCH_EVENT_KIND_END, watch_pb2.WATCH_END_REASON_UNAUTHORIZED)
            ]


class TestReplicasAndProperties:
    @pytest.mark.parametrize("seed", [1, 2, 3, 4])
    async def test_random_writes_and_resumes_converge_to_a_fresh_snapshot(
        self, db: Database, broker: Broker, seed: int
    ) -> None:
        async with running_hub(db, broker) as hub:
            await run_random_interleaving(seed, [ItemStore(db, f"items:seed-{seed}")], [hub])

    async def test_commit_without_notification_is_picked_up_at_the_next_tick(self, tmp_path: Path) -> None:
        """A writer process with no hub (or a lost broadcast) is seen within `bookmark_seconds`."""
        url = f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite3'}"
        reader_db, writer_db = Database(url), Database(url)
        await create_tables(reader_db)
        try:
            async with running_hub(reader_db, None, bookmark_seconds=0.2) as hub:
                watcher = Watcher(hub, ItemStore(reader_db))
                watcher.open()
                await assert_eventually(lambda: _has_token(watcher.client))
                await ItemStore(writer_db).put("items/a", 1)
                await watcher.converged()
                await watcher.drop()
        finally:
            await reader_db.dispose()
            await writer_db.dispose()


def _eq(actual: object, expected: object) -> None:
    assert actual == expected, actual


def _versions_are(watcher: Watcher, expected: list[int]) -> None:
    assert watcher.versions == expected


def _has_token(client: WatchClient) -> None:
    assert client.token


async def test_watchers_joining_during_a_write_burst_each_get_every_later_change_once(
    db: Database, broker: Broker
) -> None:
    """Changes committed while a stream subscribes and reads its snapshot are buffered, the ones
    at or below the snapshot version are dropped, and the rest are delivered once, in order."""
    store = ItemStore(db)
    async with running_hub(db, broker) as hub:
        watchers: list[Watcher] = []

        async def burst() -> None:
            for i in range(60):
                await store.put(f"items/{i % 7}", i)

        writing = asyncio.create_task(burst())
        while not writing.done() and len(watchers) < 40:
            watcher = Watcher(hub, store)
            watcher.open()
            watchers.append(watcher)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        await writing
        for watcher in watchers:
            await watcher.converged()
            first = watcher.codec.decode(watcher.snapshot_token) + 1
            assert watcher.versions == list(range(first, 61))
            await watcher.drop()
        assert len(watchers) > 5
