"""CreateTask and CreateSession check a named agent against the real sandbox service's ListAgents:
an agent this mesh does not have is INVALID_ARGUMENT (naming the agents it has), a configured agent
whose command is not installed is FAILED_PRECONDITION `AGENT_NOT_INSTALLED`; both change nothing.
With the sandbox service down, a task is still created (unchecked) at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, task_world
from tests.unit.task.test_session_commands import _ready, _session

AGENTS = {"fake": "foundry-fake-agent", "ghost": "foundry-no-such-agent-xyz"}


async def _create(world: TaskWorld, agent: str) -> task_pb2.Task:
    request = pb.CreateTaskRequest(
        parent=world.organization,
        task=task_pb2.Task(repository=world.repository, prompt="say hello"),
        agent=agent,
    )
    return (await world.stub.CreateTask(request)).task


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_an_unknown_or_uninstalled_agent_is_refused_at_create_with_a_clear_error(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(sandbox={"agents": AGENTS}), tmp_path) as world:
        unknown = await _refused(_create(world, "agents/nope"))
        assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "agents/nope is not an agent of this mesh (its agents: agents/fake, agents/ghost)" in (
            unknown.details() or ""
        )
        missing = await _refused(_create(world, "agents/ghost"))
        assert missing.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'foundry-no-such-agent-xyz' is not installed" in (missing.details() or "")
        listed = await world.stub.ListTasks(pb.ListTasksRequest(parent=world.organization))
        assert not listed.tasks  # nothing was created

        task, _ = await _ready(world)  # the default agent
        chosen = await _create(world, "agents/fake")
        assert chosen.sessions[0].agent == "agents/fake"

        for agent, code in (("agents/nope", "INVALID_ARGUMENT"), ("agents/ghost", "FAILED_PRECONDITION")):
            request = pb.CreateSessionRequest(parent=task.name)
            request.session.agent = agent
            refused = await _refused(world.stub.CreateSession(request))
            assert refused.code().name == code, (agent, refused.details())
        got = await world.get(task.name)
        assert len(got.sessions) == 1


async def test_with_the_sandbox_service_down_a_named_agent_is_accepted_unchecked(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path, sandbox=False) as world:
        started = time.perf_counter()
        task = await _create(world, "agents/fake")
        assert time.perf_counter() - started < 3.0 and task.name


async def test_a_model_the_agent_does_not_offer_or_an_agent_without_its_key_is_refused_and_changes_nothing(
    fast_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FOUNDRY_TEST_CLAUDE_KEY", raising=False)
    settings = fast_settings(
        sandbox={
            "agents": {"fake": "foundry-fake-agent", "claude": "foundry-fake-agent"},
            "agent_credentials": {"claude": ["FOUNDRY_TEST_CLAUDE_KEY"]},
        }
    )
    async with task_world(settings, tmp_path) as world:
        request = pb.CreateTaskRequest(
            parent=world.organization,
            task=task_pb2.Task(repository=world.repository, prompt="say hello"),
            model="opus",
        )
        bad_model = await _refused(world.stub.CreateTask(request))
        assert bad_model.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "agents/fake offers the models standard, fast, not 'opus'" in (bad_model.details() or "")
        no_key = await _refused(_create(world, "agents/claude"))
        assert no_key.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "none of FOUNDRY_TEST_CLAUDE_KEY is set" in (no_key.details() or "")
        assert not (await world.stub.ListTasks(pb.ListTasksRequest(parent=world.organization))).tasks

        task, first = await _ready(world)
        create_session = pb.CreateSessionRequest(parent=task.name)
        create_session.session.model = "opus"  # checked against the agent the session inherits
        refused = await _refused(world.stub.CreateSession(create_session))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "session.model" in (
            refused.details() or ""
        )
        changed = await _refused(world.stub.ChangeModel(pb.ChangeModelRequest(name=first.name, model="opus")))
        assert changed.code() == grpc.StatusCode.INVALID_ARGUMENT
        got = await world.get(task.name)
        assert len(got.sessions) == 1 and got.sessions[0].model == first.model

        # A model it offers is accepted and reaches the agent.
        request = pb.CreateTaskRequest(
            parent=world.organization,
            task=task_pb2.Task(repository=world.repository, prompt="model"),
            model="fast",
        )
        created = (await world.stub.CreateTask(request)).task
        assert created.sessions[0].model == "fast"

        async def answered() -> None:  # the prompt `model` is the first turn: the agent names its model
            session = await _session(world, created.sessions[0].name)
            assert session.sandbox_session
            listed = await world.sandbox_stub().ListSessionEvents(
                sb_pb2.ListSessionEventsRequest(parent=session.sandbox_session)
            )
            assert "model: fast" in [e.text for e in listed.session_events], listed

        await assert_eventually(answered, timeout=30, interval=0.2)
