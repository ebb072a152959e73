"""Permissions reach the user: with the organization's permission policy ASK, the fake agent's
`write <path>: <text>` waits in the session's transcript until a member answers it through
TaskService.AnswerPermissionRequest. Allow once writes the file, reject refuses; wrong answers and
non-members change nothing; the pending request survives a task-service restart; StopSession answers
it `cancelled`; after a sandbox-service restart an allow is recorded and sent as a message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.organization.v1 import organization_pb2
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.sandbox.v1 import agent_session_pb2 as sb_session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc
from foundry.sandbox.v1 import session_event_pb2 as K
from foundry.task.v1 import session_pb2
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc
from google.protobuf import field_mask_pb2

from services.platform.identity import Caller
from services.platform.server.host import ServiceHost
from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, make_repositories, sign_in, task_world
from tests.unit.task.test_session_commands import _ready, _restart_sandbox, _session

ALLOW_ONCE = sb_session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE
REJECT = sb_session_pb2.PERMISSION_OUTCOME_REJECT


async def _set_policy(world: TaskWorld, policy: organization_pb2.PermissionPolicy.ValueType) -> None:
    orgs = org_grpc.OrganizationServiceStub(world.mesh.channel("organization", world.alice))
    updated = await orgs.UpdateOrganization(
        org_pb2.UpdateOrganizationRequest(
            organization=organization_pb2.Organization(name=world.organization, permission_policy=policy),
            update_mask=field_mask_pb2.FieldMask(paths=["permission_policy"]),
        )
    )
    assert updated.organization.permission_policy == policy


async def _events(world: TaskWorld, sandbox_session: str) -> list[K.SessionEvent]:
    listed = await world.sandbox_stub().ListSessionEvents(
        sb_pb2.ListSessionEventsRequest(parent=sandbox_session)
    )
    return list(listed.session_events)


def _of(events: list[K.SessionEvent], kind: int) -> list[K.SessionEvent]:
    return [e for e in events if e.kind == kind]


async def _asked(world: TaskWorld, session: session_pb2.Session, text: str) -> str:
    """Send `text` (a `write …` prompt) and wait for its permission request; returns the request's
    name on the task service."""
    await world.stub.SendMessage(pb.SendMessageRequest(name=session.name, text=text))

    async def asked() -> str:
        events = [e for e in await _events(world, session.sandbox_session) if "requestId" in e.payload]
        requests = _of(events, K.SESSION_EVENT_KIND_PERMISSION_REQUEST)  # asked of the user (ASK)
        answered = {e.payload["requestId"] for e in _of(events, K.SESSION_EVENT_KIND_PERMISSION_RESPONSE)}
        waiting = [e for e in requests if e.payload["requestId"] not in answered]
        assert waiting
        return f"{session.name}/permissionRequests/{waiting[-1].payload['requestId']}"

    return await assert_eventually(asked, timeout=20, interval=0.05)


def _answer(
    name: str, outcome: sb_session_pb2.PermissionOutcome.ValueType
) -> pb.AnswerPermissionRequestRequest:
    return pb.AnswerPermissionRequestRequest(name=name, outcome=outcome)


async def _idle(
    world: TaskWorld, name: str, stub: pb_grpc.TaskServiceAsyncStub | None = None
) -> session_pb2.Session:
    async def idle() -> session_pb2.Session:
        got = (await (stub or world.stub).GetSession(pb.GetSessionRequest(name=name))).session
        assert got.status == session_pb2.SESSION_STATUS_IDLE, got
        return got

    return await assert_eventually(idle, timeout=30, interval=0.1)


async def _ask_ready(world: TaskWorld) -> session_pb2.Session:
    await _set_policy(world, organization_pb2.PERMISSION_POLICY_ASK)
    _, first = await _ready(world)
    agent = await world.sandbox_stub().GetAgentSession(
        sb_pb2.GetAgentSessionRequest(name=first.sandbox_session)
    )
    assert agent.agent_session.permission_policy == sb_session_pb2.PERMISSION_POLICY_ASK
    return first


async def test_allow_once_writes_the_file_and_reject_refuses(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        first = await _ask_ready(world)
        checkout = Path((await world.get(first.name.split("/sessions/")[0])).sandbox.cwd)
        request = await _asked(world, first, "write allowed.txt: yes")
        assert (await _session(world, first.name)).status == session_pb2.SESSION_STATUS_RUNNING
        assert not (checkout / "allowed.txt").exists()

        answered = await world.stub.AnswerPermissionRequest(_answer(request, ALLOW_ONCE))
        assert answered.permission_request.state == sb_session_pb2.PERMISSION_REQUEST_STATE_ANSWERED
        assert (
            answered.permission_request.delivered and answered.permission_request.title == "write allowed.txt"
        )
        assert answered.permission_request.answered_by == f"users/{world.alice.user_id}"
        assert answered.message == ""
        await _idle(world, first.name)
        assert (checkout / "allowed.txt").read_text() == "yes\n"

        request = await _asked(world, first, "write refused.txt: no")
        await world.stub.AnswerPermissionRequest(_answer(request, REJECT))
        await _idle(world, first.name)
        events = await _events(world, first.sandbox_session)
        assert [e.text for e in _of(events, K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK)][-2:] == [
            "wrote allowed.txt",
            "permission to write refused.txt was refused",
        ]
        answers = [e.payload["answer"] for e in _of(events, K.SESSION_EVENT_KIND_PERMISSION_RESPONSE)]
        assert answers == ["allow_once", "reject"]
        assert not (checkout / "refused.txt").exists()


async def test_wrong_answers_and_other_users_change_nothing(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        first = await _ask_ready(world)
        request = await _asked(world, first, "write guarded.txt: mine")
        before = await _events(world, first.sandbox_session)

        async def refused(
            request_pb: pb.AnswerPermissionRequestRequest,
            code: grpc.StatusCode,
            stub: pb_grpc.TaskServiceAsyncStub | None = None,
        ) -> None:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await (stub or world.stub).AnswerPermissionRequest(request_pb)
            assert caught.value.code() == code, caught.value.details()

        unknown = request.rsplit("/", 1)[0] + "/nosuchrequest"
        await refused(_answer(unknown, ALLOW_ONCE), grpc.StatusCode.NOT_FOUND)
        other_session = request.replace(first.name, first.name.rsplit("/", 1)[0] + "/session-nosuch")
        await refused(_answer(other_session, ALLOW_ONCE), grpc.StatusCode.NOT_FOUND)
        await refused(
            _answer(request, sb_session_pb2.PERMISSION_OUTCOME_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT
        )
        await refused(
            _answer(request, sb_session_pb2.PERMISSION_OUTCOME_CANCELLED), grpc.StatusCode.INVALID_ARGUMENT
        )
        await refused(_answer("organizations/acme/tasks/x", ALLOW_ONCE), grpc.StatusCode.INVALID_ARGUMENT)

        # Mallory is signed in but no member of acme; eve owns another organization.
        mallory = await sign_in(world.mesh, "mallory")
        (tmp_path / "eve").mkdir()
        eve_root = make_repositories(tmp_path / "eve")
        eve = await sign_in(world.mesh, "eve", root=eve_root, org_id="evil")
        for stranger in (mallory, eve):
            stub = pb_grpc.TaskServiceStub(world.mesh.channel("task", stranger))
            await refused(_answer(request, ALLOW_ONCE), grpc.StatusCode.PERMISSION_DENIED, stub)
        # Nor may they reach the sandbox's own RPC with the sandbox's name of it.
        sandbox_name = f"{first.sandbox_session}/permissionRequests/{request.rsplit('/', 1)[1]}"
        for stranger in (mallory, eve):
            sandbox = sb_grpc.SandboxServiceStub(world.mesh.channel("sandbox", stranger))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await sandbox.AnswerPermissionRequest(
                    sb_pb2.AnswerPermissionRequestRequest(
                        name=sandbox_name, outcome=ALLOW_ONCE, user="users/x"
                    )
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await _events(world, first.sandbox_session) == before  # nothing recorded, still waiting

        # A member answers; a second answer is refused.
        bob = await world.sign_in("bob")
        as_bob = pb_grpc.TaskServiceStub(world.mesh.channel("task", bob))
        answered = await as_bob.AnswerPermissionRequest(_answer(request, REJECT))
        assert answered.permission_request.answered_by == f"users/{bob.user_id}"
        await refused(_answer(request, ALLOW_ONCE), grpc.StatusCode.FAILED_PRECONDITION)
        await _idle(world, first.name)
        events = await _events(world, first.sandbox_session)
        assert len(_of(events, K.SESSION_EVENT_KIND_PERMISSION_RESPONSE)) == 1


async def test_a_pending_request_survives_a_task_service_restart(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from services.embedded import service_wiring

    async with task_world(fast_settings(), tmp_path) as world:
        first = await _ask_ready(world)
        request = await _asked(world, first, "write after-restart.txt: still here")
        old = world.mesh.hosts["task"]
        await old.begin_drain()
        await old.wait_idle(5)
        await old.close()
        new = ServiceHost(world.mesh.settings, "task", world.mesh.broker, service_wiring("task"), port=0)
        world.mesh.hosts["task"] = new
        await new.start()
        stub = pb_grpc.TaskServiceStub(world.mesh.channel("task", world.alice))

        answered = await stub.AnswerPermissionRequest(_answer(request, ALLOW_ONCE))
        assert answered.permission_request.delivered  # the agent kept waiting all along
        await _idle(world, first.name, stub)
        checkout = Path(
            (await stub.GetTask(pb.GetTaskRequest(name=first.name.split("/sessions/")[0]))).task.sandbox.cwd
        )
        assert (checkout / "after-restart.txt").read_text() == "still here\n"


async def test_stop_session_answers_a_pending_request_cancelled(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        first = await _ask_ready(world)
        request = await _asked(world, first, "write stopped.txt: no")
        await world.stub.StopSession(pb.StopSessionRequest(name=first.name))
        await _idle(world, first.name)
        events = await _events(world, first.sandbox_session)
        responses = _of(events, K.SESSION_EVENT_KIND_PERMISSION_RESPONSE)
        assert [e.payload["answer"] for e in responses] == ["cancelled"]
        assert _of(events, K.SESSION_EVENT_KIND_TURN_COMPLETED)[-1].payload["stopReason"] == "cancelled"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await world.stub.AnswerPermissionRequest(_answer(request, ALLOW_ONCE))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_after_a_sandbox_restart_an_allow_is_recorded_and_sent_as_a_message(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        first = await _ask_ready(world)
        request = await _asked(world, first, "write cut.txt: off")

        async def noop() -> None:
            return None

        await _restart_sandbox(world, down=noop)
        await _idle(world, first.name)  # the cut turn ended interrupted
        answered = await world.stub.AnswerPermissionRequest(_answer(request, ALLOW_ONCE))
        assert not answered.permission_request.delivered
        assert answered.message.startswith(f"{first.name}/messages/")

        async def followed_up() -> list[K.SessionEvent]:
            events = await _events(world, first.sandbox_session)
            users = [e.text for e in _of(events, K.SESSION_EVENT_KIND_USER_MESSAGE)]
            assert users[-1].startswith("Permission granted (once) for: write cut.txt."), users
            assert _of(events, K.SESSION_EVENT_KIND_TURN_COMPLETED)[-1].turn.endswith(
                answered.message.rsplit("/", 1)[1]
            )
            return events

        events = await assert_eventually(followed_up, timeout=30, interval=0.1)
        response = _of(events, K.SESSION_EVENT_KIND_PERMISSION_RESPONSE)
        assert [(e.payload["answer"], e.payload["delivered"]) for e in response] == [("allow_once", False)]
        # The same answer again neither records nor sends anything.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await world.stub.AnswerPermissionRequest(_answer(request, ALLOW_ONCE))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_policy_change_applies_to_open_sessions_from_their_next_message(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        _, first = await _ready(world)  # created under the default: allow
        checkout = Path((await world.get(first.name.split("/sessions/")[0])).sandbox.cwd)
        await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="write free.txt: allowed"))
        await _idle(world, first.name)
        assert (checkout / "free.txt").read_text() == "allowed\n"

        await _set_policy(world, organization_pb2.PERMISSION_POLICY_ASK)
        request = await _asked(world, first, "write asked.txt: now it asks")
        agent = await world.sandbox_stub().GetAgentSession(
            sb_pb2.GetAgentSessionRequest(name=first.sandbox_session)
        )
        assert agent.agent_session.permission_policy == sb_session_pb2.PERMISSION_POLICY_ASK
        await world.stub.AnswerPermissionRequest(_answer(request, ALLOW_ONCE))
        await _idle(world, first.name)
        assert (checkout / "asked.txt").read_text() == "now it asks\n"

        await _set_policy(world, organization_pb2.PERMISSION_POLICY_REJECT)
        await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="write no.txt: refused"))
        await _idle(world, first.name)
        events = await _events(world, first.sandbox_session)
        assert [e.text for e in _of(events, K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK)][-1] == (
            "permission to write no.txt was refused"
        )
        assert not (checkout / "no.txt").exists()


async def test_after_its_agent_died_an_allow_restarts_the_agent_with_the_granted_message(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    import os
    import signal

    async with task_world(fast_settings(), tmp_path) as world:
        first = await _ask_ready(world)
        request = await _asked(world, first, "write died.txt: never")
        sandbox = first.sandbox_session.split("/sessions/")[0]
        as_task = sb_grpc.SandboxServiceStub(world.mesh.channel("sandbox", Caller.service("task")))
        agent = (await as_task.StartAgent(sb_pb2.StartAgentRequest(parent=sandbox))).agent_connection
        os.killpg(agent.pid, signal.SIGKILL)

        async def failed() -> None:
            got = await _session(world, first.name)
            assert got.status == session_pb2.SESSION_STATUS_ERROR, got

        await assert_eventually(failed, timeout=30, interval=0.1)
        answered = await world.stub.AnswerPermissionRequest(_answer(request, ALLOW_ONCE))
        assert not answered.permission_request.delivered
        assert answered.message.startswith(f"{first.name}/messages/"), answered

        async def answered_by_the_restarted_agent() -> None:
            events = await _events(world, first.sandbox_session)
            users = [e.text for e in _of(events, K.SESSION_EVENT_KIND_USER_MESSAGE)]
            assert users[-1].startswith("Permission granted (once) for: write died.txt."), users
            chunks = [e.text for e in _of(events, K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK)]
            assert "Permission granted (once) for: write died.txt." in "".join(chunks), chunks

        await assert_eventually(answered_by_the_restarted_agent, timeout=30, interval=0.1)
        await _idle(world, first.name)
