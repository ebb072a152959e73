"""The Watch contract on the real PostgreSQL and RabbitMQ: versions follow commit order under
concurrent writers, two replicas share one change log, and a drained stream resumes elsewhere."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from services.platform.db import Database
from services.platform.messaging import AmqpBroker
from services.platform.settings import MessagingSettings, WatchSettings
from services.platform.watch import TokenCodec, WatchHub, record_change
from tests.helpers import assert_eventually, unique_name
from tests.unit.platform.test_watch_hub import (
    ItemStore,
    Watcher,
    create_tables,
    item,
    items,
    run_random_interleaving,
)

pytestmark = pytest.mark.integration


@dataclass
class Replica:
    db: Database
    hub: WatchHub
    store: ItemStore


@pytest.fixture(name="replicas")
async def _replicas(pg_url: str, amqp_url: str) -> AsyncIterator[list[Replica]]:
    """Two service replicas: own engine, own RabbitMQ connection, own hub; one schema and vhost."""
    schema, prefix = unique_name("watch"), unique_name("it")
    # bookmark_seconds is long, so a change seen on the other replica can only come from the broadcast.
    settings = WatchSettings(bookmark_seconds=15.0)
    replicas: list[Replica] = []
    brokers: list[AmqpBroker] = []
    for _ in range(2):
        db = Database(pg_url, schema=schema)
        if not replicas:
            await create_tables(db)
        broker = AmqpBroker(amqp_url, prefix=prefix, settings=MessagingSettings())
        await broker.connect()
        hub = WatchHub(db, broker, settings, service="test")
        await hub.start()
        brokers.append(broker)
        replicas.append(Replica(db, hub, ItemStore(db)))
    yield replicas
    for replica, broker in zip(replicas, brokers, strict=True):
        await replica.hub.stop()
        await broker.close()
        await replica.db.dispose()


async def test_concurrent_writers_get_gap_free_versions_seen_in_order(replicas: list[Replica]) -> None:
    """Many writers in separate transactions, on a scope that does not exist yet, each pausing
    between taking its version and committing: versions are unique and gap-free, each writer's own
    writes are ordered, and a watcher receives every version exactly once, in order."""
    replica = replicas[0]
    watcher = Watcher(replica.hub, replica.store)
    watcher.open()
    await assert_eventually(lambda: _has_token(watcher))
    rng = random.Random(7)
    writers, writes = 16, 8

    async def writer(k: int) -> list[int]:
        versions = []
        for value in range(writes):
            async with replica.db.transaction() as session:
                version = await record_change(
                    session, scope=replica.store.scope, name=f"items/{k}", resource=item(value)
                )
                await asyncio.sleep(rng.random() * 0.003)  # commit late while others queue on the lock
                await session.execute(items.delete().where(items.c.name == f"items/{k}"))
                await session.execute(items.insert().values(name=f"items/{k}", value=value))
            versions.append(version)
        return versions

    per_writer = await asyncio.gather(*(writer(k) for k in range(writers)))
    assert sorted(v for versions in per_writer for v in versions) == list(range(1, writers * writes + 1))
    assert all(versions == sorted(versions) for versions in per_writer)
    await watcher.converged()
    assert watcher.versions == list(range(1, writers * writes + 1))
    await watcher.drop()


async def test_second_writer_waits_for_the_first_so_versions_commit_in_order(replicas: list[Replica]) -> None:
    """The bigserial trap (anchors §2.3) cannot happen: version 2 cannot commit before version 1."""
    db, scope = replicas[0].db, replicas[0].store.scope
    await replicas[0].store.put("items/seed", 0)  # the scope row exists
    first_recorded, release_first = asyncio.Event(), asyncio.Event()

    async def first() -> int:
        async with db.transaction() as session:
            version = await record_change(session, scope=scope, name="items/a", resource=item(1))
            first_recorded.set()
            await release_first.wait()
        return version

    first_task = asyncio.create_task(first())
    await first_recorded.wait()
    second_task = asyncio.create_task(replicas[1].store.put("items/b", 2))
    done, _ = await asyncio.wait({second_task}, timeout=0.3)
    assert not done, "the second writer must wait for the first one's commit"
    release_first.set()
    assert (await first_task, await second_task) == (2, 3)


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_random_writes_on_both_replicas_and_resumes_anywhere_converge(
    replicas: list[Replica], seed: int
) -> None:
    stores = [ItemStore(r.db, f"items:seed-{seed}") for r in replicas]
    await run_random_interleaving(seed, stores, [r.hub for r in replicas], steps=50)


async def test_watcher_on_one_replica_sees_changes_committed_through_the_other(
    replicas: list[Replica],
) -> None:
    a, b = replicas
    watcher = Watcher(a.hub, a.store)
    watcher.open()
    await assert_eventually(lambda: _has_token(watcher))
    loop = asyncio.get_running_loop()
    for i in range(5):
        started = loop.time()
        version = await b.store.put(f"items/{i}", i)
        await assert_eventually(functools.partial(_saw, watcher, version), timeout=2.0, interval=0.005)
        assert loop.time() - started < 2.0  # far below the 15 s repair tick: the broadcast woke it
    assert watcher.versions == [1, 2, 3, 4, 5]
    await watcher.drop()


async def test_drained_stream_resumes_on_the_other_replica_with_every_later_change_once(
    replicas: list[Replica],
) -> None:
    a, b = replicas
    for i in range(3):
        await a.store.put(f"items/{i}", i)
    watcher = Watcher(a.hub, a.store)
    watcher.open()
    await watcher.converged()
    await a.store.put("items/0", 100)
    await watcher.converged()
    await a.hub.drain(wait_seconds=5)
    await watcher.finished()
    assert watcher.client.end_reason == "draining"
    assert watcher.client.token == TokenCodec(a.store.scope).encode(4)
    await b.store.put("items/1", 101)  # committed while the client reconnects
    watcher.open(b.hub)
    await b.store.put("items/9", 9)
    await b.store.delete("items/2")
    await watcher.converged()
    assert watcher.versions == [4, 5, 6, 7]
    assert watcher.client.snapshots == 1
    await watcher.drop()


def _has_token(watcher: Watcher) -> None:
    assert watcher.client.token


def _saw(watcher: Watcher, version: int) -> None:
    assert version in watcher.versions
