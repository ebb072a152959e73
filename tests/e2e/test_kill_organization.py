"""kill -9 of the organization service mid-flight on the mesh shape (issue #16, item 7).

One process per service (organization, github_data, sandbox, task) on a private PostgreSQL and
RabbitMQ. The organization replica runs `tests.e2e.procs.organization_hold`: the unmodified service
plus a hook that, once armed, holds three deliveries forever: one audit item before its handler
runs, one audit item and one `task.summary.updated` event after their transaction committed and
before their ack. The test creates tasks (each sends TaskSummaryChanged events and audit items
through the task service's outbox at every provisioning step), waits until the three are held, then
SIGKILLs the replica while other deliveries are still arriving and a Watch of the organization
summary is open on it. Provisioning goes on in the task service (its create-sandbox step asks the
organization service for the egress policy and retries) and events pile up in the durable queues;
the replica is then started again.

Behaviour asserted:
- Calls made while it is down fail with a retryable code, never INTERNAL: organization RPCs and
  the open Watch stream UNAVAILABLE; CreateTask through the task service UNAVAILABLE, or
  DEADLINE_EXCEEDED when the retries of its two hops (github_data's membership check, then the
  branch reservation, both needing the organization service) outlast the task service's 5 s peer
  deadline. The failed CreateTask, retried with its request_id after the restart, creates its task
  once.
- Nothing lost, nothing doubled: every task of the task service's own list appears exactly once
  in the organization summary with its latest version (same update time, status and title) and
  exactly once in the task index; the audit log holds `task.created`, `task.initialized` and one
  `task.provision.stage` per stage for every task exactly once, and no entry twice.
- The held deliveries come back after the restart: the one held before its commit is applied
  (`message_handled`, its audit entry stored once), the two held after their commit are skipped by
  the inbox (`message_duplicate_skipped`): their effect is not applied again.
- The Watch resumed from the last token the broken stream delivered (taken before the kill) gets
  every change after it exactly once, versions contiguous, no RESET or snapshot, each task's
  summary only ever moving forward; replayed onto the summary read before the kill, it yields
  the final summary.

Figures are printed (run with -s): time from the restarted replica being ready until its summary
holds every task version the task service had at that moment, until the first call is served, and
until the summary matches the task service with every task idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from foundry.common.v1 import watch_pb2
from foundry.github_data.v1 import pull_request_pb2 as pr_pb
from foundry.github_data.v1 import sync_status_pb2 as sync_pb
from foundry.organization.v1 import organization_service_pb2 as org_pb
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.organization.v1 import organization_summary_pb2 as summary_pb
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as task_pb
from google.protobuf import json_format
from google.protobuf.message import Message

from services.organization.domain.names import summary_scope
from services.platform.messaging.broker import queue_name
from services.platform.watch.tokens import TokenCodec
from services.task.domain.rules import STEPS
from tests.e2e.procs.cluster import Cluster, Replica
from tests.e2e.procs.world import World, create_request, make_world, task_stub
from tests.helpers import assert_eventually, make_pg_database

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TASKS = 4  # created before the kill; one more is attempted while the replica is down
DOWN_AT_LEAST = 2.0  # seconds the replica stays down (events pile up in the durable queues)
STAGES = sorted({step.done_stage for step in STEPS.values()})
UPSERT, DELETE = watch_pb2.WATCH_EVENT_KIND_UPSERT, watch_pb2.WATCH_EVENT_KIND_DELETE
NOT_EXPECTED = (watch_pb2.WATCH_EVENT_KIND_SNAPSHOT, watch_pb2.WATCH_EVENT_KIND_RESET)
HOLDS = [("audit", "before_commit"), ("audit", "after_commit"), ("summary_events", "after_commit")]
RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # retryable per services.platform.errors
IDLE, READY = task_pb2.TASK_STATUS_IDLE, task_pb2.PROVISIONING_STAGE_READY


@dataclass
class WatchLog:
    """Events of one WatchOrganizationSummary stream, read in the background until it breaks."""

    events: list[watch_pb2.WatchEvent] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    task: asyncio.Task[None] | None = None

    def start(self, stream: Any) -> WatchLog:
        async def read() -> None:
            try:
                async for response in stream:
                    self.events.append(response.event)
            except grpc.aio.AioRpcError as exc:
                self.error = exc

        self.task = asyncio.create_task(read())
        return self

    def broken(self) -> None:
        assert self.task is not None and self.task.done(), "the stream is still open"

    def last_token(self) -> str:
        return next((e.resume_token for e in reversed(self.events) if e.resume_token), "")

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def cluster(tmp_path: Path, amqp_url: str) -> AsyncIterator[Cluster]:
    async with make_pg_database() as db_url:
        mesh = Cluster(
            tmp_path,
            db_url,
            amqp_url,
            replicas={"organization": 1, "github_data": 1, "sandbox": 1, "task": 1},
            modules={"organization": "tests.e2e.procs.organization_hold"},
            service_env={
                "organization": {
                    "E2E_HOLD_FLAG": str(tmp_path / "hold"),
                    "FOUNDRY_DRAIN__GRACE_SECONDS": "2",  # a held handler must not slow the teardown
                }
            },
        )
        try:
            await mesh.start()
            yield mesh
        finally:
            await mesh.close()


async def _code_of(call: Any) -> tuple[str, float]:
    """The status code `call` ended with, and how long the caller waited for it."""
    started = time.monotonic()
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, round(time.monotonic() - started, 1)
    return "OK", round(time.monotonic() - started, 1)


async def _until_served(call: Any, timeout: float = 20.0) -> tuple[Any, float]:
    """`call()` retried while it fails UNAVAILABLE, as a caller does; its response and the seconds
    until it was served."""
    started = time.monotonic()

    async def attempt() -> Any:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc  # anything else fails the test
            raise AssertionError(f"still UNAVAILABLE: {exc.details()}") from exc

    response = await assert_eventually(attempt, timeout=timeout, interval=0.1)
    return response, time.monotonic() - started


async def _list_tasks(tasks: Any, world: World) -> list[task_pb2.Task]:
    request = task_pb.ListTasksRequest(parent=world.organization, show_ended=True, page_size=500)
    return list((await tasks.ListTasks(request)).tasks)


async def _audit_events(org: Any, world: World) -> list[Any]:
    out, token = [], ""
    while True:
        page = await org.ListAuditEvents(
            org_pb.ListAuditEventsRequest(parent=world.organization, page_size=500, page_token=token)
        )
        out.extend(page.audit_events)
        token = page.next_page_token
        if not token:
            return out


def _unpack(item: watch_pb2.WatchItem) -> Message:
    for cls in (
        task_pb2.TaskSummary,
        summary_pb.RepositorySummary,
        pr_pb.PullRequestSummary,
        sync_pb.SyncStatus,
    ):
        message = cls()
        if item.resource.Unpack(message):
            return message
    raise AssertionError(f"unexpected item type {item.resource.type_url}")


def _state(summary: summary_pb.OrganizationSummary) -> dict[str, Message]:
    """Every item of a summary by name (what a Watch client rebuilds from the changes)."""
    return {
        **{t.name: t for t in summary.task_summaries},
        **{r.name: r for r in summary.repositories},
        **{p.name: p for p in summary.open_pull_requests},
        **({summary.sync_status.name: summary.sync_status} if summary.HasField("sync_status") else {}),
    }


def _held(replica: Replica) -> dict[tuple[str, str], dict[str, Any]]:
    """The deliveries the first run holds, by (queue, before_commit | after_commit)."""
    held = [e for e in replica.events(1) if e.get("event") == "e2e_held"]
    found = {(e["queue"].rsplit(".", 1)[-1], e["when"]): e for e in held}
    assert set(found) == set(HOLDS), held
    return found


async def test_organization_killed_mid_flight_loses_nothing_and_applies_nothing_twice(
    cluster: Cluster, tmp_path: Path
) -> None:
    world = await make_world(cluster, tmp_path)
    org_id = world.organization.removeprefix("organizations/")
    summary_name = f"{world.organization}/summary"
    codec = TokenCodec(summary_scope(org_id))
    org = org_grpc.OrganizationServiceStub(cluster.channel("organization", world.user))
    tasks = task_stub(cluster, world)
    replica = cluster["organization-0"]
    summary_queue = queue_name(cluster.prefix, "organization", "summary_events")

    # -- before: a token, a live Watch on the replica, then work in flight -----------------------
    before = await org.GetOrganizationSummary(org_pb.GetOrganizationSummaryRequest(name=summary_name))
    first = WatchLog().start(
        org.WatchOrganizationSummary(
            org_pb.WatchOrganizationSummaryRequest(name=summary_name, resume_token=before.resume_token)
        )
    )
    (tmp_path / "hold").touch()  # arm the hook
    created = [
        (await tasks.CreateTask(create_request(world, f"add feature {i}"))).task.name for i in range(TASKS)
    ]
    held = await assert_eventually(lambda: _held(replica), timeout=20, interval=0.05)

    # -- kill -9 ---------------------------------------------------------------------------------
    assert replica.proc is not None
    replica.proc.kill()
    killed = time.monotonic()
    assert await replica.wait_exit(10) == -9
    (tmp_path / "hold").unlink()  # the restarted replica runs without holds

    # -- while it is down ------------------------------------------------------------------------
    await assert_eventually(first.broken, timeout=10)
    broken_after = round(time.monotonic() - killed, 1)
    late = create_request(world, "add the late feature")
    probes = await asyncio.gather(
        _code_of(org.GetOrganizationSummary(org_pb.GetOrganizationSummaryRequest(name=summary_name))),
        _code_of(org.ListTaskIndexEntries(org_pb.ListTaskIndexEntriesRequest(parent=world.organization))),
        _code_of(org.ListAuditEvents(org_pb.ListAuditEventsRequest(parent=world.organization))),
        _code_of(tasks.CreateTask(late)),
    )
    stream_code = first.error.code().name if first.error else "ended without error"
    direct = {
        "WatchOrganizationSummary (open stream)": (stream_code, broken_after),
        "GetOrganizationSummary": probes[0],
        "ListTaskIndexEntries": probes[1],
        "ListAuditEvents": probes[2],
    }
    through_task = probes[3]
    assert {code for code, _ in direct.values()} == {"UNAVAILABLE"}, direct
    # Two hops: the task service's CreateTask asks github_data (whose membership check needs the
    # organization service once its 10 s cache lapses) and then the organization service. Each hop
    # retries UNAVAILABLE for ~1.5 s, so the task service's 5 s peer deadline can expire first.
    assert through_task[0] in RETRYABLE, through_task
    await asyncio.sleep(max(0.0, DOWN_AT_LEAST - (time.monotonic() - killed)))

    # -- restart ---------------------------------------------------------------------------------
    spawned = time.monotonic()
    replica.start()
    await replica.wait_ready()
    ready = time.monotonic()
    at_restart = {t.name: t.update_time.ToMicroseconds() for t in await _list_tasks(tasks, world)}
    fresh = org_grpc.OrganizationServiceStub(cluster.direct("organization-0", world.user))

    async def backlog_applied() -> None:
        """Every task version the task service had when the replica came back is in the summary."""
        got = await fresh.GetOrganizationSummary(org_pb.GetOrganizationSummaryRequest(name=summary_name))
        seen = {s.name: s.update_time.ToMicroseconds() for s in got.organization_summary.task_summaries}
        behind = [n for n, at in at_restart.items() if seen.get(n, 0) < at]
        assert not behind, f"not applied yet: {behind}"

    # The callers' retries (the same request_id through the task service, a read on this client's
    # channel), and the backlog read on a new channel.
    (retried, via_task), (_, via_client), (_, drained) = await asyncio.gather(
        _until_served(lambda: tasks.CreateTask(late)),
        _until_served(
            lambda: org.GetOrganizationSummary(org_pb.GetOrganizationSummaryRequest(name=summary_name))
        ),
        _until_served(backlog_applied),
    )
    late_name = retried.task.name
    # The Watch client resumes from the last token the broken stream gave it.
    resumed_from = first.last_token() or before.resume_token
    second = WatchLog().start(
        org.WatchOrganizationSummary(
            org_pb.WatchOrganizationSummaryRequest(name=summary_name, resume_token=resumed_from)
        )
    )
    expected = sorted([*created, late_name])
    assert (await tasks.CreateTask(late)).task.name == late_name

    async def complete() -> tuple[summary_pb.OrganizationSummary, str, dict[str, task_pb2.Task]]:
        listed = {t.name: t for t in await _list_tasks(tasks, world)}
        assert sorted(listed) == expected, sorted(listed)
        assert all(t.status == IDLE and t.provisioning.stage == READY for t in listed.values()), [
            (t.name, t.status, t.provisioning.stage) for t in listed.values()
        ]
        got = await org.GetOrganizationSummary(org_pb.GetOrganizationSummaryRequest(name=summary_name))
        counts = Counter(s.name for s in got.organization_summary.task_summaries)
        assert sorted(counts) == expected and set(counts.values()) == {1}, counts
        for s in got.organization_summary.task_summaries:
            t = listed[s.name]
            assert (s.update_time, s.status, s.title) == (t.update_time, t.status, t.title), (s, t)
        return got.organization_summary, got.resume_token, listed

    final, final_token, listed = await assert_eventually(complete, timeout=40, interval=0.1)
    caught_up = time.monotonic()
    final_version = codec.decode(final_token)

    # -- the summary Watch: resumed across the kill, no gap, no overlap ---------------------------
    def delivered_through_final() -> None:
        assert second.error is None, second.error
        seen = [codec.decode(e.resume_token) for e in second.events if e.resume_token]
        assert max(seen, default=0) >= final_version, (seen, final_version)

    await assert_eventually(delivered_through_final, timeout=10)
    await second.stop()
    stream = first.events + second.events
    assert not [e for e in stream if e.kind in NOT_EXPECTED], "a resumed Watch must not RESET or snapshot"
    changes = [
        e for e in stream if e.kind in (UPSERT, DELETE) and codec.decode(e.resume_token) <= final_version
    ]
    versions = [codec.decode(e.resume_token) for e in changes]
    start = codec.decode(before.resume_token)
    assert versions == list(range(start + 1, final_version + 1)), versions  # each change once, no gap
    state = _state(before.organization_summary)
    for event in changes:
        for item in event.items:
            if event.kind == DELETE:
                state.pop(item.name, None)
                continue
            resource = _unpack(item)
            previous = state.get(item.name)
            if isinstance(resource, task_pb2.TaskSummary) and isinstance(previous, task_pb2.TaskSummary):
                newer = resource.update_time.ToMicroseconds() > previous.update_time.ToMicroseconds()
                assert newer, f"{item.name} went back or was applied twice:\n{previous}\n->\n{resource}"
            state[item.name] = resource
    assert state == _state(final), "the replayed changes do not rebuild the final summary"

    # -- the task index --------------------------------------------------------------------------
    entries = (
        await org.ListTaskIndexEntries(
            org_pb.ListTaskIndexEntriesRequest(parent=world.organization, page_size=500)
        )
    ).task_index_entries
    assert sorted(e.task for e in entries) == expected, entries  # once each, no stale reservation
    assert not [e for e in entries if e.virtual or e.branch != listed[e.task].branch], entries

    # -- the audit log ---------------------------------------------------------------------------
    audit = await _audit_events(org, world)
    keys = Counter(
        (e.kind, e.task, e.create_time.ToMicroseconds(), json_format.MessageToJson(e.payload, sort_keys=True))
        for e in audit
    )
    assert not [k for k, n in keys.items() if n > 1], "audit entries stored twice"
    for name in expected:
        mine = [e for e in audit if e.task == name]
        kinds = Counter(e.kind for e in mine)
        assert (kinds["task.created"], kinds["task.initialized"]) == (1, 1), (name, kinds)
        stages = sorted(e.payload["stage"] for e in mine if e.kind == "task.provision.stage")
        assert stages == STAGES, (name, stages)

    # -- the held deliveries came back: the uncommitted one ran, the committed ones were skipped ----
    restarted = replica.events(2)
    settled = {
        e["message_id"]: e["event"]
        for e in restarted
        if e.get("event") in ("message_handled", "message_duplicate_skipped")
    }
    outcome = {hold: settled.get(e["message_id"], "not redelivered") for hold, e in held.items()}
    ids = {e["message_id"]: hold for hold, e in held.items()}
    trace = [  # every line about a held message or the broker connection, for the assertion message
        (run, ids.get(e.get("message_id", "")), e["event"], e.get("attempt"), e.get("timestamp"))
        for run in (1, 2)
        for e in replica.events(run)
        if e.get("message_id") in ids or str(e.get("event", "")).startswith("amqp_")
    ]
    assert outcome == {
        ("audit", "before_commit"): "message_handled",
        ("audit", "after_commit"): "message_duplicate_skipped",
        ("summary_events", "after_commit"): "message_duplicate_skipped",
    }, (outcome, trace)
    for hold in (("audit", "before_commit"), ("audit", "after_commit")):
        e = held[hold]
        stored = [
            a
            for a in audit
            if (a.kind, a.task, a.create_time.ToMicroseconds()) == (e["kind"], e["task"], e["create_us"])
        ]
        assert len(stored) == 1, (hold, e, stored)
    backlog = [
        e for e in restarted if e.get("event") == "message_handled" and e.get("queue") == summary_queue
    ]

    print(
        f"\nkill -9 -> restart spawned: {spawned - killed:.1f} s (down on purpose >= {DOWN_AT_LEAST} s)"
        f"\nspawn -> ready: {ready - spawned:.1f} s"
        f"\nready -> backlog applied (every task version at restart in the summary): {drained:.1f} s"
        f"\nready -> first call served: through the task service {via_task:.1f} s,"
        f" on this client's old channel {via_client:.1f} s"
        f"\nready -> summary matches the task service (all tasks idle): {caught_up - ready:.1f} s"
        f"\nsummary events applied by the restarted replica: {len(backlog)}"
        f"\nwatch changes across the kill: {len(changes)} (first stream {len(first.events)} events)"
        f"\ncalls while down (code, seconds the caller waited): {direct}, task.CreateTask {through_task}"
    )
