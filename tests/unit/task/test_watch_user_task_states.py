"""WatchUserTaskStates over real gRPC with the real peers: the caller's own unread state in one
organization, snapshot then changes, resumable; another user's rows never arrive; only members."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.common.v1 import watch_pb2
from foundry.task.v1 import task_pb2, user_task_state_pb2
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc
from google.protobuf import field_mask_pb2

from services.platform.identity import Caller, sign
from services.platform.settings import Settings
from services.platform.watch.testing import WatchClient
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import GATEWAY, TaskWorld, sign_in, task_world


class StatesWatch:
    """Follows WatchUserTaskStates as `caller` in the background; keeps every item name it saw."""

    def __init__(self, world: TaskWorld, caller: Caller, token: str = "") -> None:
        self.client = WatchClient()
        self.client.token = token
        self.seen: list[str] = []  # item names of every SNAPSHOT/UPSERT/DELETE event, in order
        self.kinds: list[int] = []
        self.error: Exception | None = None
        self.metadata = sign(caller, world.mesh.settings.internal_auth_secret.get_secret_value())
        self._task = asyncio.create_task(self._run(world.stub, world.organization))

    async def _run(self, stub: pb_grpc.TaskServiceAsyncStub, parent: str) -> None:
        request = pb.WatchUserTaskStatesRequest(parent=parent, resume_token=self.client.token)
        self.client.begin()
        try:
            async for response in stub.WatchUserTaskStates(request, metadata=self.metadata):
                self.kinds.append(response.event.kind)
                self.seen.extend(item.name for item in response.event.items)
                self.client.apply(response.event)
        except Exception as exc:  # surfaced by the assertions
            self.error = exc

    def unread(self) -> dict[str, list[str]]:
        """{task state name: names of its unread sessions}."""
        states = self.client.resources(user_task_state_pb2.UserTaskState)
        return {name: [s.name for s in state.sessions if s.unread] for name, state in states.items()}

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


async def _idle(world: TaskWorld, name: str) -> task_pb2.Task:
    async def idle() -> task_pb2.Task:
        got = await world.get(name)
        assert got.status == task_pb2.TASK_STATUS_IDLE, got.status_message
        return got

    return await assert_eventually(idle, timeout=30)


async def test_a_users_unread_state_streams_to_that_user_only(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task = await _idle(world, (await world.create("say hello")).name)
        session = task.sessions[0].name
        alice_state = f"{task.name}/userStates/{world.alice.user_id}"
        bob = await world.sign_in("bob")
        bob_state = f"{task.name}/userStates/{bob.user_id}"

        alice = StatesWatch(world, world.alice)
        bobs = StatesWatch(world, bob)
        try:
            # Snapshot: alice created the task (her own first turn leaves nothing unread); bob has
            # no state yet.
            await assert_eventually(lambda: _equal(alice.unread(), {alice_state: []}), timeout=10)
            await assert_eventually(lambda: _equal(bobs.client.snapshots, 1), timeout=10)
            assert alice.kinds[:2] == [
                watch_pb2.WATCH_EVENT_KIND_SNAPSHOT,
                watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END,
            ]
            assert bobs.unread() == {}

            # Bob sends a message on alice's task: when his turn finishes, the session is unread
            # for alice (a viewer other than the sender), and read for bob.
            await world.task_stub(bob).SendMessage(
                pb.SendMessageRequest(name=session, text="write hello.txt: hi")
            )
            await assert_eventually(
                lambda: _equal(
                    alice.unread(), {alice_state: [f"{session}/userStates/{world.alice.user_id}"]}
                ),
                timeout=30,
            )
            await assert_eventually(lambda: _equal(bobs.unread(), {bob_state: []}), timeout=10)
            unread_token = alice.client.token

            # Alice opens the task and marks the session read: the change reaches her stream.
            await world.stub.UpdateUserSessionState(
                pb.UpdateUserSessionStateRequest(
                    user_session_state=user_task_state_pb2.UserSessionState(
                        name=f"{session}/userStates/me", unread=False
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["unread"]),
                )
            )
            await assert_eventually(lambda: _equal(alice.unread(), {alice_state: []}), timeout=10)
            assert alice.error is None and bobs.error is None

            # Another user's rows never reached either stream.
            assert set(alice.seen) == {alice_state}, alice.seen
            assert set(bobs.seen) == {bob_state}, bobs.seen
        finally:
            await alice.close()
            await bobs.close()

        # Resume from the token alice had while the session was unread: no snapshot, just the
        # change after it (read again).
        resumed = StatesWatch(world, world.alice, token=unread_token)
        resumed.client.state = {}
        try:
            await assert_eventually(lambda: _equal(resumed.unread(), {alice_state: []}), timeout=10)
            assert watch_pb2.WATCH_EVENT_KIND_SNAPSHOT not in resumed.kinds
            assert resumed.kinds[0] == watch_pb2.WATCH_EVENT_KIND_UPSERT
            assert set(resumed.seen) == {alice_state}
        finally:
            await resumed.close()


async def test_non_members_and_services_are_refused(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path, sandbox=False) as world:
        mallory = await sign_in(world.mesh, "mallory")  # signed in, not a member of acme
        for caller in (mallory, GATEWAY):
            stream = world.stub.WatchUserTaskStates(
                pb.WatchUserTaskStatesRequest(parent=world.organization),
                metadata=sign(caller, world.mesh.settings.internal_auth_secret.get_secret_value()),
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stream:
                    pass
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, caller


def _equal(actual: object, expected: object) -> None:
    assert actual == expected, actual
