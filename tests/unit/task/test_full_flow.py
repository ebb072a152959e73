"""The whole flow with the real organization, github-data and sandbox services (embedded default):
a task on a local git repository reaches READY, its prompt is the agent's first turn, and a message
to the offline agent changes a file, observed through WatchTask, and found on disk in the sandbox's
checkout and in its session log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import session_event_pb2
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import task_world


async def test_task_reaches_ready_and_a_message_changes_a_file(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(messaging={"max_attempts": 3, "retry_delay_seconds": 0.1})
    async with task_world(settings, tmp_path) as world:
        task = await world.create("Add a hello file")
        assert task.status == task_pb2.TASK_STATUS_INIT_ENQUEUE_PROVISION
        watch = world.watch(task.name)
        try:

            def ready() -> None:
                # Provisioned, and the prompt's turn (the first one) has ended.
                assert watch.task.status == task_pb2.TASK_STATUS_IDLE, watch.task.status_message
                assert watch.task.sessions[0].status == session_pb2.SESSION_STATUS_IDLE

            await assert_eventually(ready, timeout=60)
            assert watch.task.sandbox.cwd
            sent = await world.stub.SendMessage(
                pb.SendMessageRequest(name=watch.task.sessions[0].name, text="write hello.txt: hi")
            )
            assert sent.session.status == session_pb2.SESSION_STATUS_RUNNING

            def changed() -> None:
                assert watch.task.status == task_pb2.TASK_STATUS_IDLE
                assert [c.path for c in watch.task.git_state.file_changes] == ["hello.txt"]

            await assert_eventually(changed, timeout=60)
            assert any(t.status == task_pb2.TASK_STATUS_RUNNING for t in watch.history)
            assert watch.task.sessions[0].used
            cwd = Path(watch.task.sandbox.cwd)
        finally:
            await watch.close()
        assert (cwd / "hello.txt").read_text() == "hi\n"
        session = (await world.stub.GetSession(pb.GetSessionRequest(name=sent.session.name))).session
        log = await world.sandbox_stub().ListSessionEvents(
            sb_pb2.ListSessionEventsRequest(parent=session.sandbox_session)
        )
        user_messages = [
            e.text for e in log.session_events if e.kind == session_event_pb2.SESSION_EVENT_KIND_USER_MESSAGE
        ]
        assert user_messages == ["Add a hello file", "write hello.txt: hi"]
