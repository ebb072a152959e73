"""RevertFile records the request on the task and returns; the sandbox service reverts the file in
the background (real git in the real checkout), and a revert it cannot do is recorded FAILED."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, edited_task, stop_sandbox_now, task_world

STATE = task_pb2.FileRevertState


async def _revert(world: TaskWorld, name: str, request_id: str, state: int) -> task_pb2.Task:
    async def reached() -> task_pb2.Task:
        got = await world.get(name)
        (entry,) = [r for r in got.file_reverts if r.request_id == request_id]
        assert entry.state == state, entry
        return got

    return await assert_eventually(reached, timeout=30, interval=0.1)


async def test_revert_returns_at_once_and_the_file_is_back_at_head(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task = await edited_task(world)
        written = Path(task.sandbox.cwd) / "hello.txt"
        assert written.read_text() == "hi\n"

        for bad in ("", "/etc/passwd", "../outside", "a/../../b"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await world.stub.RevertFile(pb.RevertFileRequest(name=task.name, path=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert not (await world.get(task.name)).file_reverts  # refused requests record nothing

        request_id = str(uuid.uuid4())
        request = pb.RevertFileRequest(name=task.name, path="hello.txt", request_id=request_id)
        accepted = (await world.stub.RevertFile(request)).task
        (entry,) = accepted.file_reverts
        assert (entry.path, entry.state) == ("hello.txt", STATE.FILE_REVERT_STATE_PENDING)

        done = await _revert(world, task.name, request_id, STATE.FILE_REVERT_STATE_DONE)
        assert not written.exists()

        async def git_state_clean() -> None:
            assert not (await world.get(task.name)).git_state.file_changes

        await assert_eventually(git_state_clean, timeout=15)
        # A retry of the same request is answered from the record: still one entry.
        again = (await world.stub.RevertFile(request)).task
        assert [r.request_id for r in again.file_reverts] == [request_id]
        assert again.file_reverts[0] == done.file_reverts[0]


async def test_revert_while_the_sandbox_is_down_is_accepted_and_its_failure_recorded(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task = await edited_task(world)
        await stop_sandbox_now(world.mesh)
        request_id = str(uuid.uuid4())
        request = pb.RevertFileRequest(name=task.name, path="hello.txt", request_id=request_id)
        accepted = (await world.stub.RevertFile(request, timeout=5)).task  # no git in the request path
        assert accepted.file_reverts[0].state == STATE.FILE_REVERT_STATE_PENDING

        failed = await _revert(world, task.name, request_id, STATE.FILE_REVERT_STATE_FAILED)
        assert failed.file_reverts[0].error_message
        assert (Path(task.sandbox.cwd) / "hello.txt").read_text() == "hi\n"
