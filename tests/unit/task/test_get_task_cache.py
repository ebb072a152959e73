"""GetTask reuses the response it built while the rows read are equal (`DetailResponses`): each
caller still sees its own unread flags and every change at once, and the cache stays bounded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from foundry.task.v1 import task_pb2, user_task_state_pb2
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc
from google.protobuf import field_mask_pb2

from services.platform.settings import Settings
from services.task.api.detail_cache import DetailResponses
from services.task.store import queries
from tests.unit.task.conftest import task_world

SLOW_SANDBOX = {"create_delay_seconds": 30.0}  # provisioning stays pending for the whole test


async def test_get_task_shows_each_callers_unread_flags_and_every_change(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(sandbox=SLOW_SANDBOX), tmp_path) as world:
        task = await world.create("Add a hello file")
        bob = world.task_stub(await world.sign_in("bob"))
        session = task.sessions[0].name

        async def unread(stub: pb_grpc.TaskServiceAsyncStub) -> bool:
            got = (await stub.GetTask(pb.GetTaskRequest(name=task.name))).task
            return bool(got.sessions[0].unread)

        async def mark(value: bool) -> None:
            state = user_task_state_pb2.UserSessionState(name=f"{session}/userStates/me", unread=value)
            await world.stub.UpdateUserSessionState(
                pb.UpdateUserSessionStateRequest(
                    user_session_state=state, update_mask=field_mask_pb2.FieldMask(paths=["unread"])
                )
            )

        assert (await unread(world.stub), await unread(bob)) == (False, False)
        await mark(True)
        assert (await unread(world.stub), await unread(bob)) == (True, False)
        assert (await unread(world.stub), await unread(bob)) == (True, False)  # again, from the cache
        await mark(False)
        assert await unread(world.stub) is False

        await world.stub.RenameTask(pb.RenameTaskRequest(name=task.name, title="Better"))
        for stub in (world.stub, bob):
            got = (await stub.GetTask(pb.GetTaskRequest(name=task.name))).task
            assert got.title == "Better"
        basic = await world.stub.GetTask(pb.GetTaskRequest(name=task.name, view=task_pb2.TASK_VIEW_BASIC))
        assert basic.task.title == "Better"


def _detail(title: str, *, git_state: bytes = b"") -> queries.TaskDetail:
    row: list[object] = [None] * (len(queries._TASK_KEYS) + len(queries._SESSION_KEYS) + 1)
    row[queries._TASK_KEYS.index("title")] = title
    row[queries._GIT_STATE] = git_state
    return queries.TaskDetail([row], "user/alice")


def test_the_cache_builds_again_when_rows_change_and_stays_bounded() -> None:
    built: list[str] = []

    def build(detail: queries.TaskDetail, full: bool) -> pb.GetTaskResponse:
        title = str(detail.rows[0][queries._TASK_KEYS.index("title")])
        built.append(title)
        return pb.GetTaskResponse(task=task_pb2.Task(title=title))

    cache = DetailResponses(build)
    first = cache.response("t1", _detail("a"), full=True)
    assert cache.response("t1", _detail("a"), full=True) is first and built == ["a"]
    assert cache.response("t1", _detail("b"), full=True).task.title == "b"
    assert cache.response("t1", _detail("b"), full=False) is not cache.response("t1", _detail("b"), full=True)

    heavy = _detail("h", git_state=b"x" * (DetailResponses.MAX_WEIGHT + 1))
    cache.response("t2", heavy, full=True)
    cache.response("t2", heavy, full=True)
    assert built.count("h") == 2  # a task heavier than MAX_WEIGHT is never kept

    for n in range(DetailResponses.MAX_ENTRIES + 10):
        cache.response(f"many-{n}", _detail("m"), full=True)
    assert len(cache._entries) == DetailResponses.MAX_ENTRIES
