"""Failure handling: an agent that dies mid-turn, a service restart with a turn running and another
queued, and pushing the branch back to its origin."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foundry.sandbox.v1 import agent_session_pb2 as session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc
from foundry.sandbox.v1 import session_event_pb2 as K

from services.platform.settings import Settings
from services.sandbox.usecases.turns import RESTARTED
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


async def test_an_agent_killed_mid_turn_fails_the_turn_and_a_new_session_start_recovers(
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
    assert restarted.agent_session.acp_session_id != failed.acp_session_id
    await prompt(stub, session, "again", "hello")
    _, after = await watch_until_turn_ends(stub, session, turns=2)
    assert after[-1].turn == f"{session}/turns/again" and after[-1].payload["stopReason"] == "end_turn"


async def test_a_restart_fails_the_running_turn_readably_and_runs_the_queued_one(
    settings_factory: Callable[..., Settings], origin: Path
) -> None:
    settings = settings_factory()
    async with running(settings, ["sandbox"]) as first, sandbox_stub(first) as stub:
        await prepared_sandbox(stub, origin)
        sandbox = "organizations/acme/sandboxes/t1"
        session = (
            await stub.StartAgentSession(pb.StartAgentSessionRequest(parent=sandbox, session_id="s1"))
        ).agent_session.name
        await prompt(stub, session, "long", "$ sleep 30")
        await prompt(stub, session, "next", "$ echo after restart")
        await assert_eventually(lambda: _turn_running(stub, session, "long"))
    # The first process is gone (its agent with it); a new one takes over the same database and disk.
    async with running(settings, ["sandbox"]) as second, sandbox_stub(second) as stub:

        async def both_ended() -> list[Any]:
            events = (
                await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session))
            ).session_events
            assert sum(e.kind == K.SESSION_EVENT_KIND_TURN_COMPLETED for e in events) == 2
            return list(events)

        events = await assert_eventually(both_ended, timeout=20)
        long_error = [e for e in events if e.turn.endswith("/long") and e.kind == K.SESSION_EVENT_KIND_ERROR]
        assert [e.text for e in long_error] == [RESTARTED]
        next_text = "".join(
            e.text
            for e in events
            if e.turn.endswith("/next") and e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK
        )
        assert next_text == "after restart\n"
        current = (await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))).agent_session
        assert current.state == session_pb2.AGENT_SESSION_STATE_IDLE and current.current_turn == ""


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
