"""Steering a session: messages sent while a turn runs are queued, shown in the transcript in order
(MESSAGE_QUEUED) and delivered after it; StopSession cancels the running turn and the queued
messages, and says so (the session's `notice`, a NOTICE per unsent message in the transcript)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import session_event_pb2 as K
from foundry.task.v1 import session_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, task_world
from tests.unit.task.test_session_commands import _agent_session, _ready, _session


async def _events(world: TaskWorld, sandbox_session: str) -> list[K.SessionEvent]:
    listed = await world.sandbox_stub().ListSessionEvents(
        sb_pb2.ListSessionEventsRequest(parent=sandbox_session)
    )
    return list(listed.session_events)


def _texts(events: list[K.SessionEvent], kind: int) -> list[str]:
    return [e.text for e in events if e.kind == kind]


async def _command_running(world: TaskWorld, session: session_pb2.Session, marker: str) -> None:
    async def running() -> None:
        assert (await _agent_session(world, session.sandbox_session)).current_turn
        assert marker in _texts(
            await _events(world, session.sandbox_session), K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK
        )

    await assert_eventually(running, timeout=15, interval=0.1)


async def test_messages_sent_during_a_turn_are_shown_queued_and_run_after_it_in_order(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        _, first = await _ready(world)
        # Long enough for both messages to be sent while it runs, on a busy machine too.
        await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="$ echo one; sleep 4"))
        await _command_running(world, first, "one\n")
        for text in ("$ echo two", "$ echo three"):
            sent = (await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text=text))).session
            assert sent.status == session_pb2.SESSION_STATUS_RUNNING

        async def shown_queued() -> None:
            events = await _events(world, first.sandbox_session)
            assert _texts(events, K.SESSION_EVENT_KIND_MESSAGE_QUEUED) == ["$ echo two", "$ echo three"]

        await assert_eventually(shown_queued, timeout=10, interval=0.1)  # before the turn ends

        async def all_ran() -> list[K.SessionEvent]:
            got = await _session(world, first.name)
            assert got.status == session_pb2.SESSION_STATUS_IDLE, got
            return await _events(world, first.sandbox_session)

        events = await assert_eventually(all_ran, timeout=30, interval=0.1)
        users = _texts(events, K.SESSION_EVENT_KIND_USER_MESSAGE)
        assert users == ["say hello", "$ echo one; sleep 4", "$ echo two", "$ echo three"]
        chunks = _texts(events, K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK)
        assert chunks[-3:] == ["one\n", "two\n", "three\n"]
        assert not (await _session(world, first.name)).notice


async def test_stop_cancels_the_running_turn_and_the_queued_messages_and_says_so(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        _, first = await _ready(world)
        await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="$ echo long; sleep 120"))
        await _command_running(world, first, "long\n")
        await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="write never.txt: no"))

        async def shown_queued() -> None:
            events = await _events(world, first.sandbox_session)
            assert _texts(events, K.SESSION_EVENT_KIND_MESSAGE_QUEUED) == ["write never.txt: no"]

        await assert_eventually(shown_queued, timeout=10, interval=0.1)
        stopped = (await world.stub.StopSession(pb.StopSessionRequest(name=first.name))).session
        expected = "stopped: the running turn is cancelled, and the 1 queued message will not be sent"
        assert stopped.notice == expected and stopped.status == session_pb2.SESSION_STATUS_RUNNING

        async def idle() -> session_pb2.Session:
            got = await _session(world, first.name)
            assert got.status == session_pb2.SESSION_STATUS_IDLE, got
            return got

        got = await assert_eventually(idle, timeout=20, interval=0.1)  # not the command's 120 s
        assert got.notice == expected and not got.error_message
        events = await _events(world, first.sandbox_session)
        assert _texts(events, K.SESSION_EVENT_KIND_NOTICE) == [
            "not sent to the agent: cancelled while queued"
        ]
        assert "write never.txt: no" not in _texts(events, K.SESSION_EVENT_KIND_USER_MESSAGE)
        stops = [e.payload["stopReason"] for e in events if e.kind == K.SESSION_EVENT_KIND_TURN_COMPLETED]
        assert stops[-1] == "cancelled"
        # The session takes messages again, and the notice goes with the next one.
        sent = (await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="hi"))).session
        assert sent.notice == "" and sent.status == session_pb2.SESSION_STATUS_RUNNING
