"""CreateTask is bootstrap-only: it validates, reserves the branch, persists and enqueues."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from foundry.sandbox.v1 import sandbox_pb2
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, task_world

INIT = task_pb2.TASK_STATUS_INIT_ENQUEUE_PROVISION
SLOW_SANDBOX = {"create_delay_seconds": 30.0}  # CreateSandbox takes 30 s: provisioning stays pending


async def _sandbox_pending_for(world: TaskWorld, task: task_pb2.Task) -> None:
    """Provisioning reached the sandbox service: the task's sandbox is recorded and still being
    created, and it is the organization's only one."""
    boxes = await world.sandboxes()
    assert [(b.task, b.state) for b in boxes] == [(task.name, sandbox_pb2.SANDBOX_STATE_PENDING)]


async def test_create_task_returns_at_once_while_the_sandbox_is_slow(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(sandbox=SLOW_SANDBOX), tmp_path) as world:
        started = time.perf_counter()
        task = await world.create("Fix the crash on empty input")
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0
        assert task.status == INIT
        assert task.title == "fix: fix the crash on empty input"
        assert task.branch.startswith("fix/fix-the-crash-on-empty-input-")
        assert task.provisioning.stage == task_pb2.PROVISIONING_STAGE_QUEUED
        assert [s.status for s in task.sessions] == [session_pb2.SESSION_STATUS_PENDING_PROVISION]
        # Provisioning has started in the background and is stuck in the slow sandbox.
        await assert_eventually(lambda: _sandbox_pending_for(world, task))
        got = await world.get(task.name)
        assert got.status == task_pb2.TASK_STATUS_INIT_CREATE_SANDBOX
        assert got.sessions[0].status == session_pb2.SESSION_STATUS_PENDING_PROVISION


async def test_create_task_returns_while_the_sandbox_is_down_and_provisioning_errors_readably(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path, sandbox=False) as world:
        started = time.perf_counter()
        task = await world.create("Add a login page")
        assert time.perf_counter() - started < 2.0
        assert task.status == INIT

        async def errored() -> task_pb2.Task:
            got = await world.get(task.name)
            assert got.status == task_pb2.TASK_STATUS_ERROR
            return got

        failed = await assert_eventually(errored, timeout=20)
        assert failed.provisioning.stage == task_pb2.PROVISIONING_STAGE_ERROR
        assert failed.provisioning.failed_stage == task_pb2.PROVISIONING_STAGE_SANDBOX_ALLOCATED
        assert failed.status_message.startswith("create sandbox failed")
        assert failed.sessions[0].status == session_pb2.SESSION_STATUS_ERROR


async def test_request_id_makes_create_task_idempotent(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(sandbox=SLOW_SANDBOX), tmp_path) as world:
        request = pb.CreateTaskRequest(
            parent=world.organization,
            request_id="6a0c2f0e-1111-4c4c-8888-000000000001",
            task=task_pb2.Task(repository=world.repository, prompt="add a thing"),
        )
        first = (await world.stub.CreateTask(request)).task
        second = (await world.stub.CreateTask(request)).task
        assert first.name == second.name and first.branch == second.branch
        listed = await world.stub.ListTasks(pb.ListTasksRequest(parent=world.organization))
        assert [t.name for t in listed.tasks] == [first.name]
        assert [(e.task, e.branch) for e in await world.index_entries()] == [(first.name, first.branch)]


async def test_explicit_branch_is_kept_and_must_not_collide(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(sandbox=SLOW_SANDBOX), tmp_path) as world:
        task = await world.create("docs: write the guide", branch="docs/guide", title="Guide")
        assert task.branch == "docs/guide" and task.title == "Guide"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await world.create("another", branch="docs/guide")
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "ReserveTaskBranch" not in (err.value.details() or ""), err.value.details()
        listed = await world.stub.ListTasks(pb.ListTasksRequest(parent=world.organization))
        assert [t.name for t in listed.tasks] == [task.name]
        assert [e.branch for e in await world.index_entries()] == ["docs/guide"]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"prompt": "   "}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"branch": "bad branch"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"repository": "organizations/other/repositories/r1"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"repository": "nonsense"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"repository": "organizations/acme/repositories/0123456789abcdef"}, grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_invalid_create_task_changes_nothing(
    fast_settings: Callable[..., Settings], tmp_path: Path, fields: dict[str, Any], code: grpc.StatusCode
) -> None:
    async with task_world(fast_settings(sandbox=SLOW_SANDBOX), tmp_path) as world:
        prompt = fields.pop("prompt", "add a thing")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await world.create(prompt, **fields)
        assert err.value.code() == code
        # The message is about the request, in its terms: no internal call named (was
        # "GetRepository: organizations/… not found").
        details = err.value.details() or ""
        assert "GetRepository" not in details and "peer call" not in details, details
        if code == grpc.StatusCode.NOT_FOUND:
            assert details == f"{fields['repository']} not found"
        # A valid task afterwards is the only one anywhere: once its provisioning has reached the
        # sandbox, any work the rejected request had enqueued would have reached it too.
        valid = await world.create("add a thing")
        await assert_eventually(lambda: _sandbox_pending_for(world, valid))
        listed = await world.stub.ListTasks(pb.ListTasksRequest(parent=world.organization, show_ended=True))
        assert [t.name for t in listed.tasks] == [valid.name]
        assert [e.task for e in await world.index_entries()] == [valid.name]


async def test_on_existing_branch_requires_a_branch(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        request = pb.CreateTaskRequest(
            parent=world.organization,
            on_existing_branch=True,
            task=task_pb2.Task(repository=world.repository, prompt="continue"),
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await world.stub.CreateTask(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request.task.branch = "feature/existing"
        task = (await world.stub.CreateTask(request)).task
        assert task.branch == "feature/existing"
        assert [e.branch for e in await world.index_entries()] == ["feature/existing"]

        # The sandbox checks out the existing branch of the real repository (not a new one from main).
        async def ready() -> task_pb2.Task:
            got = await world.get(task.name)
            assert got.status == task_pb2.TASK_STATUS_IDLE, got.status_message
            return got

        await assert_eventually(ready, timeout=30)
        (box,) = await world.sandboxes()
        assert box.checkout.branch == "feature/existing" and box.checkout.branch_existed
