"""kill -9 of the sandbox service mid-flight on the mesh shape (issue #16, item 7): nothing lost, no
double effect, for provisioning and for agent work with side effects.

One process per service (organization, github_data, sandbox, task) on a private PostgreSQL and
RabbitMQ; CreateSandbox takes CREATE_DELAY s. When the sandbox replica is SIGKILLed:

- task A is ready and its agent is in the middle of a turn (a shell command that appends a line to
  a file in the checkout, then sleeps);
- task B's provisioning is at its create-sandbox step (the task service's call is in flight);
- while it is down, a second message is sent to A and task C is created.

The replica is then started again on the same ports and data. Asserted:
- the turn the kill cut ends with the restart notice, its command is not run again (its line is
  in the file once), and its agent (bubblewrap, `--die-with-parent`) died with the service: the
  command's `sleep` was not left running;
- the message sent while the service was down reaches the agent once (its line once; the
  transcript lists every user message once, in order);
- B's cut CreateSandbox is finished by the restarted replica, and B and C are provisioned, each
  with one sandbox and every provisioning stage done once; their prompt reaches their agent once.

(tests/e2e/test_kill_sandbox.py kills the same service mid-turn through the gateway and checks what
the user sees: the notice, the queued message, the resumed agent session.)

Figures are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc
from foundry.sandbox.v1 import session_event_pb2
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as task_pb
from foundry.task.v1 import task_service_pb2_grpc as task_grpc

from services.sandbox.usecases.turns import RESTARTED
from services.task.domain.rules import STEPS
from tests.e2e.procs.cluster import Cluster
from tests.e2e.procs.world import World, create_request, make_world, task_stub
from tests.helpers import assert_eventually, make_pg_database

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CREATE_DELAY = 2.0
DOWN_AT_LEAST = 2.0
READY = task_pb2.PROVISIONING_STAGE_READY
IDLE = task_pb2.TASK_STATUS_IDLE
SESSION_IDLE = session_pb2.SESSION_STATUS_IDLE
USER_MESSAGE = session_event_pb2.SESSION_EVENT_KIND_USER_MESSAGE
STAGES = sorted({step.done_stage for step in STEPS.values()})


@pytest.fixture
async def cluster(tmp_path: Path, amqp_url: str) -> AsyncIterator[Cluster]:
    async with make_pg_database() as db_url:
        mesh = Cluster(
            tmp_path,
            db_url,
            amqp_url,
            replicas={"organization": 1, "github_data": 1, "sandbox": 1, "task": 1},
            service_env={"sandbox": {"FOUNDRY_SANDBOX__CREATE_DELAY_SECONDS": str(CREATE_DELAY)}},
        )
        try:
            await mesh.start()
            yield mesh
        except BaseException:
            print(mesh.dump_logs())
            raise
        finally:
            await mesh.close()


def _task_events(cluster: Cluster, event: str, task: str) -> list[dict[str, object]]:
    return [e for e in cluster["task-0"].events() if e.get("event") == event and e.get("task") == task]


async def _until_idle(stub: task_grpc.TaskServiceAsyncStub, name: str, timeout: float = 60) -> task_pb2.Task:
    async def idle() -> task_pb2.Task:
        task = (await stub.GetTask(task_pb.GetTaskRequest(name=name))).task
        assert task.provisioning.stage == READY, task.provisioning
        assert task.status == IDLE, task_pb2.TaskStatus.Name(task.status)
        (tab,) = task.sessions
        assert tab.status == SESSION_IDLE, session_pb2.SessionStatus.Name(tab.status)
        return task

    return await assert_eventually(idle, timeout=timeout, interval=0.2)


def _lines(root: Path, marker: str) -> list[str]:
    """Lines of every `<marker>.log` file an agent wrote under the sandboxes' directory."""
    return [line for f in sorted(root.rglob(f"{marker}.log")) for line in f.read_text().splitlines()]


def _running_with(marker: str) -> list[int]:
    """Pids of processes whose command line holds `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                pids.append(int(proc.name))
    return pids


def _eq(actual: object, expected: object) -> None:
    assert actual == expected, actual


def _nonempty(items: list[dict[str, object]]) -> None:
    assert items


async def test_sandbox_killed_mid_turn_and_mid_provisioning_loses_nothing_and_runs_nothing_twice(
    cluster: Cluster, tmp_path: Path
) -> None:
    world: World = await make_world(cluster, tmp_path)
    tasks = task_stub(cluster, world)
    sandboxes = sb_grpc.SandboxServiceStub(cluster.channel("sandbox", world.user))
    replica = cluster["sandbox-0"]
    data = tmp_path / "data"
    tag = uuid.uuid4().hex[:8]
    hold = f"{400 + int(tag[:4], 16) % 500}.{int(tag[4:], 16) % 1000:03d}"  # a `sleep` argument to find

    # -- A: ready, then a turn in flight -----------------------------------------------------------
    prompt_a = f"prompt of A {tag}"
    a = (await tasks.CreateTask(create_request(world, prompt_a))).task.name
    (tab,) = (await _until_idle(tasks, a)).sessions
    first = f"$ echo first >> {tag}.log; sleep {hold}"
    await tasks.SendMessage(
        task_pb.SendMessageRequest(name=tab.name, text=first, request_id=str(uuid.uuid4()))
    )
    await assert_eventually(lambda: _eq(_lines(data, tag), ["first"]), timeout=30, interval=0.1)
    assert _running_with(hold), "the turn's command is not running"

    # -- B: its create-sandbox step in flight ---------------------------------------------------
    prompt_b = f"prompt of B {tag}"
    b = (await tasks.CreateTask(create_request(world, prompt_b))).task.name
    await assert_eventually(
        lambda: _nonempty(_task_events(cluster, "provision_step_claimed", b)), timeout=20, interval=0.05
    )

    # -- kill -9 ---------------------------------------------------------------------------------
    assert replica.proc is not None
    replica.proc.kill()
    killed = time.monotonic()
    assert await replica.wait_exit(10) == -9
    b_stage_at_kill = (await tasks.GetTask(task_pb.GetTaskRequest(name=b))).task.provisioning.stage

    # -- while it is down: a message to A, a new task C -----------------------------------------------
    second = f"$ echo second >> {tag}.log"
    await tasks.SendMessage(
        task_pb.SendMessageRequest(name=tab.name, text=second, request_id=str(uuid.uuid4()))
    )
    prompt_c = f"prompt of C {tag}"
    c = (await tasks.CreateTask(create_request(world, prompt_c))).task.name
    await asyncio.sleep(max(0.0, DOWN_AT_LEAST - (time.monotonic() - killed)))  # down a while, on purpose
    orphans = _running_with(hold)

    # -- restart ---------------------------------------------------------------------------------
    spawned = time.monotonic()
    replica.start()
    await replica.wait_ready()
    ready = time.monotonic()
    await assert_eventually(lambda: _eq(_lines(data, tag), ["first", "second"]), timeout=60, interval=0.1)
    second_at = time.monotonic()
    done = {name: await _until_idle(tasks, name) for name in (a, b, c)}
    all_idle = time.monotonic()

    # -- nothing lost, nothing twice --------------------------------------------------------------
    assert orphans == [], f"the killed service's agent outlived it: {orphans}"
    assert _lines(data, tag) == ["first", "second"]  # the cut turn was not run again

    async def user_messages(task: task_pb2.Task) -> list[str]:
        (tab,) = task.sessions
        session = (await tasks.GetSession(task_pb.GetSessionRequest(name=tab.name))).session
        listed = await sandboxes.ListSessionEvents(
            sb_pb.ListSessionEventsRequest(parent=session.sandbox_session, page_size=1000)
        )
        if task.name == a:
            assert any(RESTARTED in e.text for e in listed.session_events), "no notice of the cut turn"
        return [e.text for e in listed.session_events if e.kind == USER_MESSAGE]

    assert await user_messages(done[a]) == [prompt_a, first, second]
    assert await user_messages(done[b]) == [prompt_b]
    assert await user_messages(done[c]) == [prompt_c]

    listed = await sandboxes.ListSandboxes(
        sb_pb.ListSandboxesRequest(parent=world.organization, show_destroyed=True)
    )
    per_task = Counter(s.task for s in listed.sandboxes)
    assert {name: per_task[name] for name in (a, b, c)} == {a: 1, b: 1, c: 1}, per_task
    for name in (a, b, c):
        stages = Counter(str(e["stage"]) for e in _task_events(cluster, "provision_stage_done", name))
        assert sorted(stages) == STAGES and set(stages.values()) == {1}, (name, stages)
    # B's CreateSandbox was cut: the killed run never finished it, the restarted one did (once).
    created = {
        run: [e["sandbox"] for e in replica.events(run) if e.get("event") == "sandbox_created"]
        for run in (1, 2)
    }
    assert done[b].sandbox.name not in created[1] and created[2].count(done[b].sandbox.name) == 1, created

    print(
        f"\nB's provisioning stage at the kill: {task_pb2.ProvisioningStage.Name(b_stage_at_kill)}"
        f"\nkill -9 -> restart spawned: {spawned - killed:.1f} s (down on purpose >= {DOWN_AT_LEAST} s)"
        f"\nspawn -> ready: {ready - spawned:.1f} s"
        f"\nready -> the message sent while down has run: {second_at - ready:.1f} s"
        f"\nready -> A, B, C all idle: {all_idle - ready:.1f} s"
    )
