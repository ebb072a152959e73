"""The sandbox service on PostgreSQL + RabbitMQ: a turn of the fake agent changes a file in a real
checkout, the transcript streams through WatchSessionEvents, and the service's events reach the
topic exchange (turn completed, git state updated)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from foundry.sandbox.v1 import events_pb2, git_state_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import session_event_pb2 as K

from services.platform.messaging.broker import Delivery, QueueSpec
from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.helpers.mesh import running
from tests.unit.sandbox.conftest import sandbox_stub
from tests.unit.sandbox.gitrepo import make_origin
from tests.unit.sandbox.test_sessions import prompt, start_session, watch_until_turn_ends

pytestmark = pytest.mark.integration


async def test_a_turn_on_postgres_and_rabbitmq_changes_the_file_and_publishes_its_events(
    settings_factory: Callable[..., Settings], pg_url: str, amqp_url: str, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path)
    settings = settings_factory(database_url=pg_url, amqp_url=amqp_url)
    async with running(settings, ["sandbox"]) as mesh:
        received: list[tuple[str, bytes]] = []

        async def collect(delivery: Delivery) -> None:
            received.append((delivery.message.routing_key, delivery.message.body))
            await delivery.ack()

        spec = QueueSpec(
            f"{mesh.settings.name_prefix}.test.sandbox_events",
            bindings=("sandbox.session.#", "sandbox.git_state.#"),
        )
        await mesh.broker.declare_queue(spec)
        subscription = await mesh.broker.consume(spec, collect)
        async with sandbox_stub(mesh) as stub:
            session = await start_session(stub, origin)
            await prompt(stub, session, "m1", "write hello.txt: hi")
            _, events = await watch_until_turn_ends(stub, session)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert events[-1].kind == K.SESSION_EVENT_KIND_TURN_COMPLETED

            async def published() -> events_pb2.GitStateUpdated:
                keys = [k for k, _ in received]
                assert "sandbox.session.turn_completed" in keys
                updates = [
                    events_pb2.GitStateUpdated.FromString(b)
                    for k, b in received
                    if k == "sandbox.git_state.updated"
                ]
                assert updates and [c.path for c in updates[-1].git_state.file_changes] == ["hello.txt"]
                return updates[-1]

            update = await assert_eventually(published)
            assert update.task == "organizations/acme/tasks/t1"
            assert update.git_state.file_changes[0].type == git_state_pb2.FILE_CHANGE_TYPE_ADDED
            completed = next(
                events_pb2.TurnCompleted.FromString(b)
                for k, b in received
                if k == "sandbox.session.turn_completed"
            )
            assert completed.turn.name == f"{session}/turns/m1" and completed.turn.stop_reason == 1
            appended = [
                events_pb2.SessionEventsAppended.FromString(b)
                for k, b in received
                if k == "sandbox.session.events_appended"
            ]
            assert max(a.last_seq for a in appended) == len(events)
            state = await stub.GetGitState(
                pb.GetGitStateRequest(name=f"{session.split('/sessions/')[0]}/gitState")
            )
            assert state.git_state.file_changes[0].added_lines == 1
        await subscription.cancel()
