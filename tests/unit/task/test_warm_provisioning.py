"""Provisioning through the warm pool, end to end: the four real services, real git, the fake agent
and the configured provider (bubblewrap where the kernel allows it). The path a task took is read
from its sandbox's record (`from_warm_pool`), never from timing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import session_event_pb2
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, task_world

READY = task_pb2.ProvisioningStage.Value("PROVISIONING_STAGE_READY")


async def _ready(world: TaskWorld, name: str) -> task_pb2.Task:
    async def ready() -> task_pb2.Task:
        got = await world.get(name)
        assert got.provisioning.stage == READY, got.status_message
        session = (await world.stub.GetSession(pb.GetSessionRequest(name=got.sessions[0].name))).session
        assert session.sandbox_session
        return got

    return await assert_eventually(ready, timeout=30)


async def test_a_second_task_of_a_repository_is_provisioned_from_its_warm_pool(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = fast_settings(sandbox={"warm_pool_size": 1, "warm_pool_refill_seconds": 0.2})
    async with task_world(settings, tmp_path) as world:
        first = await _ready(world, (await world.create("Add a hello file")).name)
        host = world.mesh.hosts["sandbox"]
        assert host.wiring is not None
        pool = host.wiring.on_drain[0].__self__  # type: ignore[attr-defined]

        async def warm() -> None:
            rows = await pool.records.unclaimed(pool.replica)
            assert [r.pool for r in rows] == ["warm"]

        await assert_eventually(warm, timeout=30)
        second = await _ready(world, (await world.create("Add a second file")).name)
        boxes = {b.name: b for b in await world.sandboxes()}
        # Only the tasks' sandboxes are listed (the refilled warm one is the pool's).
        assert set(boxes) == {first.sandbox.name, second.sandbox.name}
        assert not boxes[first.sandbox.name].from_warm_pool
        claimed = boxes[second.sandbox.name]
        assert claimed.from_warm_pool and claimed.task == second.name
        assert claimed.checkout.branch == second.branch and second.sandbox.cwd == claimed.checkout.path
        # The task's session runs on it: its prompt's turn is answered in the claimed sandbox.
        session = (await world.stub.GetSession(pb.GetSessionRequest(name=second.sessions[0].name))).session
        assert session.sandbox_session.startswith(claimed.name + "/sessions/")

        async def answered() -> None:
            listed = await world.sandbox_stub().ListSessionEvents(
                sb_pb2.ListSessionEventsRequest(parent=session.sandbox_session)
            )
            kinds = [e.kind for e in listed.session_events]
            assert session_event_pb2.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK in kinds

        await assert_eventually(answered, timeout=30)
        await assert_eventually(warm, timeout=30)  # refilled after the claim
