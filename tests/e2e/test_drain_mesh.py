"""Drain of real service processes in a mesh on PostgreSQL + RabbitMQ: provisioning steps survive a
replica's SIGTERM, Watch streams survive its preStop drain (`python -m services.platform.prestop
drain`), and the gateway's SIGTERM ends browser streams with `draining`.

One mesh for the module: organization, github_data, sandbox (CreateSandbox takes CREATE_DELAY s),
two task replicas — task-0 with the default 30 s grace, task-1 with a 1 s grace — and a gateway
that keeps its port open READINESS_DELAY s into its drain. Each test leaves stopped replicas to the
next test's `mesh_up`, which starts them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from foundry.common.v1 import watch_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as task_pb

from services.platform.messaging.broker import queue_name
from services.platform.watch.tokens import TokenCodec
from services.task.domain.rules import STEPS
from services.task.usecases.changes import task_scope
from tests.e2e.procs.cluster import Cluster, Replica, metric
from tests.e2e.procs.world import World, create_request, make_world, task_stub
from tests.e2e.test_gateway_mesh import BrowserClient
from tests.helpers import assert_eventually, make_pg_database
from tests.unit.gateway.harness import SseReader

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CREATE_DELAY = 3.0
SHORT_GRACE = 1.0
READINESS_DELAY = 2.0
READY = task_pb2.PROVISIONING_STAGE_READY
STAGES = sorted({step.done_stage for step in STEPS.values()})
END, UPSERT = watch_pb2.WATCH_EVENT_KIND_END, watch_pb2.WATCH_EVENT_KIND_UPSERT
CHANGE_KINDS = (UPSERT, watch_pb2.WATCH_EVENT_KIND_DELETE)


@dataclass
class Mesh:
    cluster: Cluster
    world: World
    root: Path

    @property
    def provision_queue(self) -> str:
        return queue_name(self.cluster.prefix, "task", "provision")


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> AsyncIterator[Mesh]:
    root = tmp_path_factory.mktemp("drain_mesh")
    async with make_pg_database() as db_url:
        cluster = Cluster(
            root,
            db_url,
            amqp_url,
            replicas={"organization": 1, "github_data": 1, "sandbox": 1, "task": 2},
            gateway=True,
            service_env={
                "sandbox": {"FOUNDRY_SANDBOX__CREATE_DELAY_SECONDS": str(CREATE_DELAY)},
                "task-1": {"FOUNDRY_DRAIN__GRACE_SECONDS": str(SHORT_GRACE)},
                "gateway": {"FOUNDRY_DRAIN__READINESS_DELAY_SECONDS": str(READINESS_DELAY)},
            },
        )
        try:
            await cluster.start()
            yield Mesh(cluster, await make_world(cluster, root), root)
        finally:
            await cluster.close()


@pytest.fixture
async def mesh_up(mesh: Mesh) -> Mesh:
    await mesh.cluster.ensure_running()
    return mesh


# -- provisioning ---------------------------------------------------------------------------------


async def _get(mesh: Mesh, name: str) -> task_pb2.Task:
    return (await task_stub(mesh.cluster, mesh.world).GetTask(task_pb.GetTaskRequest(name=name))).task


async def _until_ready(mesh: Mesh, name: str, timeout: float = 45) -> None:
    async def ready() -> None:
        try:
            task = await _get(mesh, name)
        except grpc.aio.AioRpcError as exc:  # a replica just exited: the client tries again, as users do
            assert exc.code() != grpc.StatusCode.UNAVAILABLE, exc.details()
            raise
        assert task.provisioning.stage == READY, task.provisioning

    await assert_eventually(ready, timeout=timeout, interval=0.2)


async def _create_step_in_flight_on(mesh: Mesh, label: str) -> str:
    """Create tasks (one at a time, each provisioned before the next) until replica `label` is the one
    running a task's create-sandbox step; returns that task's name."""
    cluster = mesh.cluster
    stub = task_stub(cluster, mesh.world)
    for _ in range(4):
        name = (await stub.CreateTask(create_request(mesh.world))).task.name

        async def holder(name: str = name) -> str:
            task = await _get(mesh, name)
            assert task.status == task_pb2.TASK_STATUS_INIT_CREATE_SANDBOX, task.status
            running = [
                r.label
                for r in cluster.members["task"]
                if metric(await r.metrics(), "foundry_message_handlers_active", queue=mesh.provision_queue)
                >= 1
            ]
            assert len(running) == 1, running
            return running[0]

        if await assert_eventually(holder, timeout=15, interval=0.05) == label:
            return name
        await _until_ready(mesh, name)  # RabbitMQ hands the next delivery to the other consumer
    raise AssertionError(f"{label} never received a provisioning step")


async def _assert_provisioned_exactly_once(mesh: Mesh, name: str) -> None:
    sandboxes = sb_grpc.SandboxServiceStub(mesh.cluster.channel("sandbox", mesh.world.user))
    listed = await sandboxes.ListSandboxes(sb_pb.ListSandboxesRequest(parent=mesh.world.organization))
    assert [s.task for s in listed.sandboxes].count(name) == 1, listed
    done = Counter(
        e["stage"]
        for r in mesh.cluster.members["task"]
        for e in r.events()
        if e.get("event") == "provision_stage_done" and e.get("task") == name
    )
    assert sorted(done) == STAGES and set(done.values()) == {1}, done


def _one(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [e for e in events if e.get("event") == name]
    return found


async def test_step_in_flight_finishes_and_acks_before_the_replica_exits(mesh_up: Mesh) -> None:
    mesh = mesh_up
    name = await _create_step_in_flight_on(mesh, "task-0")
    replica = mesh.cluster["task-0"]
    run = replica.starts
    replica.terminate()

    assert await replica.wait_exit(45) == 0, replica.tail()
    events = replica.events(run)
    after_drain = events[events.index(_one(events, "drain_started")) :]
    assert _one(events, "drain_started")["active_handlers"] >= 1
    handled = [
        e for e in after_drain if e.get("event") == "message_handled" and e["queue"] == mesh.provision_queue
    ]
    assert handled, "the step in flight did not ack during the drain"
    done = [(e["task"], e["stage"]) for e in after_drain if e.get("event") == "provision_stage_done"]
    assert done == [(name, "sandbox_allocated")]  # the step in flight, and nothing started after
    assert not [e for e in events if e.get("event") == "message_handler_cancelled"]
    finished = _one(events, "drain_finished")
    assert "active_handlers" in finished["waited_for"] and finished["cancelled_after_grace"] == []
    await _until_ready(mesh, name)  # the later steps ran on task-1
    await _assert_provisioned_exactly_once(mesh, name)


async def test_step_past_the_grace_is_requeued_and_finished_by_the_other_replica(mesh_up: Mesh) -> None:
    mesh = mesh_up
    name = await _create_step_in_flight_on(mesh, "task-1")
    replica = mesh.cluster["task-1"]
    run = replica.starts
    replica.terminate()

    assert await replica.wait_exit(30) == 0, replica.tail()
    events = replica.events(run)
    cancelled = [e for e in events if e.get("event") == "message_handler_cancelled"]
    assert [e["queue"] for e in cancelled] == [mesh.provision_queue]
    assert _one(events, "drain_finished")["cancelled_after_grace"] == ["task"]
    assert not [e for e in events if e.get("event") == "provision_stage_done" and e["task"] == name]
    await _until_ready(mesh, name)  # task-0 took the requeued step over
    await _assert_provisioned_exactly_once(mesh, name)


async def test_a_replica_killed_mid_step_is_taken_over_within_ten_seconds(mesh_up: Mesh) -> None:
    """kill -9 of the task replica running a provisioning step: the other replica takes the task over
    once the lease lapses (6 s, renewed every 2 s; stall sweep every 2 s) and provisioning completes
    with every stage done exactly once. The takeover time is printed (README "Reliability")."""
    mesh = mesh_up
    name = await _create_step_in_flight_on(mesh, "task-0")
    replica = mesh.cluster["task-0"]
    assert replica.proc is not None
    replica.proc.kill()
    killed_at = dt.datetime.now(dt.UTC)
    await replica.wait_exit(10)
    survivor = mesh.cluster["task-1"]

    def claimed() -> float:
        """Seconds from the kill until task-1 claimed the task's step (its log's timestamp)."""
        times = [
            dt.datetime.fromisoformat(e["timestamp"])
            for e in survivor.events()
            if e.get("event") == "provision_step_claimed" and e.get("task") == name
        ]
        late = [t for t in times if t > killed_at]
        assert late, "task-1 has not claimed the step yet"
        return (late[0] - killed_at).total_seconds()

    takeover = await assert_eventually(claimed, timeout=30, interval=0.1)
    print(f"takeover after kill -9: {takeover:.1f} s")
    assert takeover <= 10.0, f"task-1 took the step over {takeover:.1f} s after the kill"
    await mesh.cluster.ensure_running()  # task-0 back, so the round-robin reads below find both
    await _until_ready(mesh, name)
    await _assert_provisioned_exactly_once(mesh, name)


# -- watch streams --------------------------------------------------------------------------------


async def _prestop_hook(replica: Replica) -> None:
    """Run the deployment's preStop command against `replica`'s admin port (no extra wait)."""
    hook = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.platform.prestop",
        "drain",
        "--port",
        str(replica.admin),
        "--wait",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await hook.communicate()
    assert hook.returncode == 0 and json.loads(out)["draining"] is True, out


async def _read_until(stream: Any, done: Any, within: float = 15) -> list[watch_pb2.WatchEvent]:
    """Events of `stream` up to and including the first one for which `done(event)` holds."""
    events: list[watch_pb2.WatchEvent] = []

    async def read() -> None:
        async for response in stream:
            events.append(response.event)
            if done(response.event):
                return
        raise AssertionError(f"stream closed early after {events}")

    await asyncio.wait_for(read(), within)
    return events


def _titles(events: list[watch_pb2.WatchEvent]) -> list[str]:
    titles = []
    for event in events:
        for item in event.items:
            task = task_pb2.Task()
            if item.resource.Unpack(task):
                titles.append(task.title)
    return titles


def _has_title(title: str) -> Any:
    return lambda event: event.kind == UPSERT and title in _titles([event])


async def test_watch_streams_end_draining_and_resume_on_the_other_replica_without_gap(mesh_up: Mesh) -> None:
    mesh = mesh_up
    cluster, world = mesh.cluster, mesh.world
    name = (await task_stub(cluster, world).CreateTask(create_request(world))).task.name
    await _until_ready(mesh, name)
    codec = TokenCodec(task_scope(name))
    draining, survivor = cluster["task-0"], task_stub(cluster, world, "task-1")
    on_draining = task_stub(cluster, world, "task-0")
    streams = [on_draining.WatchTask(task_pb.WatchTaskRequest(name=name)) for _ in range(3)]
    before = [
        await _read_until(s, lambda e: e.kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END) for s in streams
    ]
    await survivor.RenameTask(task_pb.RenameTaskRequest(name=name, title="before drain"))
    for stream, seen in zip(streams, before, strict=True):
        seen += await _read_until(stream, _has_title("before drain"))
    assert metric(await draining.metrics(), "foundry_watch_streams_open", service="task") == 3
    run = draining.starts

    await _prestop_hook(draining)  # what Kubernetes runs before SIGTERM
    for stream, seen in zip(streams, before, strict=True):
        seen += await _read_until(stream, lambda e: e.kind == END)
        assert seen[-1].end_reason == watch_pb2.WATCH_END_REASON_DRAINING and seen[-1].resume_token
    for i in range(1, 4):
        await survivor.RenameTask(task_pb.RenameTaskRequest(name=name, title=f"after drain {i}"))
    resumed = [
        await _read_until(
            survivor.WatchTask(task_pb.WatchTaskRequest(name=name, resume_token=seen[-1].resume_token)),
            _has_title("after drain 3"),
        )
        for seen in before
    ]

    for seen, later in zip(before, resumed, strict=True):
        assert all(
            e.kind not in (watch_pb2.WATCH_EVENT_KIND_SNAPSHOT, watch_pb2.WATCH_EVENT_KIND_RESET)
            for e in later
        ), later
        # Background work (git state, summary) may change the task between renames, so a title can
        # repeat in consecutive versions: that is a later version, not a replay (the contiguous-version
        # check below catches replays and gaps). Compare the distinct titles in order.
        titles = [t for t, _ in groupby(t for t in _titles(later) if t.startswith(("before", "after")))]
        if titles and titles[0] == "before drain":
            titles.pop(0)
        assert titles == [
            "after drain 1",
            "after drain 2",
            "after drain 3",
        ]
        versions = [codec.decode(e.resume_token) for e in seen + later if e.kind in CHANGE_KINDS]
        first = versions[0]
        assert versions == list(range(first, first + len(versions))), versions  # each change once, no gap
    assert await draining.wait_exit(30) == 0, draining.tail()
    events = draining.events(run)
    assert _one(events, "drain_started")["open_streams"] == 3
    assert not [e for e in events if e.get("event") == "signal"]  # the hook alone drained and stopped it


# -- gateway --------------------------------------------------------------------------------------


async def test_gateway_drain_ends_browser_streams_and_reports_not_ready(mesh_up: Mesh) -> None:
    mesh = mesh_up
    gateway = mesh.cluster["gateway-0"]
    name = (await task_stub(mesh.cluster, mesh.world).CreateTask(create_request(mesh.world))).task.name
    browser = await BrowserClient(f"http://{gateway.address}").sign_in("alice")
    run = gateway.starts
    try:
        async with browser.http.stream("GET", f"/v1/stream?topic=task:{name}") as response:
            assert response.status_code == 200
            stream = SseReader(response)
            await stream.until("snapshot", within=15)
            gateway.terminate()
            end = await stream.until("end", within=10)
            async with httpx.AsyncClient(base_url=f"http://{gateway.address}") as probe:
                ready = (await probe.get("/readyz")).status_code
                live = (await probe.get("/livez")).status_code
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await browser.close()
    assert end.data["reason"] == "draining" and end.data["resume_from"], end
    assert (ready, live) == (503, 200)
    assert await gateway.wait_exit(30) == 0, gateway.tail()
    events = gateway.events(run)
    assert _one(events, "drain_started")["open_streams"] == 1
    assert [e["event"] for e in events if e.get("event", "").startswith(("drain_", "cleanup_"))] == [
        "drain_started",
        "drain_readiness_delay",
        "drain_finished",
        "cleanup_started",
        "cleanup_finished",
    ]
