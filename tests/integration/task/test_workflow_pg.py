"""Provisioning on PostgreSQL + RabbitMQ with the real organization, github-data and sandbox
services: crash resume on a new replica, and two replicas on the same tasks (which send each task's
prompt to its agent once)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from pathlib import Path

import aio_pika
import pytest
from foundry.sandbox.v1 import sandbox_pb2, session_event_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.task.v1 import events_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.messaging.broker import queue_name
from services.platform.settings import Settings
from services.task.usecases.deps import Deps, StepRuns
from tests.helpers.eventually import assert_eventually
from tests.helpers.infra import make_pg_database
from tests.helpers.mesh import running
from tests.unit.task.conftest import PEERS, Replica, TaskWorld, connect, make_repositories, task_replica

pytestmark = pytest.mark.integration
READY = task_pb2.PROVISIONING_STAGE_READY
RUNNING = sandbox_pb2.SANDBOX_STATE_RUNNING
USER_MESSAGE = session_event_pb2.SESSION_EVENT_KIND_USER_MESSAGE


@pytest.fixture
def pg_settings(
    settings_factory: Callable[..., Settings], own_pg_url: str, amqp_url: str
) -> Callable[[float], Settings]:
    """Settings on PostgreSQL + RabbitMQ whose sandbox takes `create_delay` seconds per CreateSandbox."""

    def make(create_delay: float) -> Settings:
        return settings_factory(
            database_url=own_pg_url,
            amqp_url=amqp_url,
            messaging={"max_attempts": 3, "retry_delay_seconds": 0.1, "queue_type": "classic"},
            sandbox={"create_delay_seconds": create_delay},
        )

    return make


@pytest.fixture
async def own_pg_url() -> AsyncIterator[str]:
    """A PostgreSQL database of this test alone (the services' schemas start empty)."""
    async with make_pg_database() as url:
        yield url


async def test_provisioning_resumes_on_a_new_host_after_a_crash_mid_stage(
    pg_settings: Callable[[float], Settings], tmp_path: Path
) -> None:
    # Creating a sandbox takes 8 s: the window for seeing it under way and stopping the host.
    async with running(pg_settings(8.0), PEERS) as mesh:
        alice, organization, repository = await connect(mesh, make_repositories(tmp_path))
        async with task_replica(mesh.settings, alice) as first:
            world = TaskWorld(mesh, alice, organization, repository, tmp_path / "repos", first.stub)
            task = await world.create("add x")
            task_id = task.name.rsplit("/", 1)[-1]

            async def creating() -> None:  # the create-sandbox step is in flight at the sandbox
                boxes = await world.sandboxes()
                assert [(b.task, b.state) for b in boxes] == [(task.name, sandbox_pb2.SANDBOX_STATE_PENDING)]

            await assert_eventually(creating, timeout=15)
            await first.stop(grace=0.2)  # the host goes away without finishing the stage
        (box,) = await world.sandboxes()
        assert box.state == sandbox_pb2.SANDBOX_STATE_PENDING

        async with task_replica(mesh.settings, alice) as second:

            async def ready() -> task_pb2.Task:
                got = (await second.stub.GetTask(pb.GetTaskRequest(name=task.name))).task
                assert got.provisioning.stage == READY, got.provisioning
                assert got.status == task_pb2.TASK_STATUS_IDLE, got.status  # its prompt's turn ended
                return got

            done = await assert_eventually(ready, timeout=60)
        assert done.status == task_pb2.TASK_STATUS_IDLE
        # The interrupted stage was finished by the new replica on the same sandbox: one sandbox,
        # running, with one agent session (the task's).
        assert [(b.name, b.state) for b in await world.sandboxes()] == [(box.name, RUNNING)]
        assert done.sandbox.name == box.name
        assert await world.agent_session_rows(task_id) == [done.sessions[0].name.rsplit("/", 1)[-1]]


async def test_two_replicas_never_run_one_tasks_steps_concurrently(
    pg_settings: Callable[[float], Settings], amqp_url: str, tmp_path: Path
) -> None:
    async with running(pg_settings(0.5), PEERS) as mesh:
        alice, organization, repository = await connect(mesh, make_repositories(tmp_path))
        async with task_replica(mesh.settings, alice) as a, task_replica(mesh.settings, alice) as b:
            world = TaskWorld(mesh, alice, organization, repository, tmp_path / "repos", a.stub)
            queue = queue_name(mesh.settings.name_prefix, "task", "provision")

            async def both_consume() -> None:  # else the first replica may take every first delivery
                assert await _consumers(amqp_url, queue) == 2

            await assert_eventually(both_consume, timeout=15)
            # Created through each replica in turn, so both have warm database pools and peer
            # channels when the deliveries race (a cold one lost every claim under load); six tasks
            # make it all but certain that each replica wins some (each task is a fair race).
            on_b = dataclasses.replace(world, stub=b.stub)
            tasks = [await (world if i % 2 else on_b).create("add x") for i in range(6)]
            for task in tasks:  # duplicates land on both replicas
                for i in range(4):
                    await mesh.broker.publish(
                        exchange="",
                        routing_key=queue,
                        message_id=f"{task.name}-dup-{i}",
                        body=events_pb2.ProvisionTask(name=task.name).SerializeToString(),
                    )

            async def all_ready() -> None:
                for task in tasks:
                    got = (await b.stub.GetTask(pb.GetTaskRequest(name=task.name))).task
                    assert got.provisioning.stage == READY, (task.name, got.provisioning)
                    assert got.status == task_pb2.TASK_STATUS_IDLE, (task.name, got.status)

            await assert_eventually(all_ready, timeout=60)
            # Each task's prompt reached its agent once, whichever replica made the session ready.
            for task in tasks:
                session = (await b.stub.GetSession(pb.GetSessionRequest(name=task.sessions[0].name))).session
                listed = await world.sandbox_stub().ListSessionEvents(
                    sb_pb2.ListSessionEventsRequest(parent=session.sandbox_session)
                )
                prompts = [e.text for e in listed.session_events if e.kind == USER_MESSAGE]
                assert prompts == ["add x"], (task.name, prompts)
            runs = [_step_runs(a), _step_runs(b)]
        ids = [t.name.rsplit("/", 1)[-1] for t in tasks]
        # Both replicas ran steps of these tasks, never two steps of one task at once: each replica
        # records when it ran a task's steps (one monotonic clock in this test process), and the
        # runs of one task, merged from both, never overlap.
        assert all(any(r.spans.get(t) for t in ids) for r in runs), [r.spans for r in runs]
        for task_id in ids:
            spans = sorted(span for r in runs for span in r.spans.get(task_id, []))
            overlaps = [(x, y) for x, y in pairwise(spans) if y[0] < x[1]]
            assert not overlaps, (task_id, spans)
        # One sandbox and one agent session per task at the sandbox service.
        boxes = await world.sandboxes()
        assert sorted((b.task, b.state) for b in boxes) == sorted((t.name, RUNNING) for t in tasks)
        for task_id in ids:
            assert len(await world.agent_session_rows(task_id)) == 1


async def _consumers(amqp_url: str, queue: str) -> int:
    """How many consumers `queue` has now (a passive declare's answer)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return declared.declaration_result.consumer_count or 0
    finally:
        await connection.close()


def _step_runs(replica: Replica) -> StepRuns:
    """The provisioning step runs recorded by one replica's use cases (its servicer's Deps)."""
    assert replica.host.wiring is not None
    deps: Deps = replica.host.wiring.servicers[0].impl.deps
    return deps.steps
