"""ListAgents says which agents can run here (command found, model API credentials present) and
their models; a session's model reaches the agent (ACP `session/set_config_option` on its `model`
option) at start and from the next turn after a change; a model the agent does not offer is refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.sandbox.v1 import agent_session_pb2 as session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from services.platform.settings import Settings
from tests.helpers.mesh import running
from tests.unit.sandbox.conftest import prepared_sandbox, sandbox_stub
from tests.unit.sandbox.test_sessions import K, prompt, watch_until_turn_ends

KEY = "FOUNDRY_TEST_MODEL_API_KEY"
AGENTS = {"fake": "foundry-fake-agent", "claude": "foundry-fake-agent", "ghost": "foundry-no-such-agent-xyz"}


def _settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(
        sandbox={
            "agents": AGENTS,
            "agent_models": {"fake": ["standard", "fast"], "claude": ["standard", "fast"]},
            "agent_credentials": {"claude": [KEY, "FOUNDRY_TEST_OTHER_KEY"]},
        }
    )


async def _said(stub: pb_grpc.SandboxServiceAsyncStub, session: str, turn: str, turns: int) -> str:
    """The agent's answer to the prompt `model` sent as turn `turn` (the `turns`-th turn)."""
    await prompt(stub, session, turn, "model")
    _, events = await watch_until_turn_ends(stub, session, turns=turns)
    chunks = [e.text for e in events if e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK]
    return chunks[-1]


async def test_list_agents_says_which_agents_can_run_here_why_not_and_their_models(
    settings_factory: Callable[..., Settings], origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY, raising=False)
    monkeypatch.delenv("FOUNDRY_TEST_OTHER_KEY", raising=False)
    async with running(_settings(settings_factory), ["sandbox"]) as mesh, sandbox_stub(mesh) as stub:
        listed = {a.name: a for a in (await stub.ListAgents(pb.ListAgentsRequest())).agents}
        fake, claude, ghost = listed["agents/fake"], listed["agents/claude"], listed["agents/ghost"]
        assert fake.available and fake.installed and fake.credentials_present and not fake.unavailable_reason
        assert [m.id for m in fake.models] == ["standard", "fast"] and fake.default_model == "standard"
        assert fake.default and list(fake.credential_variables) == []
        assert claude.installed and not claude.credentials_present and not claude.available
        assert list(claude.credential_variables) == [KEY, "FOUNDRY_TEST_OTHER_KEY"]
        assert (
            claude.unavailable_reason
            == f"none of {KEY}, FOUNDRY_TEST_OTHER_KEY is set for the sandbox service"
        )
        assert not ghost.installed and not ghost.available and not ghost.models and not ghost.default_model
        assert ghost.unavailable_reason == "command 'foundry-no-such-agent-xyz' is not installed"

        # Without its key the agent is not started: the session fails with the reason, in words.
        sandbox = await prepared_sandbox(stub, origin)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.StartAgentSession(
                pb.StartAgentSessionRequest(parent=sandbox.name, session_id="c1", agent="agents/claude")
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"none of {KEY}" in (refused.value.details() or "")
        failed = await stub.GetAgentSession(pb.GetAgentSessionRequest(name=f"{sandbox.name}/sessions/c1"))
        assert failed.agent_session.state == session_pb2.AGENT_SESSION_STATE_ERROR

        # Once the operator sets the key, the same agent is available and its session starts.
        monkeypatch.setenv(KEY, "sk-test")
        again = {a.name: a for a in (await stub.ListAgents(pb.ListAgentsRequest())).agents}["agents/claude"]
        assert again.available and again.credentials_present and not again.unavailable_reason
        started = await stub.StartAgentSession(
            pb.StartAgentSessionRequest(parent=sandbox.name, session_id="c1", agent="agents/claude")
        )
        assert started.agent_session.state == session_pb2.AGENT_SESSION_STATE_IDLE


async def test_the_model_reaches_the_agent_and_a_change_applies_from_the_next_turn(
    settings_factory: Callable[..., Settings], origin: Path
) -> None:
    async with running(_settings(settings_factory), ["sandbox"]) as mesh, sandbox_stub(mesh) as stub:
        sandbox = await prepared_sandbox(stub, origin)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.StartAgentSession(
                pb.StartAgentSessionRequest(parent=sandbox.name, session_id="s1", model="opus")
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "agents/fake offers the models standard, fast, not 'opus'" in (bad.value.details() or "")

        started = await stub.StartAgentSession(
            pb.StartAgentSessionRequest(parent=sandbox.name, session_id="s1", model="fast")
        )
        session = started.agent_session.name
        assert started.agent_session.model == "fast"
        assert await _said(stub, session, "t1", 1) == "model: fast"

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetAgentSessionModel(pb.SetAgentSessionModelRequest(name=session, model="opus"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        unchanged = await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))
        assert unchanged.agent_session.model == "fast"

        await stub.SetAgentSessionModel(pb.SetAgentSessionModelRequest(name=session, model="standard"))
        assert await _said(stub, session, "t2", 2) == "model: standard"

        # A session without a model keeps the agent's own default.
        other = await stub.StartAgentSession(
            pb.StartAgentSessionRequest(parent=sandbox.name, session_id="s2")
        )
        assert other.agent_session.model == ""
        assert await _said(stub, other.agent_session.name, "t1", 1) == "model: standard"
