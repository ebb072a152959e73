"""StopSession, CloseSession and ChangeModel only record and enqueue: they answer while the sandbox
service is down, their state is on the Session at once, and the worker carries them to the real
sandbox service (after it is back, from the durable rows) or records why it could not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from foundry.sandbox.v1 import agent_session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as pb
from prometheus_client import REGISTRY

from services.platform.messaging.broker import queue_name
from services.platform.server.host import ServiceHost
from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, task_world

AGENT_STATE = agent_session_pb2.AgentSessionState


async def _ready(world: TaskWorld) -> tuple[task_pb2.Task, session_pb2.Session]:
    """A provisioned task and its first session, IDLE with its agent session."""
    task = await world.create("say hello")

    async def ready() -> tuple[task_pb2.Task, session_pb2.Session]:
        got = await world.get(task.name)
        assert got.status == task_pb2.TASK_STATUS_IDLE, got.status_message
        first = await _session(world, got.sessions[0].name)
        assert first.status == session_pb2.SESSION_STATUS_IDLE and first.sandbox_session, first
        return got, first

    return await assert_eventually(ready, timeout=30)


async def _session(world: TaskWorld, name: str) -> session_pb2.Session:
    return (await world.stub.GetSession(pb.GetSessionRequest(name=name))).session


async def _agent_session(world: TaskWorld, name: str) -> agent_session_pb2.AgentSession:
    got = await world.sandbox_stub().GetAgentSession(sb_pb2.GetAgentSessionRequest(name=name))
    return got.agent_session


def _dead_letters(world: TaskWorld) -> float:
    """Session-command work items the task service dead-lettered so far (its Worker's counter)."""
    queue = queue_name(world.mesh.settings.name_prefix, "task", "session_command")
    labels = {"service": "task", "queue": queue, "outcome": "dead_letter"}
    return REGISTRY.get_sample_value("foundry_messages_handled_total", labels) or 0.0


def _dead_lettered(world: TaskWorld, count: float) -> None:
    assert _dead_letters(world) >= count, _dead_letters(world)


async def _restart_sandbox(world: TaskWorld, *, down: Callable[[], object]) -> None:
    """Stop the sandbox service (no grace), run `down()` while it is down, start it again on its port."""
    from services.embedded import service_wiring

    mesh = world.mesh
    old = mesh.hosts["sandbox"]
    await old.begin_drain()
    await old.wait_idle(0)
    await old.close()
    await down()  # type: ignore[misc]
    host = ServiceHost(mesh.settings, "sandbox", mesh.broker, service_wiring("sandbox"))
    mesh.hosts["sandbox"] = host
    await host.start()


async def test_change_model_and_close_answer_while_the_sandbox_is_down_and_apply_when_it_is_back(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task, first = await _ready(world)
        second = (await world.stub.CreateSession(pb.CreateSessionRequest(parent=task.name))).session

        async def second_ready() -> session_pb2.Session:
            got = await _session(world, second.name)
            assert got.status == session_pb2.SESSION_STATUS_READY and got.sandbox_session, got
            return got

        second = await assert_eventually(second_ready, timeout=15)
        assert first.agent_model == first.model  # nothing pending

        before = _dead_letters(world)

        async def while_down() -> None:
            # Both RPCs used to call the sandbox first (and failed UNAVAILABLE): now they record.
            changed = await world.stub.ChangeModel(
                pb.ChangeModelRequest(name=first.name, model="fast"), timeout=5
            )
            assert changed.session.model == "fast"
            assert changed.session.agent_model == first.agent_model  # not applied yet
            closed = await world.stub.CloseSession(pb.CloseSessionRequest(name=second.name), timeout=5)
            assert closed.session.status == session_pb2.SESSION_STATUS_CLOSED
            # With two attempts 50 ms apart, both work items are dead-lettered while it is down:
            # from here on only the durable session rows can bring the commands back.
            await assert_eventually(lambda: _dead_lettered(world, before + 2), timeout=20, interval=0.1)
            got = await _session(world, first.name)
            assert (got.model, got.agent_model) == ("fast", first.agent_model)

        await _restart_sandbox(world, down=while_down)

        # The stall sweep finds both commands pending on the session rows and enqueues them again.
        async def applied() -> None:
            got = await _session(world, first.name)
            assert got.agent_model == "fast" and got.model == "fast", got
            assert (await _agent_session(world, first.sandbox_session)).model == "fast"
            agent = await _agent_session(world, second.sandbox_session)
            assert agent.state == AGENT_STATE.AGENT_SESSION_STATE_CLOSED, agent

        await assert_eventually(applied, timeout=30, interval=0.2)


async def test_stop_session_is_recorded_and_the_running_turn_ends_cancelled(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        _, first = await _ready(world)
        await world.stub.SendMessage(pb.SendMessageRequest(name=first.name, text="$ sleep 120"))

        async def running() -> None:
            agent = await _agent_session(world, first.sandbox_session)
            assert agent.current_turn, agent  # the sandbox is running the command

        await assert_eventually(running, timeout=15)
        stopped = (await world.stub.StopSession(pb.StopSessionRequest(name=first.name))).session
        assert stopped.status == session_pb2.SESSION_STATUS_RUNNING  # until the turn reports its end
        assert stopped.HasField("stop_time")

        async def idle() -> session_pb2.Session:
            got = await _session(world, first.name)
            assert got.status == session_pb2.SESSION_STATUS_IDLE, got
            return got

        got = await assert_eventually(idle, timeout=20, interval=0.1)  # not the command's 120 s
        assert not got.HasField("stop_time") and not got.error_message, got
        assert not (await _agent_session(world, first.sandbox_session)).current_turn
        # Stopping an idle session changes nothing.
        again = (await world.stub.StopSession(pb.StopSessionRequest(name=first.name))).session
        assert again.update_time == got.update_time and not again.HasField("stop_time")


async def test_a_model_the_sandbox_refuses_is_rolled_back_with_the_reason(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        _, first = await _ready(world)
        # The agent session ends underneath the task (closed at the sandbox service directly).
        await world.sandbox_as_task_service().CloseAgentSession(
            sb_pb2.CloseAgentSessionRequest(name=first.sandbox_session)
        )
        changed = (await world.stub.ChangeModel(pb.ChangeModelRequest(name=first.name, model="fast"))).session
        assert changed.model == "fast" and not changed.error_message

        async def rolled_back() -> session_pb2.Session:
            got = await _session(world, first.name)
            assert got.model == first.model and got.error_message, got
            return got

        got = await assert_eventually(rolled_back, timeout=15, interval=0.1)
        assert "changing the model to fast failed" in got.error_message
        assert "closed" in got.error_message
        assert got.agent_model == first.agent_model
        assert (await _agent_session(world, first.sandbox_session)).model == first.agent_model
