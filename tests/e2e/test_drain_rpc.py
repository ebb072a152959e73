"""SIGTERM on a real service process (PostgreSQL + RabbitMQ) with RPCs and queue handlers in flight.

The process is the organization service with its real wiring plus an instrumented probe
(tests/e2e/procs/drain_probe.py): a slow RPC and a slow queue handler that touch the database when
they finish and when they are cancelled, and a wrapper that records what was still running when the
engine was disposed. One drained run (the module fixture) is observed from outside — health, admin
endpoints, metrics, new calls, the in-flight calls' outcomes — and each test checks one behaviour.
Drain grace is 4 s: one RPC and one handler finish inside it, one of each is still running after it.
The probe queue runs 2 handlers at once with a prefetch of 4, so a third message is delivered to the
process but waits for a slot: the drain must requeue it unstarted, and the restarted process (the
fixture starts it again once) handles it exactly once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import asyncpg
import grpc
import httpx
import pytest
from foundry.organization.v1 import organization_service_pb2 as org_pb
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from services.platform.identity import Caller, sign
from services.platform.messaging.amqp import AmqpBroker
from services.platform.messaging.broker import queue_name
from services.platform.settings import MessagingSettings, Settings
from tests.e2e.procs.cluster import Cluster, Replica
from tests.e2e.procs.drain_probe import PROBE_CONCURRENCY, PROBE_QUEUE, PROBE_SERVICE
from tests.helpers import assert_eventually, make_pg_database
from tests.helpers.procs import health_status

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

GRACE = 4.0
QUICK, STUCK = 1.0, 30.0  # seconds the probes run on once the drain began: inside the grace, far past it
# Published in this order; the probe queue runs PROBE_CONCURRENCY (2) at once, so the third is delivered
# but waits. It needs no drain to finish, so the restarted process handles it at once.
QUEUE_PROBES: dict[str, dict[str, Any]] = {
    "queue-quick": {"seconds": QUICK},
    "queue-stuck": {"seconds": STUCK},
    "queue-waiting": {"seconds": 0, "wait_for_drain": False},
}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ALICE = Caller(subject="user/alice", login="alice")


@dataclass
class DrainedRun:
    """What the module fixture observed while the probe process drained."""

    replica: Replica
    exit_code: int
    rpc_results: dict[str, str]  # probe id -> "OK" or the status code name
    after_drain_codes: list[tuple[str, str, str]]  # (method, code, ErrorInfo reason)
    health_during: list[tuple[int, int]] = field(default_factory=list)  # (liveness, readiness)
    admin_during: dict[str, int] = field(default_factory=dict)  # path -> HTTP status
    metrics_during: str = ""
    queue_left: list[str] = field(default_factory=list)  # probe ids still in the queue after exit
    restart_exit_code: int = -1  # the second run, which consumed the requeued waiting message
    queue_left_after_restart: list[str] = field(default_factory=list)
    inbox_rows: dict[str, int] = field(default_factory=dict)  # probe id -> inbox rows (effects committed)

    def events(self, name: str, start: int = 1) -> list[dict[str, Any]]:
        """Events of the drained run (`start=1`) or of the restarted one (`start=2`)."""
        return [e for e in self.replica.events(start) if e.get("event") == name]

    def probe(self, probe_id: str) -> dict[str, Any]:
        (ended,) = [e for e in self.events("probe_ended") if e["id"] == probe_id]
        return ended


def _reason(exc: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call ('' when there is none)."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason: str = info.reason
                    return reason
    return ""


def _slow(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """The probe's slow RPC (no serializers: JSON bytes in and out)."""
    return channel.unary_unary(f"/{PROBE_SERVICE}/Slow")


async def _probe_rpc(channel: grpc.aio.Channel, probe_id: str, seconds: float, secret: str) -> str:
    call = _slow(channel)
    body = json.dumps({"id": probe_id, "seconds": seconds}).encode()
    try:
        answer = await call(body, metadata=sign(ALICE, secret), timeout=60)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    assert json.loads(answer) == {"id": probe_id}
    return "OK"


async def _admin(replica: Replica, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{replica.admin}{path}", timeout=5)


async def _take_from_queue(amqp_url: str, queue: str, *, keep: frozenset[str] = frozenset()) -> list[str]:
    """The probe ids waiting in `queue`; removes them all but those in `keep` (those go back when the
    connection closes unacked)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        ids = []
        for _ in range(declared.declaration_result.message_count or 0):
            message = await declared.get(no_ack=False)
            assert message is not None
            ids.append(json.loads(message.body)["id"])
            if ids[-1] not in keep:
                await message.ack()
        return ids
    finally:
        await connection.close()


async def _ready_in_queue(amqp_url: str, queue: str) -> int:
    """Messages in `queue` not yet delivered to any consumer."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def _inbox_rows(db_url: str, probe_ids: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT message_id, count(*) AS n FROM organization.inbox WHERE message_id = ANY($1::text[])"
            " GROUP BY message_id",
            probe_ids,
        )
        return {probe_id: 0 for probe_id in probe_ids} | {r["message_id"]: int(r["n"]) for r in rows}
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def drained(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> AsyncIterator[DrainedRun]:
    root = tmp_path_factory.mktemp("drain_rpc")
    async with make_pg_database() as db_url:
        cluster = Cluster(
            root,
            db_url,
            amqp_url,
            replicas={"organization": 1},
            modules={"organization": "tests.e2e.procs.drain_probe"},
            env={"FOUNDRY_DRAIN__GRACE_SECONDS": str(GRACE)},
        )
        try:
            await cluster.start()
            run = await _drain_with_work_in_flight(cluster, amqp_url)
            await _restart_and_consume_the_requeued_message(run, amqp_url)
            run.inbox_rows = await _inbox_rows(db_url, [*QUEUE_PROBES])
            yield run
        finally:
            await cluster.close()


async def _drain_with_work_in_flight(cluster: Cluster, amqp_url: str) -> DrainedRun:
    replica = cluster["organization-0"]
    secret = Settings().internal_auth_secret.get_secret_value()
    queue = queue_name(cluster.prefix, "organization", PROBE_QUEUE)
    broker = AmqpBroker(amqp_url, prefix=cluster.prefix, settings=MessagingSettings())
    await broker.connect()
    for probe_id, body in QUEUE_PROBES.items():  # in this order: the third waits for a slot
        await broker.publish(
            exchange="",
            routing_key=queue,
            message_id=probe_id,
            body=json.dumps({"id": probe_id, **body}).encode(),
        )
    await broker.close()
    # No client-side retries: the test must see exactly what the server answered.
    channel = grpc.aio.insecure_channel(replica.address, options=[("grpc.enable_retries", 0)])
    calls = {
        probe_id: asyncio.create_task(_probe_rpc(channel, probe_id, seconds, secret))
        for probe_id, seconds in (("rpc-quick", QUICK), ("rpc-stuck", STUCK))
    }

    async def all_in_flight() -> None:
        ready = (await _admin(replica, "/readyz")).json()
        assert (ready["active_rpcs"], ready["active_handlers"]) == (2, PROBE_CONCURRENCY), ready
        # RabbitMQ holds none back: the third message is in the process too, waiting for a slot.
        assert await _ready_in_queue(amqp_url, queue) == 0

    await assert_eventually(all_in_flight, timeout=20, interval=0.05)
    replica.terminate()
    run = DrainedRun(replica, -1, {}, [])

    async def readiness_flipped() -> None:
        live, ready = await health_status(replica.port, ""), await health_status(replica.port, "readiness")
        run.health_during.append((live, ready))
        assert ready == NOT_SERVING

    await assert_eventually(readiness_flipped, timeout=5, interval=0.02)
    await readiness_flipped()  # one more sample, now that the drain is under way
    for path in ("/livez", "/readyz"):
        run.admin_during[path] = (await _admin(replica, path)).status_code
    run.metrics_during = await replica.metrics()
    orgs = org_grpc.OrganizationServiceStub(channel)
    attempts: tuple[tuple[str, Callable[[], Awaitable[object]]], ...] = (
        (
            "ListOrganizations",
            lambda: orgs.ListOrganizations(
                org_pb.ListOrganizationsRequest(), metadata=sign(ALICE, secret), timeout=5
            ),
        ),
        (
            "Slow",
            lambda: _slow(channel)(
                json.dumps({"id": "rpc-late", "seconds": 0}).encode(), metadata=sign(ALICE, secret), timeout=5
            ),
        ),
    )
    for method, attempt in attempts:
        try:
            await attempt()
            run.after_drain_codes.append((method, "OK", ""))
        except grpc.aio.AioRpcError as exc:
            run.after_drain_codes.append((method, exc.code().name, _reason(exc)))
    await calls["rpc-quick"]
    await readiness_flipped()  # later in the drain: the stuck probes keep it going for seconds more
    run.rpc_results = dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))
    run.exit_code = await replica.wait_exit(GRACE + 30)
    await channel.close()
    # Remove the cancelled message (its redelivery would only block the next run until its drain); keep
    # the one that never started, for the restarted process.
    run.queue_left = await _take_from_queue(amqp_url, queue, keep=frozenset({"queue-waiting"}))
    return run


async def _restart_and_consume_the_requeued_message(run: DrainedRun, amqp_url: str) -> None:
    replica = run.replica
    replica.start()
    await replica.wait_ready()

    async def handled() -> None:
        assert [e for e in run.events("probe_ended", start=2) if e["id"] == "queue-waiting"], replica.tail()

    await assert_eventually(handled, timeout=20, interval=0.1)
    run.restart_exit_code = await replica.stop(30)
    run.queue_left_after_restart = await _take_from_queue(
        amqp_url, queue_name(replica.env["FOUNDRY_NAME_PREFIX"], "organization", PROBE_QUEUE)
    )


async def test_inflight_rpc_completes_and_calls_after_drain_get_unavailable(drained: DrainedRun) -> None:
    assert drained.rpc_results["rpc-quick"] == "OK"
    assert drained.after_drain_codes == [
        ("ListOrganizations", "UNAVAILABLE", "DRAINING"),
        ("Slow", "UNAVAILABLE", "DRAINING"),
    ]
    assert not [e for e in drained.events("probe_started") if e["id"] == "rpc-late"], "entered service code"
    assert drained.exit_code == 0, drained.replica.tail()


async def test_liveness_stays_serving_while_readiness_is_not_serving(drained: DrainedRun) -> None:
    assert len(drained.health_during) >= 3, "too few health samples taken during the drain"
    assert all(live == SERVING for live, _ in drained.health_during), drained.health_during
    assert drained.health_during[-1] == (SERVING, NOT_SERVING)
    assert drained.admin_during == {"/livez": 200, "/readyz": 503}


async def test_handlers_never_see_a_closed_database(drained: DrainedRun) -> None:
    ended = {e["id"]: e for e in drained.events("probe_ended")}
    assert set(ended) == {"rpc-quick", "rpc-stuck", "queue-quick", "queue-stuck"}, ended
    assert {k: e["db_errors"] for k, e in ended.items()} == {k: [] for k in ended}
    assert [e["cleanup"] for e in ended.values() if e["outcome"] == "cancelled"] == ["done", "done"], ended
    (dispose,) = drained.events("probe_db_dispose")
    assert (dispose["active_probes"], dispose["active_rpcs"], dispose["active_handlers"]) == ({}, 0, 0)
    assert drained.events("probe_checkout_after_dispose") == []


async def test_work_past_the_grace_is_cancelled_and_its_message_requeued(drained: DrainedRun) -> None:
    assert drained.probe("rpc-stuck")["outcome"] == "cancelled"
    assert drained.rpc_results["rpc-stuck"] in ("UNAVAILABLE", "CANCELLED")  # retryable for the client
    assert drained.probe("queue-quick")["outcome"] == "finished"
    assert drained.probe("queue-stuck")["outcome"] == "cancelled"
    # The finished one was acked; the cancelled one and the one that never started are back.
    assert sorted(drained.queue_left) == ["queue-stuck", "queue-waiting"]


async def test_delivered_but_unstarted_message_is_requeued_and_consumed_once_after_restart(
    drained: DrainedRun,
) -> None:
    assert not [e for e in drained.events("probe_started") if e["id"] == "queue-waiting"], (
        "a delivery waiting for a slot started in the draining process"
    )
    restarted = [e for e in drained.events("probe_started", start=2) if e["id"] == "queue-waiting"]
    ended = [e for e in drained.events("probe_ended", start=2) if e["id"] == "queue-waiting"]
    assert len(restarted) == 1 and [(e["outcome"], e["db_errors"]) for e in ended] == [("finished", [])]
    assert drained.restart_exit_code == 0, drained.replica.tail()
    assert drained.queue_left_after_restart == []
    # Effects committed: the quick one in the first run, the waiting one once in the second, the
    # cancelled one never (its message was removed by the test).
    assert drained.inbox_rows == {"queue-quick": 1, "queue-stuck": 0, "queue-waiting": 1}


async def test_drain_timeline_is_logged_with_active_counts(drained: DrainedRun) -> None:
    names = [e.get("event") for e in drained.replica.events(1)]
    steps = [
        "signal",
        "drain_started",
        "drain_finished",
        "cleanup_started",
        "probe_db_dispose",
        "cleanup_finished",
    ]
    assert all(step in names for step in steps), names
    assert [names.index(step) for step in steps] == sorted(names.index(step) for step in steps)
    (signal,) = drained.events("signal")
    (started,) = drained.events("drain_started")
    pid = started["pid"]
    assert (started["process"], signal["signal"]) == ("organization", "SIGTERM")
    assert started["host"] and (signal["pid"], signal["host"]) == (pid, started["host"])
    assert started["components"][0]["service"] == "organization"
    assert (started["active_rpcs"], started["active_handlers"], started["open_streams"]) == (2, 2, 0)
    assert started["deadline_in_seconds"] == GRACE
    (finished,) = drained.events("drain_finished")
    assert set(finished["waited_for"]) == {"active_rpcs", "active_handlers"}
    # Why it waited: the slow RPC by method, the handlers by queue.
    queue = queue_name(drained.replica.env["FOUNDRY_NAME_PREFIX"], "organization", PROBE_QUEUE)
    assert finished["waited_on"] == {
        "organization": {
            "active_rpc_methods": {f"/{PROBE_SERVICE}/Slow": 2},
            "active_handlers_by_queue": {queue: 2},
        }
    }
    assert started["components"][0]["active_rpc_methods"] == {f"/{PROBE_SERVICE}/Slow": 2}
    (cancelled,) = drained.events("rpcs_cancelled_at_deadline")
    assert cancelled["active_rpc_methods"] == {f"/{PROBE_SERVICE}/Slow": 1}
    assert finished["cancelled_after_grace"] == ["organization"]
    assert GRACE * 1000 <= finished["duration_ms"] < (GRACE + 5) * 1000
    assert (finished["active_rpcs"], finished["active_handlers"]) == (0, 0)
    assert drained.events("cleanup_finished")[0]["duration_ms"] >= finished["duration_ms"]


async def test_admin_metrics_export_drain_state_and_active_counts(drained: DrainedRun) -> None:
    lines = drained.metrics_during.splitlines()

    def sample(prefix: str) -> float:
        (line,) = [x for x in lines if x.startswith(prefix)]
        return float(line.rsplit(" ", 1)[1])

    queue = queue_name("", "organization", PROBE_QUEUE)
    assert sample('foundry_draining{process="organization"}') == 1.0
    assert sample('foundry_grpc_server_active_rpcs{service="organization"}') == 2.0
    assert (
        sum(
            float(x.rsplit(" ", 1)[1])
            for x in lines
            if x.startswith("foundry_message_handlers_active{") and queue in x
        )
        == 2.0
    )
    assert sample('foundry_drain_duration_seconds_count{process="organization"}') == 0.0  # observed at exit
