"""A restart of the sandbox service while a session's turn runs: the turn ends INTERRUPTED (not an
error), the task's session goes on (its queued message runs, resuming the agent session with
`session/load`), and the session's `notice` says what happened until the next message is sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import session_event_pb2 as K
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from services.sandbox.usecases.turns import RESTARTED
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import task_world
from tests.unit.task.test_session_commands import _agent_session, _ready, _restart_sandbox, _session


async def test_a_sandbox_restart_mid_turn_interrupts_the_turn_and_the_session_goes_on(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task, first = await _ready(world)  # the prompt "say hello" was its first turn
        await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="$ sleep 120"))

        async def running() -> None:
            agent = await _agent_session(world, first.sandbox_session)
            assert agent.current_turn, agent  # the sandbox is running the command

        await assert_eventually(running, timeout=15)
        # Sent during the running turn: queued behind it.
        await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="recall"))

        async def noop() -> None:
            return None

        await _restart_sandbox(world, down=noop)

        async def went_on() -> session_pb2.Session:
            got = await _session(world, first.name)
            assert got.status == session_pb2.SESSION_STATUS_IDLE and got.notice, got
            return got

        got = await assert_eventually(went_on, timeout=30, interval=0.1)
        assert got.notice == RESTARTED and not got.error_message
        detail = await world.get(task.name)
        assert detail.status == task_pb2.TASK_STATUS_IDLE and detail.sessions[0].notice == RESTARTED

        events = (
            await world.sandbox_stub().ListSessionEvents(
                sb_pb2.ListSessionEventsRequest(parent=first.sandbox_session)
            )
        ).session_events
        assert not [e for e in events if e.kind == K.SESSION_EVENT_KIND_ERROR]
        notices = [e.payload["notice"] for e in events if e.kind == K.SESSION_EVENT_KIND_NOTICE]
        assert notices == ["turn_interrupted", "session_loaded"]
        # The queued message ran after the restart, on the resumed agent session: it remembers.
        answer = [e.text for e in events if e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK][-1]
        assert answer == "recall: say hello | $ sleep 120"

        # The next message clears the notice.
        sent = (await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="hi"))).session
        assert sent.notice == "" and sent.status == session_pb2.SESSION_STATUS_RUNNING
