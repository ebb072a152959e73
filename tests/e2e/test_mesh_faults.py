"""Queue faults on the process mesh (separate service processes on PostgreSQL + RabbitMQ): a poison
work item goes to its queue's dead-letter queue while the legitimate work around it finishes, and a
work item or event delivered more than once has its effect once.

The test plays a misbehaving producer: it publishes straight onto the services' real queues and
exchange (`<prefix>.task.provision`, `<prefix>.task.deliver_message`, `<prefix>.events`) with a
connection of its own, next to the messages the services send each other through their outboxes.

One mesh for the module: organization, github_data, sandbox (CreateSandbox takes CREATE_DELAY s, so
duplicates arrive while a provisioning step is in flight) and two task replicas (a duplicate may be
handled by either process).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import grpc
import pytest
from foundry.organization.v1 import audit_event_pb2
from foundry.organization.v1 import events_pb2 as org_events
from foundry.organization.v1 import organization_service_pb2 as org_pb
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc
from foundry.sandbox.v1 import session_event_pb2
from foundry.task.v1 import events_pb2, session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as task_pb

from services.platform.messaging.amqp import DEAD_LETTER_REASON
from services.platform.messaging.broker import ATTEMPT, queue_name
from services.task.domain.rules import STEPS
from tests.e2e.procs.cluster import Cluster, Replica, metric
from tests.e2e.procs.world import World, create_request, make_world, task_stub
from tests.helpers import assert_eventually, make_pg_database

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CREATE_DELAY = 1.0
READY = task_pb2.PROVISIONING_STAGE_READY
IDLE = task_pb2.TASK_STATUS_IDLE
SESSION_IDLE = session_pb2.SESSION_STATUS_IDLE
USER_MESSAGE = session_event_pb2.SESSION_EVENT_KIND_USER_MESSAGE
STAGES = sorted({step.done_stage for step in STEPS.values()})
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
SETTLED = ("message_handled", "message_duplicate_skipped", "message_dead_lettered")


class Producer:
    """A connection of the test's own to the mesh's RabbitMQ vhost: publishes work items and events
    (persistent, confirmed) and reads dead-letter queues."""

    def __init__(self, amqp_url: str, prefix: str) -> None:
        self._url = amqp_url
        self._prefix = prefix
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def open(self) -> None:
        self._connection = await aio_pika.connect_robust(self._url)
        self._channel = await self._connection.channel(publisher_confirms=True)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def channel(self) -> aio_pika.abc.AbstractChannel:
        assert self._channel is not None
        return self._channel

    def queue(self, service: str, name: str) -> str:
        return queue_name(self._prefix, service, name)

    async def work(self, queue: str, body: bytes, message_id: str) -> None:
        """Publish a work item to `queue` as the services do (default exchange, mandatory)."""
        message = aio_pika.Message(
            body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await self.channel.default_exchange.publish(message, routing_key=queue, mandatory=True)

    async def event(self, routing_key: str, body: bytes, message_id: str) -> None:
        """Publish an event on `<prefix>.events` as the outbox relay does."""
        exchange = await self.channel.get_exchange(f"{self._prefix}.events", ensure=False)
        message = aio_pika.Message(
            body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await exchange.publish(message, routing_key=routing_key)

    async def take_dead(self, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """What waits in `<queue>.dlq` now (taken off it)."""
        dlq = await self.channel.get_queue(f"{queue}.dlq", ensure=True)
        got = []
        while (message := await dlq.get(fail=False, no_ack=True)) is not None:
            got.append(message)
        return got


@dataclass
class Mesh:
    cluster: Cluster
    world: World
    producer: Producer

    def settled(self, service: str, message_ids: Iterable[str]) -> Counter[tuple[str, str]]:
        """(log event, message id) of every settled delivery of `message_ids` in `service`'s logs."""
        wanted = set(message_ids)
        return Counter(
            (e["event"], e["message_id"])
            for r in self.cluster.members[service]
            for e in r.events()
            if e.get("event") in SETTLED and e.get("message_id") in wanted
        )

    async def handled_total(self, service: str, queue: str, outcome: str) -> float:
        """`foundry_messages_handled_total` of `queue` with `outcome`, summed over `service`'s replicas."""
        total = 0.0
        for replica in self.cluster.members[service]:
            exposition = await replica.metrics()
            total += metric(exposition, "foundry_messages_handled_total", queue=queue, outcome=outcome)
        return total


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> AsyncIterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh_faults")
    async with make_pg_database() as db_url:
        cluster = Cluster(
            root,
            db_url,
            amqp_url,
            replicas={"organization": 1, "github_data": 1, "sandbox": 1, "task": 2},
            service_env={"sandbox": {"FOUNDRY_SANDBOX__CREATE_DELAY_SECONDS": str(CREATE_DELAY)}},
        )
        producer = Producer(amqp_url, cluster.prefix)
        try:
            await cluster.start()
            world = await make_world(cluster, root)
            await producer.open()
            yield Mesh(cluster, world, producer)
        except BaseException:
            print(cluster.dump_logs())
            raise
        finally:
            await producer.close()
            await cluster.close()


async def _get_task(mesh: Mesh, name: str) -> task_pb2.Task:
    return (await task_stub(mesh.cluster, mesh.world).GetTask(task_pb.GetTaskRequest(name=name))).task


async def _until_idle(mesh: Mesh, name: str, timeout: float = 45) -> task_pb2.Task:
    """Until task `name` is provisioned and its first turn (the prompt) has ended."""

    async def idle() -> task_pb2.Task:
        task = await _get_task(mesh, name)
        assert task.provisioning.stage == READY, task.provisioning
        assert task.status == IDLE, task_pb2.TaskStatus.Name(task.status)
        return task

    return await assert_eventually(idle, timeout=timeout, interval=0.2)


async def _prompts(mesh: Mesh, session: session_pb2.Session) -> list[str]:
    """The user messages of `session`'s agent transcript at the sandbox service, in order."""
    sandboxes = sb_grpc.SandboxServiceStub(mesh.cluster.channel("sandbox", mesh.world.user))
    listed = await sandboxes.ListSessionEvents(sb_pb.ListSessionEventsRequest(parent=session.sandbox_session))
    return [e.text for e in listed.session_events if e.kind == USER_MESSAGE]


def _task_events(mesh: Mesh, event: str, task: str) -> list[dict[str, Any]]:
    """Log lines `event` about task `task` of every task replica."""
    return [
        e
        for r in mesh.cluster.members["task"]
        for e in r.events()
        if e.get("event") == event and e.get("task") == task
    ]


def _stages_done(mesh: Mesh, name: str) -> Counter[str]:
    return Counter(e["stage"] for e in _task_events(mesh, "provision_stage_done", name))


@dataclass
class Readiness:
    polls: int = 0
    lapses: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def _readiness_watched(replicas: list[Replica]) -> AsyncIterator[Readiness]:
    """Poll the readiness of `replicas` every 0.2 s while the block runs; every answer other than
    SERVING (or failed check) is recorded in `lapses`."""
    seen = Readiness()
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            for replica in replicas:
                try:
                    if not await replica.is_ready():
                        seen.lapses.append(f"{replica.label}: NOT_SERVING")
                except grpc.aio.AioRpcError as exc:
                    seen.lapses.append(f"{replica.label}: {exc.code().name}")
            seen.polls += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    poller = asyncio.create_task(poll())
    try:
        yield seen
    finally:
        stop.set()
        await poller


def _header(message: aio_pika.abc.AbstractIncomingMessage, key: str) -> Any:
    value = (message.headers or {}).get(key)
    return value.decode() if isinstance(value, bytes) else value


# -- poison messages ------------------------------------------------------------------------------


async def test_poison_work_items_are_dead_lettered_while_legitimate_tasks_provision(mesh: Mesh) -> None:
    """Work items that can never succeed, published onto the task service's `provision` and
    `deliver_message` queues between CreateTask calls, end in that queue's dead-letter queue
    (`<queue>.dlq`) with their body and an `x-dead-letter-reason` header naming the error: a body
    that is not the expected protobuf (DecodeError), and well-formed items naming malformed
    resources (InvalidArgument, not retryable: dead-lettered on the first delivery). Nothing
    legitimate is dead-lettered: every task created around them is provisioned and its first turn
    ends, both task replicas answer SERVING on readiness throughout (polled every 0.2 s), a task
    created afterwards is provisioned too, and `foundry_messages_handled_total{outcome="dead_letter"}`
    on the replicas' admin /metrics counts exactly the poison items."""
    cluster, world, producer = mesh.cluster, mesh.world, mesh.producer
    provision, deliver = producer.queue("task", "provision"), producer.queue("task", "deliver_message")
    tag = uuid.uuid4().hex[:8]
    poison = {  # message id → (queue, body, what the reason names)
        f"undecodable-{tag}": (provision, b"\xff\xff\xff\xff not a protobuf", "DecodeError"),
        f"bad-task-name-{tag}": (
            provision,
            events_pb2.ProvisionTask(name=f"not-a-task-{tag}").SerializeToString(),
            "InvalidArgument",
        ),
        f"bad-message-name-{tag}": (
            deliver,
            events_pb2.DeliverMessage(
                name=f"{world.organization}/tasks/x/messages/{tag}"
            ).SerializeToString(),
            "InvalidArgument",
        ),
    }
    dead_before = {q: await mesh.handled_total("task", q, "dead_letter") for q in (provision, deliver)}
    stub = task_stub(cluster, world)

    dead: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}

    async def all_dead() -> None:
        for queue in (provision, deliver):
            dead.update((m.message_id or "", m) for m in await producer.take_dead(queue))
        assert set(dead) >= set(poison), sorted(dead)

    async with _readiness_watched(cluster.members["task"]) as readiness:
        names: list[str] = []
        for message_id, (queue, body, _) in poison.items():  # a poison item after each CreateTask
            names.append((await stub.CreateTask(create_request(world, f"feature {len(names)}"))).task.name)
            await producer.work(queue, body, message_id)
        names.append((await stub.CreateTask(create_request(world, "feature last"))).task.name)
        for name in names:
            await _until_idle(mesh, name)
        # The task service's handlers do not mark an undecodable body as non-retryable (the
        # organization service's do): it is retried (0.2 s doubling to 1 s, 20 attempts in this
        # mesh) before it is dead-lettered, ~17 s.
        await assert_eventually(all_dead, timeout=45, interval=0.5)
    assert readiness.polls > 10 and not readiness.lapses, readiness
    assert set(dead) == set(poison), f"legitimate work was dead-lettered: {sorted(set(dead) - set(poison))}"
    for message_id, (queue, body, error) in poison.items():
        copy = dead[message_id]
        assert copy.routing_key == queue and copy.body == body, (message_id, copy.routing_key, copy.body)
        reason = _header(copy, DEAD_LETTER_REASON)
        assert reason and reason.startswith(f"{error}:"), (message_id, reason)
    assert _header(dead[f"bad-task-name-{tag}"], ATTEMPT) in (None, 1)  # not retried
    assert _header(dead[f"bad-message-name-{tag}"], ATTEMPT) in (None, 1)
    settled = mesh.settled("task", poison)
    assert settled == Counter({("message_dead_lettered", i): 1 for i in poison}), settled

    dead_after = {q: await mesh.handled_total("task", q, "dead_letter") for q in (provision, deliver)}
    assert dead_after[provision] - dead_before[provision] == 2, (dead_before, dead_after)
    assert dead_after[deliver] - dead_before[deliver] == 1, (dead_before, dead_after)

    for replica in cluster.members["task"]:
        assert replica.running and await replica.is_ready(), replica.tail()
    later = (await stub.CreateTask(create_request(world, "after the poison"))).task.name
    await _until_idle(mesh, later)


# -- duplicates -----------------------------------------------------------------------------------


async def test_duplicate_provision_and_deliver_items_have_one_effect(mesh: Mesh) -> None:
    """ProvisionTask items for a task that is provisioning, published again — twice under one
    message id and under ids of their own, before and while a step is in flight, to either task
    replica — and DeliverMessage items for a queued message, twelve at once (two under one id; they
    reach the sandbox's PromptSession concurrently), change nothing: the task has one sandbox, each
    provisioning stage is done once, the session ends IDLE after the message's turn (not ERROR, as
    when a copy's PromptSession failed on the turn's key), and the agent's transcript holds the
    prompt and the later message once each. Every duplicate was consumed and acked (none waits in
    a queue, none was dead-lettered)."""
    cluster, world, producer = mesh.cluster, mesh.world, mesh.producer
    provision, deliver = producer.queue("task", "provision"), producer.queue("task", "deliver_message")
    stub = task_stub(cluster, world)
    tag = uuid.uuid4().hex[:8]
    prompt = f"duplicate prompt {tag}"
    name = (await stub.CreateTask(create_request(world, prompt))).task.name
    provision_body = events_pb2.ProvisionTask(name=name).SerializeToString()

    same = f"provision-same-{tag}"
    provision_ids = [same, same] + [f"provision-{i}-{tag}" for i in range(6)]
    for i, message_id in enumerate(provision_ids):
        await producer.work(provision, provision_body, message_id)
        if i % 2:  # spread over the provisioning (CreateSandbox alone takes CREATE_DELAY s)
            await asyncio.sleep(0.4)

    task = await _until_idle(mesh, name)

    async def provision_duplicates_settled() -> None:
        settled = mesh.settled("task", provision_ids)
        assert settled == Counter({("message_handled", same): 2}) + Counter(
            ("message_handled", i) for i in provision_ids[2:]
        ), settled

    await assert_eventually(provision_duplicates_settled, timeout=20, interval=0.2)
    sandboxes = sb_grpc.SandboxServiceStub(cluster.channel("sandbox", world.user))
    listed = await sandboxes.ListSandboxes(
        sb_pb.ListSandboxesRequest(parent=world.organization, show_destroyed=True)
    )
    assert [s.name for s in listed.sandboxes if s.task == name] == [task.sandbox.name]
    done = _stages_done(mesh, name)
    assert sorted(done) == STAGES and set(done.values()) == {1}, done
    busy = _task_events(mesh, "provision_step_busy", name)
    assert busy, "no duplicate arrived while a step was in flight (the scenario did not happen)"
    (tab,) = task.sessions
    session = (await stub.GetSession(task_pb.GetSessionRequest(name=tab.name))).session
    assert await _prompts(mesh, session) == [prompt]

    second = f"second message {tag}"
    sent = await stub.SendMessage(
        task_pb.SendMessageRequest(name=session.name, text=second, request_id=str(uuid.uuid4()))
    )
    deliver_body = events_pb2.DeliverMessage(name=sent.message).SerializeToString()
    deliver_same = f"deliver-same-{tag}"
    deliver_ids = [deliver_same, deliver_same, *(f"deliver-{i}-{tag}" for i in range(10))]
    # All at once, next to the service's own: the copies race each other into PromptSession.
    await asyncio.gather(*(producer.work(deliver, deliver_body, i) for i in deliver_ids))

    async def turn_over_and_duplicates_settled() -> None:
        got = (await stub.GetSession(task_pb.GetSessionRequest(name=session.name))).session
        assert got.status == SESSION_IDLE, session_pb2.SessionStatus.Name(got.status)
        settled = mesh.settled("task", deliver_ids)
        assert settled == Counter({("message_handled", deliver_same): 2}) + Counter(
            ("message_handled", i) for i in deliver_ids[2:]
        ), settled

    await assert_eventually(turn_over_and_duplicates_settled, timeout=30, interval=0.2)
    assert await _prompts(mesh, session) == [prompt, second]
    assert not await producer.take_dead(provision) and not await producer.take_dead(deliver)


async def test_a_redelivered_event_is_applied_once(mesh: Mesh) -> None:
    """An `*.audit.appended` event (AppendAuditEvent) published on the events exchange three times
    under one message id is stored once, the organization service's inbox skipping the two
    redeliveries (`message_duplicate_skipped`, outcome `duplicate`); one published twice under two
    message ids but with one event id is stored once too. The audit log then lists exactly those two
    entries."""
    cluster, world, producer = mesh.cluster, mesh.world, mesh.producer
    tag = uuid.uuid4().hex[:8]
    audit_queue = producer.queue("organization", "audit")
    task = f"{world.organization}/tasks/audit-{tag}"  # the entries' filter (no such task is needed)

    def item(kind: str, event_id: str = "") -> bytes:
        entry = audit_event_pb2.AuditEvent(kind=kind, task=task, actor="services/test")
        return org_events.AppendAuditEvent(
            organization=world.organization, event_id=event_id, audit_event=entry
        ).SerializeToString()

    duplicates_before = await mesh.handled_total("organization", audit_queue, "duplicate")
    same_id = f"audit-same-{tag}"
    for _ in range(3):
        await producer.event("task.audit.appended", item("test.redelivered"), same_id)
    other_ids = [f"audit-0-{tag}", f"audit-1-{tag}"]
    for message_id in other_ids:
        await producer.event("task.audit.appended", item("test.resent", f"event-{tag}"), message_id)

    async def settled() -> None:
        got = mesh.settled("organization", [same_id, *other_ids])
        expected = Counter({("message_handled", same_id): 1, ("message_duplicate_skipped", same_id): 2})
        assert got == expected + Counter(("message_handled", i) for i in other_ids), got

    await assert_eventually(settled, timeout=20, interval=0.2)
    audit = org_grpc.OrganizationServiceStub(cluster.channel("organization", world.user))
    listed = await audit.ListAuditEvents(
        org_pb.ListAuditEventsRequest(parent=world.organization, task=task, page_size=50)
    )
    assert sorted(e.kind for e in listed.audit_events) == ["test.redelivered", "test.resent"], listed
    duplicates = await mesh.handled_total("organization", audit_queue, "duplicate") - duplicates_before
    assert duplicates == 2, duplicates
    assert not await producer.take_dead(audit_queue)
