"""Sessions, per-user state, archive and kill on a provisioned task, with the real peers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.sandbox.v1 import agent_session_pb2, sandbox_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.task.v1 import events_pb2 as task_events
from foundry.task.v1 import session_pb2, task_pb2, user_task_state_pb2
from foundry.task.v1 import task_service_pb2 as pb
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, task_world

SLOW_SANDBOX = {"create_delay_seconds": 30.0}  # provisioning stays pending for the whole test


async def _ready_task(world: TaskWorld) -> task_pb2.Task:
    task = await world.create("Add a hello file")

    async def ready() -> task_pb2.Task:
        got = await world.get(task.name)
        assert got.status == task_pb2.TASK_STATUS_IDLE, got.status_message
        return got

    return await assert_eventually(ready, timeout=30)


async def _sandbox_state(world: TaskWorld, task: task_pb2.Task) -> sandbox_pb2.SandboxState.ValueType:
    (box,) = await world.sandboxes()
    assert box.task == task.name
    return box.state


async def test_new_session_becomes_ready_in_the_background_and_the_last_one_cannot_close(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task = await _ready_task(world)
        created = (await world.stub.CreateSession(pb.CreateSessionRequest(parent=task.name))).session
        assert created.status == session_pb2.SESSION_STATUS_PENDING_SESSION_CREATE
        assert created.display_name == "Session 2"

        async def ready() -> session_pb2.Session:
            got = (await world.stub.GetSession(pb.GetSessionRequest(name=created.name))).session
            assert got.status == session_pb2.SESSION_STATUS_READY
            return got

        second = await assert_eventually(ready, timeout=15)
        # The sandbox service now runs an agent session for each task session.
        assert await world.agent_session_rows() == sorted(
            s.name.rsplit("/", 1)[-1] for s in (task.sessions[0], created)
        )
        state = (
            await world.stub.GetUserTaskState(pb.GetUserTaskStateRequest(name=f"{task.name}/userStates/me"))
        ).user_task_state
        assert state.active_session == created.name

        closed = (await world.stub.CloseSession(pb.CloseSessionRequest(name=created.name))).session
        assert closed.status == session_pb2.SESSION_STATUS_CLOSED
        state = (
            await world.stub.GetUserTaskState(pb.GetUserTaskStateRequest(name=f"{task.name}/userStates/me"))
        ).user_task_state
        assert state.active_session == task.sessions[0].name
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await world.stub.CloseSession(pb.CloseSessionRequest(name=task.sessions[0].name))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        listed = await world.stub.ListSessions(pb.ListSessionsRequest(parent=task.name))
        assert [s.name for s in listed.sessions] == [task.sessions[0].name]

        async def agent_closed() -> None:
            got = await world.sandbox_stub().GetAgentSession(
                sb_pb2.GetAgentSessionRequest(name=second.sandbox_session)
            )
            assert got.agent_session.state == agent_session_pb2.AGENT_SESSION_STATE_CLOSED

        await assert_eventually(agent_closed, timeout=10)


async def test_rename_task_and_session_validate_and_persist(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(sandbox=SLOW_SANDBOX), tmp_path) as world:
        task = await world.create("Add a hello file")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await world.stub.RenameTask(pb.RenameTaskRequest(name=task.name, title="  "))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        renamed = (await world.stub.RenameTask(pb.RenameTaskRequest(name=task.name, title="Better"))).task
        assert renamed.title == "Better"
        tab = (
            await world.stub.RenameSession(
                pb.RenameSessionRequest(name=task.sessions[0].name, display_name="Main")
            )
        ).session
        assert tab.display_name == "Main"
        got = await world.get(task.name)
        assert got.title == "Better" and got.sessions[0].display_name == "Main"


async def test_drafts_and_unread_are_per_user(fast_settings: Callable[..., Settings], tmp_path: Path) -> None:
    async with task_world(fast_settings(sandbox=SLOW_SANDBOX), tmp_path) as world:
        task = await world.create("Add a hello file")
        session = task.sessions[0].name
        draft = user_task_state_pb2.UserSessionState(
            name=f"{session}/userStates/me",
            unread=True,
            draft=user_task_state_pb2.Draft(text="half a thought"),
        )
        await world.stub.UpdateUserSessionState(
            pb.UpdateUserSessionStateRequest(
                user_session_state=draft, update_mask=field_mask_pb2.FieldMask(paths=["draft", "unread"])
            )
        )
        mine = (
            await world.stub.GetUserTaskState(pb.GetUserTaskStateRequest(name=f"{task.name}/userStates/me"))
        ).user_task_state
        assert [(s.draft.text, s.unread) for s in mine.sessions] == [("half a thought", True)]
        bob_stub = world.task_stub(await world.sign_in("bob"))  # another member of the organization
        theirs = (
            await bob_stub.GetUserTaskState(pb.GetUserTaskStateRequest(name=f"{task.name}/userStates/me"))
        ).user_task_state
        assert list(theirs.sessions) == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bob_stub.GetUserTaskState(
                pb.GetUserTaskStateRequest(name=f"{task.name}/userStates/{world.alice.user_id}")
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_kill_destroys_the_sandbox_in_the_background(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task = await _ready_task(world)
        assert await _sandbox_state(world, task) == sandbox_pb2.SANDBOX_STATE_RUNNING
        killing = (
            await world.stub.KillTask(pb.KillTaskRequest(name=task.name, reason="no longer needed"))
        ).task
        assert killing.status == task_pb2.TASK_STATUS_KILL_DESTROY_SANDBOX

        async def killed() -> None:
            got = await world.get(task.name)
            assert got.status == task_pb2.TASK_STATUS_KILLED
            assert got.HasField("end_time")

        await assert_eventually(killed, timeout=15)
        assert await _sandbox_state(world, task) == sandbox_pb2.SANDBOX_STATE_DESTROYED
        again = (await world.stub.KillTask(pb.KillTaskRequest(name=task.name))).task
        assert again.status == task_pb2.TASK_STATUS_KILLED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await world.stub.SendMessage(pb.SendMessageRequest(name=task.sessions[0].name, text="write a: b"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        listed = await world.stub.ListTasks(pb.ListTasksRequest(parent=world.organization))
        assert list(listed.tasks) == []


def _archive_on_branch(world: TaskWorld, branch: str) -> Message:
    return task_events.ArchiveTaskOnBranch(
        repository=world.repository,
        branch=branch,
        pull_request=f"{world.repository}/pullRequests/7",
        reason="PR merged",
    )


async def test_merged_pull_request_archives_the_task_on_its_branch(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """github-data asks for the archive with ArchiveTaskOnBranch when a pull request is merged (its
    local provider has no pull requests, so the test publishes the command as it would)."""
    routing_key, event = "github_data.task.archive_on_branch", _archive_on_branch
    async with task_world(fast_settings(), tmp_path) as world:
        task = await _ready_task(world)
        await world.mesh.broker.publish(
            exchange="events",
            routing_key=routing_key,
            body=event(world, task.branch).SerializeToString(),
            message_id="pr-7-merged",
        )

        async def archived() -> None:
            got = await world.get(task.name)
            assert got.status == task_pb2.TASK_STATUS_ARCHIVED

        await assert_eventually(archived, timeout=15)
        assert await _sandbox_state(world, task) == sandbox_pb2.SANDBOX_STATE_DESTROYED
        # An archived task's record is final: a kill is refused and changes nothing.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await world.stub.KillTask(pb.KillTaskRequest(name=task.name))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "archived" in (err.value.details() or "")
        assert (await world.get(task.name)).status == task_pb2.TASK_STATUS_ARCHIVED
