"""Organization summary bootstrap benchmark (issue 5): `python -m bench.org_summary`.

Loads 10,000 task summaries over 500 repositories into the organization store through the same
event-apply code the RabbitMQ consumer uses (batched, several events per transaction), then times
GetOrganizationSummary over real gRPC (median of a few runs) at 1k, 5k and 10k tasks, and the
WatchOrganizationSummary bootstrap (snapshot pages up to SNAPSHOT_END) at 10k. Every peer channel the
host hands out is counted while serving: the summary must make 0 cross-service calls.

Runs on the embedded default (SQLite in a temp directory, in-process broker) unless
FOUNDRY_DATABASE_URL is set. Writes bench/results/org_summary.json and returns the same dict.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from foundry.github_data.v1 import pull_request_pb2
from foundry.organization.v1 import member_pb2, organization_pb2
from foundry.organization.v1 import organization_service_pb2 as pb
from foundry.organization.v1 import organization_service_pb2_grpc as pb_grpc
from foundry.task.v1 import events_pb2 as task_events
from foundry.task.v1 import session_pb2, task_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.organization.app import wire
from services.organization.store import accounts
from services.organization.usecases.projection import apply_event
from services.platform import clock
from services.platform.channels import Channels, open_channel
from services.platform.identity import Caller
from services.platform.process import make_broker
from services.platform.server.host import ServiceHost
from services.platform.settings import Settings

ORG = "bench-org"
REPOSITORIES = 500
CHECKPOINTS = (1_000, 5_000, 10_000)
QUICK_CHECKPOINTS = (100, 200, 400)  # `--quick` (CI smoke): same code path, small sizes
RUNS = 7
BATCH = 100  # events per transaction; short write transactions keep SQLite responsive
CALLER = Caller(subject="user/bench", login="bench")
RESULTS = Path(__file__).parent / "results" / "org_summary.json"


class CountingChannels(Channels):
    """Peer channels that count how often service code asks for one (one per outbound call site use)."""

    def __init__(self, inner: Channels) -> None:
        super().__init__(inner.settings, inner.caller.login)
        self._inner = inner
        self.calls = 0

    def channel(self, peer: Any) -> grpc.aio.Channel:
        self.calls += 1
        return self._inner.channel(peer)


def _event(i: int) -> tuple[str, bytes]:
    repo = f"organizations/{ORG}/repositories/repo-{i % REPOSITORIES:03d}"
    name = f"organizations/{ORG}/tasks/task-{i:05d}"
    summary = task_pb2.TaskSummary(
        name=name,
        repository=repo,
        repository_full_name=f"bench/repo-{i % REPOSITORIES:03d}",
        title=f"feat: benchmark task number {i}",
        status=task_pb2.TASK_STATUS_IDLE,
        branch=f"task-{i:05d}",
        update_time=Timestamp(seconds=1_800_000_000 + i),
        owner=task_pb2.TaskOwner(user="users/bench", login="bench", avatar_url="https://example.test/a.png"),
        sessions=[
            session_pb2.SessionSummary(
                name=f"{name}/sessions/s{j}",
                display_name=f"Tab {j}",
                agent="agents/fake",
                model="default",
                status=session_pb2.SESSION_STATUS_IDLE,
                used=True,
            )
            for j in range(2)
        ],
    )
    if i % 10 == 0:
        summary.pull_request.CopyFrom(
            pull_request_pb2.PullRequestSummary(
                name=f"{repo}/pullRequests/{i}",
                number=i,
                repository=repo,
                title=summary.title,
                state=pull_request_pb2.PULL_REQUEST_STATE_OPEN,
                head_branch=summary.branch,
                base_branch="main",
            )
        )
    event = task_events.TaskSummaryChanged(name=name, version=1, task_summary=summary)
    return "task.summary.updated", event.SerializeToString()


async def _load(host: ServiceHost, start: int, stop: int) -> float:
    """Apply task events [start, stop) in batches; returns seconds spent."""
    assert host.runtime is not None
    began = time.perf_counter()
    for first in range(start, stop, BATCH):
        async with host.runtime.db.transaction() as session:
            for i in range(first, min(first + BATCH, stop)):
                routing_key, body = _event(i)
                await apply_event(session, routing_key=routing_key, body=body)
    return time.perf_counter() - began


async def _seed_membership(host: ServiceHost) -> None:
    assert host.runtime is not None
    now = clock.now()
    async with host.runtime.db.transaction() as session:
        await accounts.insert_organization(
            session,
            id=ORG,
            kind=organization_pb2.ORGANIZATION_KIND_ORGANIZATION,
            display_name="Bench",
            slug=ORG,
            primary_domain="bench.github",
            default_model="",
            auto_import_repositories=True,
            provider=1,
            github_login="",
            github_account_id=0,
            local_root_path="",
            request_id=None,
            create_time=now,
            update_time=now,
        )
        await accounts.put_member(
            session,
            org_id=ORG,
            user_id="bench",
            login="bench",
            display_name="Bench",
            email="",
            avatar_url="",
            role=member_pb2.MEMBER_ROLE_OWNER,
            state=member_pb2.MEMBER_STATE_ACTIVE,
            create_time=now,
            update_time=now,
        )


async def _time_get(stub: pb_grpc.OrganizationServiceStub) -> tuple[float, int, int]:
    """Median seconds of RUNS GetOrganizationSummary calls, task count and response bytes."""
    request = pb.GetOrganizationSummaryRequest(name=f"organizations/{ORG}/summary")
    await stub.GetOrganizationSummary(request)  # warm up the channel and caches
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        response = await stub.GetOrganizationSummary(request)
        times.append(time.perf_counter() - began)
    return statistics.median(times), len(response.organization_summary.task_summaries), response.ByteSize()


async def _time_watch_bootstrap(stub: pb_grpc.OrganizationServiceStub) -> float:
    """Seconds from WatchOrganizationSummary to its SNAPSHOT_END (median of RUNS)."""
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        call = stub.WatchOrganizationSummary(
            pb.WatchOrganizationSummaryRequest(name=f"organizations/{ORG}/summary")
        )
        async for response in call:
            if response.event.kind == 2:  # WATCH_EVENT_KIND_SNAPSHOT_END
                break
        times.append(time.perf_counter() - began)
        call.cancel()
    return statistics.median(times)


async def main(quick: bool = False) -> dict[str, Any]:
    checkpoints = QUICK_CHECKPOINTS if quick else CHECKPOINTS
    tasks_total = checkpoints[-1]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), name_prefix="bench", metrics_port=0, log_level="WARNING", log_format="console"
        )
        broker = make_broker(settings)
        await broker.connect()
        host = ServiceHost(settings, "organization", broker, wire, port=0)
        await host.start()
        assert host.runtime is not None
        counting = CountingChannels(host.runtime.peers)
        host.runtime.peers = counting
        channel = open_channel(f"127.0.0.1:{host.port}", settings, CALLER, timeout=60)
        try:
            await _seed_membership(host)
            stub = pb_grpc.OrganizationServiceStub(channel)
            points, loaded, load_seconds = [], 0, 0.0
            for checkpoint in checkpoints:
                load_seconds += await _load(host, loaded, checkpoint)
                loaded = checkpoint
                calls_before = counting.calls
                median, tasks, size = await _time_get(stub)
                points.append(
                    {
                        "tasks": tasks,
                        "get_summary_median_ms": round(median * 1000, 2),
                        "response_bytes": size,
                        "peer_calls": counting.calls - calls_before,
                    }
                )
            calls_before = counting.calls
            watch_ms = round(await _time_watch_bootstrap(stub) * 1000, 2)
            watch_calls = counting.calls - calls_before
        finally:
            await channel.close()
            await host.begin_drain()
            await host.wait_idle(5)
            await host.close()
            await broker.close()
    per_task_us = [p["get_summary_median_ms"] * 1000 / p["tasks"] for p in points]
    result = {
        "benchmark": "org_summary",
        "database": "postgresql" if settings.database_url else "sqlite",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "quick": quick,
        "tasks": tasks_total,
        "repositories": REPOSITORIES,
        "load": {
            "events": tasks_total,
            "batch": BATCH,
            "seconds": round(load_seconds, 2),
            "events_per_second": round(tasks_total / load_seconds),
        },
        "get_organization_summary": points,
        "per_task_us": [round(x, 2) for x in per_task_us],
        f"watch_bootstrap_median_ms_at_{tasks_total}": watch_ms,
        "cross_service_calls": sum(p["peer_calls"] for p in points) + watch_calls,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; returns the results (also written to bench/results/org_summary.json)."""
    return asyncio.run(main(quick))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
