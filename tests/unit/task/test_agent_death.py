"""An agent that dies on its own (OOM-killed, crashed) mid-turn: the turn fails with the agent's exit
in words, and the session goes on — the next message restarts the agent and resumes its ACP session
(`session/load`), so it remembers the conversation."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import session_event_pb2 as K
from foundry.task.v1 import session_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import task_world
from tests.unit.task.test_session_commands import _ready, _session


async def test_an_agent_that_dies_mid_turn_fails_the_turn_and_the_next_message_resumes_the_session(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        _, first = await _ready(world)
        await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="$ sleep 120"))

        async def running() -> None:  # the agent has the prompt: its command's tool call is logged
            events = (
                await world.sandbox_stub().ListSessionEvents(
                    sb_pb2.ListSessionEventsRequest(parent=first.sandbox_session)
                )
            ).session_events
            assert [e for e in events if e.kind == K.SESSION_EVENT_KIND_TOOL_CALL], events

        await assert_eventually(running, timeout=15)
        sandbox = first.sandbox_session.split("/sessions/")[0]
        agent = (
            await world.sandbox_as_task_service().StartAgent(sb_pb2.StartAgentRequest(parent=sandbox))
        ).agent_connection
        os.killpg(agent.pid, signal.SIGKILL)

        async def failed() -> session_pb2.Session:
            got = await _session(world, first.name)
            assert got.status != session_pb2.SESSION_STATUS_RUNNING and got.error_message, got
            return got

        got = await assert_eventually(failed, timeout=20, interval=0.1)
        assert "killed by signal 9" in got.error_message

        await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="recall"))

        async def answered() -> list[K.SessionEvent]:
            events = (
                await world.sandbox_stub().ListSessionEvents(
                    sb_pb2.ListSessionEventsRequest(parent=first.sandbox_session)
                )
            ).session_events
            said = [e.text for e in events if e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK]
            assert said and said[-1].startswith("recall: "), said
            return list(events)

        events = await assert_eventually(answered, timeout=30, interval=0.2)
        said = [e.text for e in events if e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK]
        assert said[-1] == "recall: say hello | $ sleep 120"  # the resumed session remembers

        async def idle() -> (
            None
        ):  # the task service hears `turn_completed` after the sandbox logged the answer
            after = await _session(world, first.name)
            assert after.status == session_pb2.SESSION_STATUS_IDLE and not after.error_message, after

        await assert_eventually(idle, timeout=15, interval=0.1)
