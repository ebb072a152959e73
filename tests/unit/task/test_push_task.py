"""PushTask records a push-only publication and returns; the worker pushes the branch (committing
the agent's edits) into the real local repository, or records why it could not."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, edited_task, stop_sandbox_now, task_world

STATE = task_pb2.PublicationState


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


async def _publication(world: TaskWorld, name: str, state: int) -> task_pb2.PullRequestPublication:
    async def reached() -> task_pb2.PullRequestPublication:
        got = (await world.get(name)).publication
        assert got.state == state, got
        return got

    return await assert_eventually(reached, timeout=30, interval=0.1)


async def test_push_returns_at_once_and_the_branch_lands_in_the_repository(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task = await edited_task(world)
        request_id = str(uuid.uuid4())
        pushed = (await world.stub.PushTask(pb.PushTaskRequest(name=task.name, request_id=request_id))).task
        assert pushed.publication.state == STATE.PUBLICATION_STATE_PUBLISHING
        assert pushed.publication.push_only and pushed.publication.request_id == request_id

        done = await _publication(world, task.name, STATE.PUBLICATION_STATE_PUBLISHED)
        origin = world.root / "demo"
        assert _git(origin, "rev-parse", f"refs/heads/{task.branch}").strip() == done.head_commit
        assert _git(origin, "show", f"{done.head_commit}:hello.txt") == "hi\n"
        assert not (await world.get(task.name)).HasField("pull_request")  # push-only: no pull request

        # A retry of the same request is answered from the record: no second push.
        again = (await world.stub.PushTask(pb.PushTaskRequest(name=task.name, request_id=request_id))).task
        assert again.publication == done


async def test_push_while_the_sandbox_is_down_is_accepted_and_its_failure_recorded(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task = await edited_task(world)
        await stop_sandbox_now(world.mesh)
        # The old PushTask pushed inline and failed UNAVAILABLE here; now it records and returns.
        pushed = (await world.stub.PushTask(pb.PushTaskRequest(name=task.name), timeout=5)).task
        assert pushed.publication.state == STATE.PUBLICATION_STATE_PUBLISHING

        failed = await _publication(world, task.name, STATE.PUBLICATION_STATE_ERROR)
        assert "pushing the branch" in failed.error_message, failed
        assert failed.push_only and not failed.head_commit
        origin = world.root / "demo"
        assert task.branch not in _git(origin, "branch", "--list", task.branch)
