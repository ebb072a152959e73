"""Failure handling: an agent that dies mid-turn, a service restart with a turn running and another
queued (the turn ends INTERRUPTED, the session resumes with `session/load` or, for an agent without
it, a new ACP session under the kept transcript), and pushing the branch back to its origin."""

from __future__ import annotations

import datetime as dt
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from foundry.sandbox.v1 import agent_session_pb2 as session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc
from foundry.sandbox.v1 import session_event_pb2 as K

from services.platform import clock
from services.platform.settings import Settings
from services.sandbox.domain.models import SandboxKey, SessionKey, Turn, TurnState
from services.sandbox.usecases.turns import RESTARTED, TurnRunner
from tests.helpers.eventually import assert_eventually
from tests.helpers.mesh import running
from tests.unit.sandbox.conftest import prepared_sandbox, sandbox_stub
from tests.unit.sandbox.gitrepo import git
from tests.unit.sandbox.test_sessions import prompt, start_session, watch_until_turn_ends


async def _turn_running(stub: pb_grpc.SandboxServiceAsyncStub, session: str, turn: str) -> None:
    current = (await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))).agent_session
    assert current.current_turn == f"{session}/turns/{turn}"
    events = await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session))
    assert any(e.kind == K.SESSION_EVENT_KIND_TOOL_CALL for e in events.session_events)


async def test_an_agent_killed_mid_turn_fails_the_turn_and_a_new_session_start_resumes_it(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin)
    sandbox = session.split("/sessions/")[0]
    await prompt(stub, session, "long", "$ sleep 30")
    await assert_eventually(lambda: _turn_running(stub, session, "long"))
    agent = (await stub.StartAgent(pb.StartAgentRequest(parent=sandbox))).agent_connection
    os.killpg(agent.pid, signal.SIGKILL)

    _, events = await watch_until_turn_ends(stub, session)
    error = next(e for e in events if e.kind == K.SESSION_EVENT_KIND_ERROR)
    assert "agent fake was killed by signal 9" in error.text
    failed = (await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))).agent_session
    assert (
        failed.state == session_pb2.AGENT_SESSION_STATE_ERROR and "killed by signal 9" in failed.error_message
    )

    restarted = await stub.StartAgentSession(pb.StartAgentSessionRequest(parent=sandbox, session_id="s1"))
    assert restarted.agent_session.state == session_pb2.AGENT_SESSION_STATE_IDLE
    assert restarted.agent_session.acp_session_id == failed.acp_session_id  # session/load
    await prompt(stub, session, "again", "recall")
    _, after = await watch_until_turn_ends(stub, session, turns=2)
    assert after[-1].turn == f"{session}/turns/again" and after[-1].payload["stopReason"] == "end_turn"
    notice = next(e for e in after if e.kind == K.SESSION_EVENT_KIND_NOTICE)
    assert notice.payload["notice"] == "session_loaded" and notice.turn == ""
    assert [e.text for e in after if e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK][
        -1
    ] == "recall: $ sleep 30"


async def _restart_mid_turn(settings: Settings, origin: Path) -> tuple[str, str, list[Any]]:
    """Run `$ echo hi`, then `$ sleep 30` with `recall` queued behind it; stop the service while the
    sleep runs and start a new one on the same database and disk. Returns (session, the ACP session
    id before the restart, the events once both remaining turns ended)."""
    async with running(settings, ["sandbox"]) as first, sandbox_stub(first) as stub:
        await prepared_sandbox(stub, origin)
        sandbox = "organizations/acme/sandboxes/t1"
        started = (
            await stub.StartAgentSession(pb.StartAgentSessionRequest(parent=sandbox, session_id="s1"))
        ).agent_session
        session = started.name
        await prompt(stub, session, "hello", "$ echo hi")
        await watch_until_turn_ends(stub, session)
        await prompt(stub, session, "long", "$ sleep 30")
        await prompt(stub, session, "next", "recall")
        await assert_eventually(lambda: _turn_running(stub, session, "long"))
    # The first process is gone (its agent with it); a new one takes over the same database and disk.
    async with running(settings, ["sandbox"]) as second, sandbox_stub(second) as stub:

        async def both_ended() -> list[Any]:
            events = (
                await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session))
            ).session_events
            assert sum(e.kind == K.SESSION_EVENT_KIND_TURN_COMPLETED for e in events) == 3
            return list(events)

        events = await assert_eventually(both_ended, timeout=20)
        long = (await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))).agent_session
        assert long.state == session_pb2.AGENT_SESSION_STATE_IDLE and long.current_turn == ""
        assert not [e for e in events if e.kind == K.SESSION_EVENT_KIND_ERROR]
        interrupted = [
            e for e in events if e.turn.endswith("/long") and e.kind == K.SESSION_EVENT_KIND_NOTICE
        ]
        assert [(e.text, e.payload["notice"]) for e in interrupted] == [(RESTARTED, "turn_interrupted")]
        ended = next(
            e for e in events if e.turn.endswith("/long") and e.kind == K.SESSION_EVENT_KIND_TURN_COMPLETED
        )
        assert ended.payload["state"] == "interrupted"
        # The transcript of the first process is kept, in order, and the agent's replay is not logged.
        users = [e.text for e in events if e.kind == K.SESSION_EVENT_KIND_USER_MESSAGE]
        assert users == ["$ echo hi", "$ sleep 30", "recall"]
        assert not [e for e in events if e.kind == K.SESSION_EVENT_KIND_USER_MESSAGE_CHUNK]
        return session, started.acp_session_id, events


def _turn_text(events: list[Any], turn: str, kind: int) -> list[str]:
    return [e.text for e in events if e.turn.endswith(f"/{turn}") and e.kind == kind]


async def test_a_restart_interrupts_the_running_turn_and_the_agent_resumes_the_session(
    settings_factory: Callable[..., Settings], origin: Path
) -> None:
    settings = settings_factory()
    session, acp_before, events = await _restart_mid_turn(settings, origin)
    async with running(settings, ["sandbox"]) as third, sandbox_stub(third) as stub:
        turn = (await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))).agent_session
        assert turn.acp_session_id == acp_before  # session/load: the same ACP session goes on
        long = (
            await stub.PromptSession(pb.PromptSessionRequest(name=session, turn_id="long", text="x"))
        ).turn
        assert long.state == session_pb2.TURN_STATE_INTERRUPTED and long.error_message == RESTARTED
    notices = _turn_text(events, "next", K.SESSION_EVENT_KIND_NOTICE)
    assert len(notices) == 1 and "resumed this session (session/load)" in notices[0]
    # The agent remembers both prompts sent before the restart.
    assert _turn_text(events, "next", K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK) == [
        "recall: $ echo hi | $ sleep 30"
    ]


async def test_a_restart_with_an_agent_that_cannot_load_starts_a_new_session_and_keeps_the_transcript(
    settings_factory: Callable[..., Settings], origin: Path
) -> None:
    settings = settings_factory(sandbox={"agents": {"fake": "foundry-fake-agent --no-load-session"}})
    session, acp_before, events = await _restart_mid_turn(settings, origin)
    async with running(settings, ["sandbox"]) as third, sandbox_stub(third) as stub:
        after = (await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))).agent_session
        assert after.acp_session_id not in ("", acp_before)
    notices = _turn_text(events, "next", K.SESSION_EVENT_KIND_NOTICE)
    assert len(notices) == 1 and "cannot resume sessions (no session/load)" in notices[0]
    assert _turn_text(events, "next", K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK) == ["recall: nothing"]


async def test_push_branch_publishes_the_sandbox_commits_to_origin(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = await prepared_sandbox(stub, origin, branch="feat/pushed")
    work = Path(sandbox.checkout.path)
    (work / "new.txt").write_text("pushed\n")
    git("add", "new.txt", cwd=work)
    git("commit", "-q", "-m", "add new.txt", cwd=work)
    response = await stub.PushBranch(pb.PushBranchRequest(name=sandbox.name))
    assert response.branch == "feat/pushed" and response.remote_url == str(origin)
    assert git("rev-parse", "feat/pushed", cwd=origin).strip() == response.head_commit
    assert git("show", "feat/pushed:new.txt", cwd=origin) == "pushed\n"


def _turn(runner: str, agent_pid: int, heartbeat_age: dt.timedelta) -> Turn:
    t = clock.now()
    return Turn(
        session=SessionKey(SandboxKey("acme", "t1"), "s1"),
        turn_id="t",
        state=TurnState.RUNNING,
        text="x",
        attachments=[],
        user="",
        stop_reason="",
        error_message="",
        first_event_seq=0,
        last_event_seq=0,
        cancel_requested=False,
        runner=runner,
        agent_pid=agent_pid,
        create_time=t - heartbeat_age,
        start_time=t - heartbeat_age,
        end_time=None,
        heartbeat_time=t - heartbeat_age,
    )


def test_a_turn_whose_runner_process_is_gone_is_orphaned_even_while_its_agent_lingers() -> None:
    alive = {100, 200, 300}  # pids alive on this host: another replica (100), agents (200, 300)
    runner = TurnRunner(
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        runner="h:999:new",
        is_alive=alive.__contains__,
    )
    fresh, stale = dt.timedelta(seconds=1), dt.timedelta(minutes=5)
    own = _turn("h:999:new", 200, stale)
    assert runner.orphaned(own)  # its own, but no run of its session is under way: abandoned
    runner._running[own.session] += 1  # what `run_session` holds while it runs the session's turns
    assert not runner.orphaned(own)
    assert not runner.orphaned(_turn("h:100:other", 200, fresh))  # another live replica on this host
    assert runner.orphaned(_turn("h:100:other", 404, fresh))  # that replica's agent died
    assert runner.orphaned(_turn("h:404:old", 200, fresh))  # a killed runner; its agent lingers
    assert runner.orphaned(_turn(f"h:{os.getpid()}:old", 200, fresh))  # an earlier incarnation of this pid
    assert not runner.orphaned(_turn("elsewhere:1:x", 404, fresh))  # another host: by heartbeat only
    assert runner.orphaned(_turn("elsewhere:1:x", 404, stale))
