"""Virtual tasks open on first use (issue #13, item 7): a task that exists only as a pull request's
entry in the organization's task index is materialized by GetTask, WatchTask or CreateSession on
its name, get-or-create: concurrent first uses make one task. A name that is no virtual task stays
NOT_FOUND."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.common.v1 import watch_pb2
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, task_world, virtual_task


async def _tasks_named(world: TaskWorld, name: str) -> list[task_pb2.Task]:
    listed = await world.stub.ListTasks(pb.ListTasksRequest(parent=world.organization))
    return [t for t in listed.tasks if t.name == name]


async def test_get_and_create_session_on_a_virtual_task_materialize_it_once(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        name = await virtual_task(world, 7, "feature/existing")
        assert await _tasks_named(world, name) == []
        got, again, session = await asyncio.gather(
            world.stub.GetTask(pb.GetTaskRequest(name=name)),
            world.stub.GetTask(pb.GetTaskRequest(name=name)),
            world.stub.CreateSession(pb.CreateSessionRequest(parent=name)),
        )
        assert got.task.name == again.task.name == name and got.task.branch == "feature/existing"
        assert got.task.prompt == "PR 7"
        assert session.session.name.startswith(f"{name}/sessions/")
        assert len(await _tasks_named(world, name)) == 1

        async def ready() -> task_pb2.Task:
            task = await world.get(name)
            assert task.status == task_pb2.TASK_STATUS_IDLE, (task.status, task.status_message)
            return task

        task = await assert_eventually(ready, timeout=60)
        assert len(task.sessions) == 2  # the materialized task's first session and the created one

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await world.stub.GetTask(pb.GetTaskRequest(name=f"{world.organization}/tasks/nosuchtask"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_on_a_virtual_task_materializes_it(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        name = await virtual_task(world, 8, "feature/existing")
        call = world.stub.WatchTask(pb.WatchTaskRequest(name=name))
        try:
            response = await asyncio.wait_for(call.read(), 15)
            assert isinstance(response, pb.WatchTaskResponse), response
            first = response.event
        finally:
            call.cancel()
        assert first.kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT
        snapshot = task_pb2.Task()
        assert first.items and first.items[0].resource.Unpack(snapshot)
        assert snapshot.name == name and snapshot.branch == "feature/existing"
        assert len(await _tasks_named(world, name)) == 1
