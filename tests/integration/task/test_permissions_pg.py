"""Permission requests on PostgreSQL + RabbitMQ (the production shape's stores and broker) with the
real organization, github-data and sandbox services: the organization asks, a write prompt's request
waits durably while the task replica that created it stops, a new replica answers it (the agent
still waits and writes the file), and of two answers racing for the next request exactly one wins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from foundry.organization.v1 import organization_pb2
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.sandbox.v1 import agent_session_pb2 as sb_session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import session_event_pb2 as K
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc
from google.protobuf import field_mask_pb2

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.helpers.infra import make_pg_database
from tests.helpers.mesh import running
from tests.unit.task.conftest import PEERS, TaskWorld, connect, make_repositories, task_replica

pytestmark = pytest.mark.integration
ALLOW_ONCE = sb_session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE
REJECT = sb_session_pb2.PERMISSION_OUTCOME_REJECT


@pytest.fixture
async def own_pg_url() -> AsyncIterator[str]:
    async with make_pg_database() as url:
        yield url


@pytest.fixture
def pg_settings(settings_factory: Callable[..., Settings], own_pg_url: str, amqp_url: str) -> Settings:
    return settings_factory(
        database_url=own_pg_url,
        amqp_url=amqp_url,
        messaging={"max_attempts": 3, "retry_delay_seconds": 0.1, "queue_type": "classic"},
    )


async def _waiting_request(
    world: TaskWorld, stub: pb_grpc.TaskServiceAsyncStub, task: str
) -> tuple[str, str]:
    """(the task session's name of the newest unanswered permission request, its sandbox session)."""
    got = (await stub.GetTask(pb.GetTaskRequest(name=task))).task
    session = got.sessions[0]
    assert session.name
    full = (await stub.GetSession(pb.GetSessionRequest(name=session.name))).session
    assert full.sandbox_session
    events = (
        await world.sandbox_stub().ListSessionEvents(
            sb_pb2.ListSessionEventsRequest(parent=full.sandbox_session)
        )
    ).session_events
    answered = {e.payload["requestId"] for e in events if e.kind == K.SESSION_EVENT_KIND_PERMISSION_RESPONSE}
    waiting = [
        e.payload["requestId"]
        for e in events
        if e.kind == K.SESSION_EVENT_KIND_PERMISSION_REQUEST and e.payload["requestId"] not in answered
    ]
    assert waiting
    return f"{full.name}/permissionRequests/{waiting[-1]}", full.sandbox_session


async def test_a_waiting_request_outlives_its_task_replica_and_two_answers_race_for_one(
    pg_settings: Settings, tmp_path: Path
) -> None:
    async with running(pg_settings, PEERS) as mesh:
        alice, organization, repository = await connect(mesh, make_repositories(tmp_path))
        orgs = org_grpc.OrganizationServiceStub(mesh.channel("organization", alice))
        await orgs.UpdateOrganization(
            org_pb2.UpdateOrganizationRequest(
                organization=organization_pb2.Organization(
                    name=organization, permission_policy=organization_pb2.PERMISSION_POLICY_ASK
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["permission_policy"]),
            )
        )
        async with task_replica(mesh.settings, alice) as first:
            world = TaskWorld(mesh, alice, organization, repository, tmp_path / "repos", first.stub)
            task = (await world.create("write PG.md: on postgres")).name
            request, sandbox_session = await assert_eventually(
                lambda: _waiting_request(world, first.stub, task), timeout=60, interval=0.2
            )
        # The replica that created the task is gone; the agent still waits on the request.
        async with task_replica(mesh.settings, alice) as second:
            answered = await second.stub.AnswerPermissionRequest(
                pb.AnswerPermissionRequestRequest(name=request, outcome=ALLOW_ONCE)
            )
            assert answered.permission_request.delivered

            async def idle() -> task_pb2.Task:
                got = (await second.stub.GetTask(pb.GetTaskRequest(name=task))).task
                assert got.sessions[0].status == session_pb2.SESSION_STATUS_IDLE, got.sessions[0]
                return got

            got = await assert_eventually(idle, timeout=30, interval=0.2)
            assert (Path(got.sandbox.cwd) / "PG.md").read_text() == "on postgres\n"

            session = got.sessions[0].name
            await second.stub.SendMessage(pb.SendMessageRequest(name=session, text="write RACE.md: once"))
            race, _ = await assert_eventually(
                lambda: _waiting_request(world, second.stub, task), timeout=30, interval=0.2
            )
            outcomes = await asyncio.gather(
                *(
                    second.stub.AnswerPermissionRequest(
                        pb.AnswerPermissionRequestRequest(name=race, outcome=o)
                    )
                    for o in (ALLOW_ONCE, REJECT, ALLOW_ONCE, REJECT)
                ),
                return_exceptions=True,
            )
            won = [o for o in outcomes if not isinstance(o, BaseException)]
            lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
            assert len(won) == 1 and len(lost) == 3, outcomes
            assert {e.code() for e in lost} == {grpc.StatusCode.FAILED_PRECONDITION}
            await assert_eventually(idle, timeout=30, interval=0.2)
            events = (
                await world.sandbox_stub().ListSessionEvents(
                    sb_pb2.ListSessionEventsRequest(parent=sandbox_session)
                )
            ).session_events
            race_id = race.rsplit("/", 1)[1]
            responses = [
                e
                for e in events
                if e.kind == K.SESSION_EVENT_KIND_PERMISSION_RESPONSE and e.payload["requestId"] == race_id
            ]
            assert len(responses) == 1
            written = (Path(got.sandbox.cwd) / "RACE.md").exists()
            assert written == (won[0].permission_request.outcome == ALLOW_ONCE)
