"""Two sandbox-service replicas, as the Kubernetes StatefulSet runs them (each its own address and
its own sandbox volume), behind two task replicas and a gateway, on PostgreSQL + RabbitMQ.

Tasks land on both replicas; each sandbox's files exist only on its owner's volume; provisioning,
the first turn (the task's prompt), and processes started and read through the gateway all reach
the owner whichever replica a call first lands on; a direct call to the other replica gets a clear
FAILED_PRECONDITION naming the owner and changes nothing.
"""

from __future__ import annotations

import base64
import functools
import uuid
from pathlib import Path

import aio_pika
import grpc
import pytest
from foundry.sandbox.v1 import events_pb2, session_event_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as task_pb

from services.platform.routing import owner_of
from services.sandbox.store.sandboxes import Queues
from tests.e2e.procs.cluster import Cluster
from tests.e2e.procs.world import create_request, make_world, task_stub
from tests.e2e.test_gateway_mesh import BrowserClient
from tests.helpers import assert_eventually, make_pg_database

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

EV = session_event_pb2.SessionEventKind
TASKS = 4  # created at first; more follow one at a time until both replicas own a sandbox (below)


async def test_tasks_run_on_both_sandbox_replicas_and_every_call_reaches_the_owner(
    tmp_path: Path, amqp_url: str
) -> None:
    async with make_pg_database() as db_url:
        cluster = Cluster(
            tmp_path,
            db_url,
            amqp_url,
            replicas={"organization": 1, "github_data": 1, "sandbox": 2, "task": 2},
            gateway=True,
        )
        try:
            await cluster.start()
            await _scenario(cluster, tmp_path, amqp_url)
        except BaseException:
            print(cluster.dump_logs())
            raise
        finally:
            await cluster.close()


async def _scenario(cluster: Cluster, root: Path, amqp_url: str) -> None:
    world = await make_world(cluster, root)
    tasks = task_stub(cluster, world)
    sandboxes = sb_grpc.SandboxServiceStub(cluster.channel("sandbox", world.user))

    async def idle(name: str) -> task_pb2.Task:
        task = (await tasks.GetTask(task_pb.GetTaskRequest(name=name))).task
        assert task.status == task_pb2.TASK_STATUS_IDLE, (task.status, task.status_message)
        assert task.sessions[0].status in (session_pb2.SESSION_STATUS_READY, session_pb2.SESSION_STATUS_IDLE)
        return task

    async def create(count: int) -> list[task_pb2.Task]:
        names = [
            (
                await tasks.CreateTask(create_request(world, prompt=f"write notes {uuid.uuid4().hex[:6]}"))
            ).task.name
            for _ in range(count)
        ]
        return [await assert_eventually(functools.partial(idle, n), timeout=90, interval=0.3) for n in names]

    replicas = {r.address for r in cluster.members["sandbox"]}
    owners: dict[str, str] = {}
    settled: list[task_pb2.Task] = []
    # A new sandbox lives where its CreateSandbox landed (round robin over the replicas the task
    # replica's channel has connected): right after start-up one replica may take them all. The
    # test needs both, so one more task at a time, until both own one (at most TASKS more).
    for count in (TASKS, *[1] * TASKS):
        for task in await create(count):
            sandbox = (await sandboxes.GetSandbox(sb_pb.GetSandboxRequest(name=task.sandbox.name))).sandbox
            owners[sandbox.name] = sandbox.replica
            settled.append(task)
            # The files live on the owner's volume only.
            index = next(r.index for r in cluster.members["sandbox"] if r.address == sandbox.replica)
            volumes = {r.index: root / "data" / f"sandboxes-{r.index}" for r in cluster.members["sandbox"]}
            held = {i: (v / sandbox.provider_sandbox_id).is_dir() for i, v in volumes.items()}
            assert held == {i: i == index for i in volumes}, (sandbox.name, held)
        if set(owners.values()) == replicas:
            break
    assert set(owners.values()) == replicas, owners

    # The prompt ran as the first turn on every sandbox, wherever it lives.
    for task in settled:
        session = (await tasks.GetSession(task_pb.GetSessionRequest(name=task.sessions[0].name))).session

        async def first_turn(task: task_pb2.Task = task, parent: str = session.sandbox_session) -> None:
            listed = await sandboxes.ListSessionEvents(sb_pb.ListSessionEventsRequest(parent=parent))
            events = listed.session_events
            user = [e.text for e in events if e.kind == EV.Value("SESSION_EVENT_KIND_USER_MESSAGE")]
            assert user == [task.prompt], (task.name, user)
            assert EV.Value("SESSION_EVENT_KIND_TURN_COMPLETED") in [e.kind for e in events], events

        await assert_eventually(first_turn, timeout=30, interval=0.3)

    # A direct call to the replica that does not own the sandbox: refused, naming the owner.
    some_sandbox, owner = next(iter(owners.items()))
    other = next(r for r in cluster.members["sandbox"] if r.address != owner)
    direct = sb_grpc.SandboxServiceStub(cluster.direct(other.label, world.user))
    request = sb_pb.CreateProcessRequest(parent=some_sandbox, request_id=str(uuid.uuid4()))
    request.process.command = "touch"
    request.process.args.append("should-not-exist")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await direct.CreateProcess(request)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert owner_of(refused.value) == owner, refused.value.details()
    assert owner in (refused.value.details() or ""), refused.value.details()
    holder = next(r for r in cluster.members["sandbox"] if r.address == owner)
    at_owner = sb_grpc.SandboxServiceStub(cluster.direct(holder.label, world.user))
    listed = await at_owner.ListProcesses(sb_pb.ListProcessesRequest(parent=some_sandbox))
    assert not listed.processes, listed

    # Work for that sandbox put on the other replica's turn queue is refused there, not claimed.
    session = (await tasks.GetSession(task_pb.GetSessionRequest(name=settled[0].sessions[0].name))).session
    foreign = next(r for r in cluster.members["sandbox"] if r.address != owners[settled[0].sandbox.name])
    queue = Queues(cluster.prefix, foreign.address).turn
    turn = f"{session.sandbox_session}/turns/m-misrouted"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        body = events_pb2.RunTurn(name=turn).SerializeToString()
        await channel.default_exchange.publish(
            aio_pika.Message(body, message_id=uuid.uuid4().hex), routing_key=queue
        )

    def refused_there() -> None:
        events = [e for e in foreign.events() if e.get("event") == "turn_for_other_replica"]
        assert [e["session"] for e in events] == [session.sandbox_session], events

    await assert_eventually(refused_there, timeout=15, interval=0.2)

    # Through the gateway (its one balanced channel): processes on sandboxes of both replicas.
    browser = await BrowserClient(f"http://{cluster['gateway-0'].address}").sign_in(world.user.login)
    try:
        for sandbox_name in owners:
            marker = f"hello from {sandbox_name.rsplit('/', 1)[1]}"
            created = await browser.http.post(
                f"/v1/{sandbox_name}/processes",
                json={"process": {"command": "echo", "args": [marker]}, "requestId": str(uuid.uuid4())},
            )
            assert created.status_code == 200, created.text
            process = created.json()["process"]["name"]

            async def output(process: str = process, marker: str = marker) -> str:
                logs = await browser.http.get(f"/v1/{process}/logs")
                assert logs.status_code == 200, logs.text
                text = b"".join(base64.b64decode(c["data"]) for c in logs.json().get("chunks", []))
                assert marker.encode() in text, text
                return text.decode()

            await assert_eventually(output, timeout=20, interval=0.2)
    finally:
        await browser.close()
