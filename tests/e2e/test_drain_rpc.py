"""SIGTERM on a real service process (PostgreSQL + RabbitMQ) with RPCs and queue handlers in flight.

The process is the organization service with its real wiring plus an instrumented probe
(tests/e2e/procs/drain_probe.py): a slow RPC and a slow queue handler that touch the database when
they finish and when they are cancelled, and a wrapper that records what was still running when the
engine was disposed. One drained run (the module fixture) is observed from outside — health, admin
endpoints, metrics, new calls, the in-flight calls' outcomes — and each test checks one behaviour.
Drain grace is 4 s: one RPC and one handler finish inside it, one of each is still running after it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
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
from tests.e2e.procs.drain_probe import PROBE_QUEUE, PROBE_SERVICE
from tests.helpers import assert_eventually, make_pg_database
from tests.helpers.procs import health_status

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

GRACE = 4.0
QUICK, STUCK = 1.0, 30.0  # seconds the probes run on once the drain began: inside the grace, far past it
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

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.replica.events() if e.get("event") == name]

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
                    return info.reason
    return ""


async def _probe_rpc(channel: grpc.aio.Channel, probe_id: str, seconds: float, secret: str) -> str:
    call = channel.unary_unary(f"/{PROBE_SERVICE}/Slow")
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


async def _left_in_queue(amqp_url: str, queue: str) -> list[str]:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        ids = []
        for _ in range(declared.declaration_result.message_count or 0):
            message = await declared.get(no_ack=True)
            assert message is not None
            ids.append(json.loads(message.body)["id"])
        return ids
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def drained(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> AsyncIterator[DrainedRun]:
    root = tmp_path_factory.mktemp("drain_rpc")
    async with make_pg_database() as db_url:
        cluster = Cluster(
            root, db_url, amqp_url, replicas={"organization": 1},
            modules={"organization": "tests.e2e.procs.drain_probe"},
            env={"FOUNDRY_DRAIN__GRACE_SECONDS": str(GRACE)},
        )
        try:
            await cluster.start()
            yield await _drain_with_work_in_flight(cluster, amqp_url)
        finally:
            await cluster.close()


async def _drain_with_work_in_flight(cluster: Cluster, amqp_url: str) -> DrainedRun:
    replica = cluster["organization-0"]
    secret = Settings().internal_auth_secret.get_secret_value()
    queue = queue_name(cluster.prefix, "organization", PROBE_QUEUE)
    broker = AmqpBroker(amqp_url, prefix=cluster.prefix, settings=MessagingSettings())
    await broker.connect()
    for probe_id, seconds in (("queue-quick", QUICK), ("queue-stuck", STUCK)):
        await broker.publish(exchange="", routing_key=queue, message_id=probe_id,
                             body=json.dumps({"id": probe_id, "seconds": seconds}).encode())
    await broker.close()
    # No client-side retries: the test must see exactly what the server answered.
    channel = grpc.aio.insecure_channel(replica.address, options=[("grpc.enable_retries", 0)])
    calls = {
        probe_id: asyncio.create_task(_probe_rpc(channel, probe_id, seconds, secret))
        for probe_id, seconds in (("rpc-quick", QUICK), ("rpc-stuck", STUCK))
    }

    async def all_in_flight() -> None:
        ready = (await _admin(replica, "/readyz")).json()
        assert (ready["active_rpcs"], ready["active_handlers"]) == (2, 2), ready

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
    for method, attempt in (
        ("ListOrganizations", lambda: orgs.ListOrganizations(org_pb.ListOrganizationsRequest(),
                                                             metadata=sign(ALICE, secret), timeout=5)),
        ("Slow", lambda: channel.unary_unary(f"/{PROBE_SERVICE}/Slow")(
            json.dumps({"id": "rpc-late", "seconds": 0}).encode(), metadata=sign(ALICE, secret), timeout=5)),
    ):
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
    run.queue_left = await _left_in_queue(amqp_url, queue)
    return run


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
    assert drained.queue_left == ["queue-stuck"]  # the finished one was acked, the cancelled one is back


async def test_drain_timeline_is_logged_with_active_counts(drained: DrainedRun) -> None:
    names = [e.get("event") for e in drained.replica.events()]
    steps = ["signal", "drain_started", "drain_finished", "cleanup_started", "probe_db_dispose",
             "cleanup_finished"]
    assert all(step in names for step in steps), names
    assert [names.index(step) for step in steps] == sorted(names.index(step) for step in steps)
    (started,) = drained.events("drain_started")
    assert (started["process"], started["pid"]) == ("organization", drained.replica.proc.pid)  # type: ignore[union-attr]
    assert started["host"] and started["components"][0]["service"] == "organization"
    assert (started["active_rpcs"], started["active_handlers"], started["open_streams"]) == (2, 2, 0)
    (finished,) = drained.events("drain_finished")
    assert set(finished["waited_for"]) == {"active_rpcs", "active_handlers"}
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
    assert sum(float(x.rsplit(" ", 1)[1]) for x in lines
               if x.startswith("foundry_message_handlers_active{") and queue in x) == 2.0
    assert sample('foundry_drain_duration_seconds_count{process="organization"}') == 0.0  # observed at exit
