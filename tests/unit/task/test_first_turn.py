"""A task's prompt is its first turn: sent to the first session's agent once that session is ready,
exactly once across redeliveries and a restart of the task service; materialized tasks send
nothing. With the real peers, the offline fake agent and real git."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from foundry.sandbox.v1 import agent_session_pb2, session_event_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc
from prometheus_client import REGISTRY

from services.platform.server.host import ServiceHost
from services.platform.settings import Settings
from services.sandbox.store.tables import turns
from services.task.app import build_deps
from services.task.store.tables import messages
from services.task.usecases import first_turn, provisioning, sessions
from services.task.usecases.deps import Deps
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, task_world, virtual_task

EV = session_event_pb2.SessionEventKind
PROMPT = "write NOTES.md: how to run tests"


def _deps(host: ServiceHost) -> Deps:
    """The use cases' dependencies bound to a running task host (to re-run its steps directly)."""
    assert host.runtime is not None
    return build_deps(host.runtime)


async def _settled(
    world: TaskWorld, name: str, stub: pb_grpc.TaskServiceAsyncStub | None = None
) -> task_pb2.Task:
    """The task once provisioned and idle (its first turn, if any, has ended)."""
    stub = stub or world.stub

    async def idle() -> task_pb2.Task:
        got = (await stub.GetTask(pb.GetTaskRequest(name=name))).task
        assert got.status == task_pb2.TASK_STATUS_IDLE, (got.status, got.status_message)
        assert got.sessions[0].status in (session_pb2.SESSION_STATUS_READY, session_pb2.SESSION_STATUS_IDLE)
        return got

    return await assert_eventually(idle, timeout=60)


async def _agent_session(
    world: TaskWorld, session: str, stub: pb_grpc.TaskServiceAsyncStub | None = None
) -> str:
    """The sandbox's agent session of task session `session`."""
    got = await (stub or world.stub).GetSession(pb.GetSessionRequest(name=session))
    assert got.session.sandbox_session
    return str(got.session.sandbox_session)


async def _transcript(world: TaskWorld, agent_session: str) -> list[session_event_pb2.SessionEvent]:
    listed = await world.sandbox_stub().ListSessionEvents(
        sb_pb2.ListSessionEventsRequest(parent=agent_session, page_size=1000)
    )
    return list(listed.session_events)


def _user_messages(events: list[session_event_pb2.SessionEvent]) -> list[str]:
    return [e.text for e in events if e.kind == EV.Value("SESSION_EVENT_KIND_USER_MESSAGE")]


def _completed_turns(events: list[session_event_pb2.SessionEvent]) -> list[str]:
    return [e.turn for e in events if e.kind == EV.Value("SESSION_EVENT_KIND_TURN_COMPLETED")]


async def _sandbox_turns(world: TaskWorld, session_id: str) -> list[tuple[str, str]]:
    """(turn id, state) of every turn the sandbox service recorded for the session."""
    host = world.mesh.hosts["sandbox"]
    assert host.db is not None
    query = sa.select(turns.c.turn_id, turns.c.state).where(turns.c.session_id == session_id)
    async with host.db.snapshot() as session:
        return sorted((r.turn_id, r.state) for r in (await session.execute(query)).all())


async def _task_messages(host: ServiceHost, session_id: str) -> list[tuple[str, str, str]]:
    """(id, text, state) of the task service's messages of the session, oldest first."""
    assert host.db is not None
    query = (
        sa.select(messages.c.id, messages.c.text, messages.c.state)
        .where(messages.c.session_id == session_id)
        .order_by(messages.c.created_at)
    )
    async with host.db.snapshot() as session:
        return [(r.id, r.text, r.state) for r in (await session.execute(query)).all()]


async def _send_and_settle(
    world: TaskWorld, task: task_pb2.Task, text: str, stub: pb_grpc.TaskServiceAsyncStub | None = None
) -> None:
    """Send `text` to the first session and wait until its turn is in the transcript and ended:
    the marker after which earlier (duplicate) work would have shown."""
    stub = stub or world.stub
    await stub.SendMessage(pb.SendMessageRequest(name=task.sessions[0].name, text=text))
    agent_session = await _agent_session(world, task.sessions[0].name, stub)

    async def ended() -> None:
        events = await _transcript(world, agent_session)
        assert text in _user_messages(events)
        assert events[-1].kind == EV.Value("SESSION_EVENT_KIND_TURN_COMPLETED")
        await _settled(world, task.name, stub)

    await assert_eventually(ended, timeout=30)


async def test_the_prompt_is_the_first_turn_and_its_work_lands_in_the_checkout(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        created = await world.create(PROMPT)
        assert created.prompt == PROMPT
        assert created.status == task_pb2.TASK_STATUS_INIT_ENQUEUE_PROVISION
        watch = world.watch(created.name)
        try:

            def wrote() -> None:
                assert watch.task.status == task_pb2.TASK_STATUS_IDLE, watch.task.status_message
                assert [c.path for c in watch.task.git_state.file_changes] == ["NOTES.md"]

            await assert_eventually(wrote, timeout=60)
            # The session went RUNNING for the prompt's turn, then IDLE: never READY-and-unused.
            assert any(t.status == task_pb2.TASK_STATUS_RUNNING for t in watch.history)
            assert watch.task.sessions[0].status == session_pb2.SESSION_STATUS_IDLE
            assert watch.task.sessions[0].used
        finally:
            await watch.close()
        task = await world.get(created.name)
        assert task.prompt == PROMPT
        assert (Path(task.sandbox.cwd) / "NOTES.md").read_text() == "how to run tests\n"
        agent_session = await _agent_session(world, task.sessions[0].name)
        events = await _transcript(world, agent_session)
        first = events[0]
        assert first.kind == EV.Value("SESSION_EVENT_KIND_USER_MESSAGE")
        assert first.text == PROMPT and first.payload["user"] == f"users/{world.alice.user_id}"
        turn_id = first_turn.first_message_id(task.sessions[0].name.rsplit("/", 1)[-1])
        assert first.turn == f"{agent_session}/turns/{turn_id}"
        # Then the agent's work on it: the edit and its answer, all in that turn, which completed.
        after = events[1:]
        assert EV.Value("SESSION_EVENT_KIND_TOOL_CALL") in [e.kind for e in after]
        answer = "".join(
            e.text for e in after if e.kind == EV.Value("SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK")
        )
        assert "wrote NOTES.md" in answer
        assert {e.turn for e in events} == {first.turn}
        assert _user_messages(events) == [PROMPT]
        assert _completed_turns(events) == [first.turn]


async def test_the_first_turn_is_sent_once_whatever_is_redelivered_or_re_run(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        created = await world.create(PROMPT)
        task = await _settled(world, created.name)
        session_id = task.sessions[0].name.rsplit("/", 1)[-1]
        turn_id = first_turn.first_message_id(session_id)
        host = world.mesh.hosts["task"]
        deps = _deps(host)
        assert await _task_messages(host, session_id) == [(turn_id, PROMPT, "completed")]

        # Every step that could send it again, re-run to its end: the last provisioning step, the
        # session's ensure step and the delivery of the first message.
        await provisioning.run_next_step(deps, task.name)
        await sessions.ensure_session(deps, task.sessions[0].name)
        await sessions.deliver_message(deps, f"{task.sessions[0].name}/messages/{turn_id}")
        # A delivery redelivered before it could record DELIVERED asks the sandbox again with the
        # same turn id (what deliver_message sends): it answers with the turn that already ran.
        agent_session = await _agent_session(world, task.sessions[0].name)
        again = await deps.sandbox.prompt(
            sb_pb2.PromptSessionRequest(
                name=agent_session, turn_id=turn_id, text=PROMPT, user=f"users/{world.alice.user_id}"
            )
        )
        assert again.turn.name == f"{agent_session}/turns/{turn_id}"
        assert again.turn.state == agent_session_pb2.TURN_STATE_COMPLETED
        assert await _task_messages(host, session_id) == [(turn_id, PROMPT, "completed")]

        await _send_and_settle(world, task, "marker")
        events = await _transcript(world, await _agent_session(world, task.sessions[0].name))
        assert _user_messages(events) == [PROMPT, "marker"]
        assert len(_completed_turns(events)) == 2
        turn_ids = [t for t, _ in await _sandbox_turns(world, session_id)]
        assert turn_id in turn_ids and len(turn_ids) == 2
        assert (Path(task.sandbox.cwd) / "NOTES.md").read_text() == "how to run tests\n"


async def test_a_restart_between_session_ready_and_the_send_sends_it_once(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The first task process stops consuming (as at a drain), so the provisioning steps run here
    one by one; the last one makes the session ready and queues the first message. The process
    then stops before anything sent it, and a new one (same database and broker) sends it once."""
    from services.embedded import service_wiring

    async with task_world(fast_settings(), tmp_path) as world:
        old = world.mesh.hosts["task"]
        assert old.runtime is not None
        await old.runtime.worker.stop_consuming()
        created = await world.create(PROMPT)
        deps = _deps(old)
        for _ in range(10):
            got = await world.get(created.name)
            if got.provisioning.stage == task_pb2.PROVISIONING_STAGE_READY:
                break
            await provisioning.run_next_step(deps, created.name)
        task = await world.get(created.name)
        assert task.provisioning.stage == task_pb2.PROVISIONING_STAGE_READY
        session_id = task.sessions[0].name.rsplit("/", 1)[-1]
        turn_id = first_turn.first_message_id(session_id)
        # Ready for the agent and queued, but not sent: the sandbox has no turn and no transcript.
        assert task.sessions[0].status == session_pb2.SESSION_STATUS_RUNNING
        assert await _task_messages(old, session_id) == [(turn_id, PROMPT, "queued")]
        assert await _sandbox_turns(world, session_id) == []
        assert await _transcript(world, await _agent_session(world, task.sessions[0].name)) == []

        await old.begin_drain()
        await old.wait_idle(5)
        await old.close()
        new = ServiceHost(world.mesh.settings, "task", world.mesh.broker, service_wiring("task"), port=0)
        world.mesh.hosts["task"] = new  # the mesh drains and closes it at the end
        await new.start()
        stub = pb_grpc.TaskServiceStub(world.mesh.channel("task", world.alice))

        settled = await _settled(world, task.name, stub)
        assert settled.sessions[0].status == session_pb2.SESSION_STATUS_IDLE
        await _send_and_settle(world, task, "marker", stub)
        events = await _transcript(world, await _agent_session(world, task.sessions[0].name, stub))
        assert _user_messages(events) == [PROMPT, "marker"]
        assert len(_completed_turns(events)) == 2
        assert [t for t, _ in await _sandbox_turns(world, session_id)].count(turn_id) == 1
        assert len(await _sandbox_turns(world, session_id)) == 2
        assert (Path(task.sandbox.cwd) / "NOTES.md").read_text() == "how to run tests\n"


async def test_a_materialized_task_sends_no_prompt(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Its prompt is made up from the pull request (here a title the fake agent would act on)."""
    async with task_world(fast_settings(), tmp_path) as world:
        title = "write PR.md: must not be written"
        name = await virtual_task(world, 7, "feature/existing", title=title)
        made = (await world.stub.MaterializeTask(pb.MaterializeTaskRequest(name=name))).task
        assert made.prompt == title

        async def ready() -> task_pb2.Task:
            got = await world.get(name)
            assert got.status == task_pb2.TASK_STATUS_IDLE, (got.status, got.status_message)
            assert got.sessions[0].status == session_pb2.SESSION_STATUS_READY
            return got

        task = await assert_eventually(ready, timeout=60)
        session_id = task.sessions[0].name.rsplit("/", 1)[-1]
        # Nothing was held for the session when it became ready, so nothing could be released.
        assert await _task_messages(world.mesh.hosts["task"], session_id) == []
        await _send_and_settle(world, task, "marker")
        events = await _transcript(world, await _agent_session(world, task.sessions[0].name))
        assert _user_messages(events) == ["marker"]
        assert len(await _sandbox_turns(world, session_id)) == 1
        assert not (Path(task.sandbox.cwd) / "PR.md").exists()
        assert (Path(task.sandbox.cwd) / "feature.txt").exists()  # on the pull request's branch


def _first_output_observed() -> tuple[float, float]:
    """(count, sum) of `foundry_task_first_output_seconds` over every agent label."""
    count = total = 0.0
    for family in REGISTRY.collect():
        if family.name == "foundry_task_first_output_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    count += sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
    return count, total


async def test_the_time_from_create_to_the_agents_first_output_is_observed_once_per_task(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """`foundry_task_first_output_seconds` (issue #17's time to first agent output per task): one
    observation when the prompt's turn ends, equal to the agent's first output event (message or
    thought chunk, plan, tool call) in the transcript minus the task's create time; a later message
    observes nothing."""
    async with task_world(fast_settings(), tmp_path) as world:
        count_before, sum_before = _first_output_observed()
        created = await world.create(PROMPT)
        task = await _settled(world, created.name)
        events = await _transcript(world, await _agent_session(world, task.sessions[0].name))
        answers = [
            f"SESSION_EVENT_KIND_{k}"
            for k in ("AGENT_MESSAGE_CHUNK", "AGENT_THOUGHT_CHUNK", "PLAN", "TOOL_CALL")
        ]
        first = next(e for e in events if e.kind in [EV.Value(k) for k in answers])
        expected = (first.create_time.ToDatetime() - created.create_time.ToDatetime()).total_seconds()
        assert expected > 0

        def observed() -> None:
            count, total = _first_output_observed()
            assert count == count_before + 1
            assert abs((total - sum_before) - expected) < 0.002, (total - sum_before, expected)

        await assert_eventually(observed, timeout=10)
        await _send_and_settle(world, task, "and one more thing")
        assert _first_output_observed()[0] == count_before + 1  # the marker turn ended: nothing more
