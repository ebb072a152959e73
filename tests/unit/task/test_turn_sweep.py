"""The turn sweep (`sessions.resend_stale`): a session is never left RUNNING because a delivery or a
`turn_completed` event was lost (a broker restart's edge cases, issue #16). The durable rows left by
such a loss are made here exactly as the loss leaves them; the sweep then hands the message to the
real sandbox service again, which runs each turn once whatever the number of deliveries."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import session_event_pb2 as K
from foundry.task.v1 import session_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.db import Database
from services.platform.settings import Settings
from services.task.app import build_deps
from services.task.domain.models import QueuedMessage, Session, Task, now
from services.task.store import queries
from services.task.store.tables import messages
from services.task.usecases import sessions
from services.task.usecases.deps import Deps
from tests.helpers.eventually import assert_eventually
from tests.helpers.mesh import running
from tests.unit.task.conftest import TaskWorld, task_world
from tests.unit.task.test_session_commands import _ready, _session

NOW = dt.timedelta(0)


def _deps(world: TaskWorld) -> Deps:
    runtime = world.mesh.hosts["task"].runtime
    assert runtime is not None
    return build_deps(runtime)


async def _message_state(deps: Deps, message_id: str) -> str:
    async with deps.db.snapshot() as s:
        message = await queries.get_message(s, message_id=message_id)
    assert message is not None
    return message.state


async def _user_messages(world: TaskWorld, sandbox_session: str, text: str) -> int:
    """How many times the agent was handed `text` (USER_MESSAGE events of the session log)."""
    events = (
        await world.sandbox_stub().ListSessionEvents(sb_pb2.ListSessionEventsRequest(parent=sandbox_session))
    ).session_events
    return sum(1 for e in events if e.kind == K.SESSION_EVENT_KIND_USER_MESSAGE and e.text == text)


async def _idle(world: TaskWorld, name: str) -> None:
    async def idle() -> None:
        got = await _session(world, name)
        assert got.status == session_pb2.SESSION_STATUS_IDLE and not got.error_message, got

    await assert_eventually(idle, timeout=20, interval=0.1)


async def _left_running(world: TaskWorld, session_name: str, *, text: str = "", message_id: str = "") -> str:
    """Leave the session RUNNING on a message as a loss would: with `text`, a new `queued` message
    (SendMessage committed, its DeliverMessage lost); with `message_id`, that message back to
    `delivered` (its `turn_completed` lost). Returns the message id."""
    deps = _deps(world)
    task_id = session_name.split("/tasks/")[1].split("/")[0]
    session_id = session_name.rsplit("/", 1)[1]
    async with deps.db.transaction() as s:
        if text:
            message = QueuedMessage(
                f"m-{uuid.uuid4().hex}", session_id, task_id, text, [], f"users/{world.alice.user_id}"
            )
            await queries.insert_message(s, message=message)
            message_id = message.id
        else:
            await queries.set_message_state(s, message_id=message_id, state="delivered")
        row = await queries.get_session(s, task_id=task_id, session_id=session_id)
        assert row is not None
        row.status, row.current_turn, row.thinking_since = "running", message_id, now()
        await queries.update_session(s, row=row)
    return message_id


async def test_a_lost_turn_completed_is_applied_by_the_sweep_without_running_the_turn_again(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        _, first = await _ready(world)
        deps = _deps(world)
        sent = await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="count to two"))
        message_id = sent.message.rsplit("/", 1)[1]
        await _idle(world, first.name)
        assert await _message_state(deps, message_id) == "completed"

        # What a lost `turn_completed` leaves: the message delivered, the session RUNNING on it.
        await _left_running(world, first.name, message_id=message_id)
        assert (await _session(world, first.name)).status == session_pb2.SESSION_STATUS_RUNNING

        assert await sessions.resend_stale(deps, older_than=dt.timedelta(minutes=5)) == 0  # not stale yet
        assert await sessions.resend_stale(deps, older_than=NOW) == 1
        await _idle(world, first.name)
        assert await _message_state(deps, message_id) == "completed"
        # Asked, not run again: the agent was handed the message once.
        assert await _user_messages(world, first.sandbox_session, "count to two") == 1
        # Nothing open is left for the sweep.
        assert await sessions.resend_stale(deps, older_than=NOW) == 0


async def test_a_lost_delivery_reaches_the_agent_once_through_the_sweep(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        _, first = await _ready(world)
        deps = _deps(world)
        message_id = await _left_running(world, first.name, text="lost in the mail")

        # The first sweep claims it; a second one at once finds it claimed (sent just now).
        assert await sessions.resend_stale(deps, older_than=dt.timedelta(seconds=-1)) == 1
        assert await sessions.resend_stale(deps, older_than=dt.timedelta(seconds=30)) == 0
        await _idle(world, first.name)
        assert await _message_state(deps, message_id) == "completed"
        assert await _user_messages(world, first.sandbox_session, "lost in the mail") == 1

        # Two deliveries of one message (the sweep racing the original): the turn runs once.
        again = await _left_running(world, first.name, text="twice delivered")
        name = f"{first.name}/messages/{again}"
        await asyncio.gather(sessions.deliver_message(deps, name), sessions.deliver_message(deps, name))
        await _idle(world, first.name)
        assert await _user_messages(world, first.sandbox_session, "twice delivered") == 1


@pytest.mark.integration
async def test_two_replicas_sweeping_at_once_on_postgres_claim_each_message_once(
    settings_factory: Callable[..., Settings], pg_url: str
) -> None:
    """`claim_stale_messages` takes rows with SKIP LOCKED: concurrent sweeps split the work."""
    settings = settings_factory(database_url=pg_url)
    async with running(settings, ["task"]) as mesh:
        db = mesh.hosts["task"].db
        assert db is not None and not db.is_sqlite
        other = Database(db.url, schema=db.schema)
        org, task_id = f"o{uuid.uuid4().hex[:8]}", f"task-{uuid.uuid4().hex[:8]}"
        old = now() - dt.timedelta(minutes=1)
        ids = [f"m-{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(40)]
        try:
            async with db.transaction() as s:
                task = Task(task_id, org, "r", "demo", "/r", "main", "t", "p", "b", "idle")
                await queries.insert_task(s, task=task)
                row = Session(
                    id=f"session-{uuid.uuid4()}",
                    task_id=task_id,
                    organization=org,
                    position=1,
                    display_name="s",
                    agent="",
                    model="",
                    status="running",
                )
                await queries.insert_session(s, row=row)
                for message_id in ids:
                    message = QueuedMessage(message_id, row.id, task_id, "x", [], "", created_at=old)
                    await queries.insert_message(s, message=message)
                # A killed task's messages stay as they were: no sweep sends them anywhere.
                ended = Task(f"{task_id}-k", org, "r", "demo", "/r", "main", "t", "p", "b2", "killed")
                ended.ended_at = old
                await queries.insert_task(s, task=ended)
                killed = Session(f"{row.id}-k", ended.id, org, 1, "s", "", "", "idle")
                await queries.insert_session(s, row=killed)
                left = QueuedMessage(
                    f"m-k-{uuid.uuid4().hex[:6]}", killed.id, ended.id, "x", [], "", created_at=old
                )
                await queries.insert_message(s, message=left)

            async def claim(database: Database) -> list[str]:
                async with database.transaction() as s:
                    found = await queries.claim_stale_messages(s, before=now(), at=now(), limit=25)
                    await asyncio.sleep(0.2)  # hold the row locks while the other replica claims
                assert {o for o, _ in found} <= {org}
                return [m.id for _, m in found]

            a, b = await asyncio.gather(claim(db), claim(other))
            assert a and b and not set(a) & set(b), (a, b)
            assert sorted(a + b) == sorted(ids)
            async with db.snapshot() as s:
                resent = (
                    await s.execute(sa.select(messages.c.resent_at).where(messages.c.id.in_(ids)))
                ).scalars()
                assert all(t is not None and t > old for t in resent)
        finally:
            await other.dispose()
