"""The stall sweep's one-statement checks (`queries.any_stalled_task`, `queries.any_pending_command`)
find exactly what the sweep's full queries would take over, on a SQLite file and on PostgreSQL, and
the sweep running in the task service takes over a task whose replica died holding its lease."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from services.platform.db.engine import Database
from services.platform.messaging.broker import queue_name
from services.platform.messaging.memory import MemoryBroker
from services.platform.settings import Settings
from services.task.app import build_deps
from services.task.domain.models import Session, Task, now
from services.task.store import queries
from services.task.store.tables import metadata
from services.task.usecases import lease
from tests.helpers.eventually import assert_eventually
from tests.helpers.infra import unique_name
from tests.unit.task.conftest import task_world

LATER = dt.timedelta(minutes=5)


def _task(task_id: str, **values: object) -> Task:
    base: dict[str, object] = {
        "organization": "acme",
        "repository": "organizations/acme/repositories/r",
        "repository_full_name": "acme/r",
        "clone_url": "",
        "default_branch": "main",
        "title": "t",
        "prompt": "p",
        "branch": f"b-{task_id}",
        "status": "init_create_sandbox",
        "stage": "queued",
    }
    return Task(id=task_id, **{**base, **values})  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> AsyncIterator[Database]:
    if request.param == "postgresql":
        database = Database(pg_url, schema=unique_name("stall"))
    else:
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    await database.ensure_schema()
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield database
    await database.dispose()


async def _stalled(db: Database) -> tuple[bool, list[str], list[str]]:
    """The check, and what the sweep's provisioning and publication queries take over."""
    at = now()
    async with db.transaction() as s:
        provisioning = await queries.unfinished_provisioning(s, lease_expired_before=at, only_stalled=True)
        publishing = await queries.publishing_tasks(s, lease_expired_before=at, only_stalled=True)
    return (
        await queries.any_stalled_task(db, at=at),
        [t.id for t in provisioning],
        [t.id for t in publishing],
    )


async def test_the_check_sees_a_lapsed_lease_and_nothing_else(db: Database) -> None:
    at = now()
    async with db.transaction() as s:
        # Nothing to take over: queued (no lease yet), leased by a live replica, provisioned, failed.
        await queries.insert_task(s, task=_task("queued"))
        await queries.insert_task(s, task=_task("live", lease_owner="r1", lease_until=at + LATER))
        await queries.insert_task(s, task=_task("done", status="idle", stage="ready", lease_owner="r1"))
        await queries.insert_task(s, task=_task("failed", stage="error", lease_owner="r1"))
        await queries.insert_task(
            s, task=_task("pub-live", status="idle", stage="ready", publish_state="publishing",
                          lease_owner="r2", lease_until=at + LATER)
        )  # fmt: skip
    assert await _stalled(db) == (False, [], [])

    async with db.transaction() as s:  # the replica holding "live" dies: its lease lapses
        await queries.set_lease(s, task_id="live", owner="r1", until=at - dt.timedelta(seconds=1))
    assert await _stalled(db) == (True, ["live"], [])

    async with db.transaction() as s:
        await queries.set_lease(s, task_id="live", owner=None, until=None)
        await queries.set_lease(s, task_id="pub-live", owner="r2", until=at - dt.timedelta(seconds=1))
    assert await _stalled(db) == (True, [], ["pub-live"])


async def test_the_pending_command_check_matches_the_sweeps_query(db: Database) -> None:
    at = now()
    async with db.transaction() as s:
        await queries.insert_task(s, task=_task("t", status="idle", stage="ready"))

        def session(sid: str, **values: object) -> Session:
            base: dict[str, object] = {
                "task_id": "t",
                "organization": "acme",
                "position": 0,
                "display_name": sid,
                "agent": "claude",
                "model": "m",
                "agent_model": "m",
                "status": "idle",
                "sandbox_session": f"sb-{sid}",
            }
            return Session(id=sid, **{**base, **values})  # type: ignore[arg-type]

        await queries.insert_session(s, row=session("settled"))
        await queries.insert_session(s, row=session("no-agent-yet", model="other", sandbox_session=""))
        await queries.insert_session(s, row=session("model", model="other", command_at=at))

    async def both(before: dt.datetime) -> tuple[bool, list[str]]:
        async with db.transaction() as s:
            rows = await queries.sessions_with_pending_commands(s, enqueued_before=before)
        return await queries.any_pending_command(db, enqueued_before=before), [r.id for r in rows]

    assert await both(at) == (False, [])  # "model" was enqueued at `at`, not before
    assert await both(at + dt.timedelta(seconds=1)) == (True, ["model"])


async def test_the_sweep_takes_over_a_task_whose_replica_died_holding_the_lease(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        host = world.mesh.hosts["task"]
        assert host.runtime is not None
        await host.runtime.worker.stop_consuming()  # provisioning stays where CreateTask left it
        deps = build_deps(host.runtime)
        task = await world.create("Add a hello file")
        task_id = task.name.rsplit("/", 1)[-1]
        broker = world.mesh.broker
        assert isinstance(broker, MemoryBroker)
        queue = queue_name(world.mesh.settings.name_prefix, "task", "provision")

        def queued(count: int) -> Callable[[], None]:
            def check() -> None:
                assert broker.ready_count(queue) == count, broker.ready_count(queue)

            return check

        await assert_eventually(queued(1))  # CreateTask's work item, through the outbox
        assert not await lease.any_stalled(deps)

        async with deps.db.transaction() as s:  # a replica claimed it, then died
            await queries.set_lease(s, task_id=task_id, owner="dead", until=now() - dt.timedelta(seconds=1))
        assert await lease.any_stalled(deps)

        await assert_eventually(queued(2), timeout=10)  # the sweep (every 2 s) enqueued the step again
        async with deps.db.snapshot() as s:
            row = await queries.get_task(s, task_id=task_id)
        assert row is not None and row.lease_owner is None
        assert not await lease.any_stalled(deps)
