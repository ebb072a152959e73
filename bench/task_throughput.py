"""Benchmark 6: tasks from create to running, per second, on PostgreSQL + RabbitMQ.

The organization, github-data and task services run as their own processes (the mesh shape) on a
fresh PostgreSQL database and a RabbitMQ node of its own; the sandbox service is
bench/instant_sandbox.py (every provisioning call answers at once: an instant provider and a cheap
agent). 50 concurrent callers create N tasks; the clock stops when the task database shows all N
at stage `ready` (status idle, first session ready). Target: ≥ 100 tasks/s (issue 17, item 2; its
opening table said 200).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc

from bench.common import caller_metadata, latency_summary, scratch, target, write
from bench.driver import GRPC_OPTIONS, QUIET_MESH, closed_loop, world_on
from bench.instant_sandbox import serve
from bench.profiling import notes, py_spy, summarize
from load.config import Targets
from load.mesh import Ports, spawn, stop, wait_ready
from services.platform.settings import Settings
from tests.helpers.servers import PrivateRabbit

NAME = "task_throughput"
CONCURRENCY = 50
TARGET_PER_SECOND = 100
# The machine's PostgreSQL by default; the test suite points it at its own server.
PG_ADMIN = os.environ.get("FOUNDRY_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVICES = ("organization", "github_data", "task")


@contextlib.asynccontextmanager
async def pg_database(name: str) -> AsyncIterator[str]:
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        yield PG_ADMIN.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    finally:
        conn = await asyncpg.connect(PG_ADMIN)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@contextlib.contextmanager
def private_rabbit(root: Path) -> Iterator[str]:
    """A RabbitMQ node of the bench's own (installed server binaries, free port, data in `root`),
    so the figures never depend on, or disturb, the machine's broker; yields its amqp:// URL."""
    root.parent.chmod(0o755)  # the node runs as the `rabbitmq` user when we are root
    node = PrivateRabbit(root)
    node.start()
    try:
        yield node.url
    finally:
        node.stop()


async def ready_count(db_url: str) -> int:
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM task.tasks WHERE stage = 'ready'"))
    finally:
        await conn.close()


async def db_activity(db_url: str) -> dict[str, Any]:
    """PostgreSQL's cumulative statistics of the bench database: transactions committed, and rows
    inserted, updated and deleted per table (`schema.table`; one schema per service). Backends report
    them when a transaction ends (at most once a second while busy) and when they exit."""
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        commits = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        rows = await conn.fetch(
            "SELECT schemaname || '.' || relname AS name, n_tup_ins + n_tup_upd + n_tup_del AS written"
            " FROM pg_stat_user_tables"
        )
    finally:
        await conn.close()
    return {
        "commits": int(commits),
        "rows_written": {r["name"]: int(r["written"]) for r in rows},
    }


def per_task(before: dict[str, Any], after: dict[str, Any], tasks: int, own_commits: int) -> dict[str, Any]:
    """Database work per task between two `db_activity` readings; `own_commits` (the bench's own
    reads) are taken out of the commit count."""
    n = max(tasks, 1)
    tables = {
        name: round((rows - before["rows_written"].get(name, 0)) / n, 1)
        for name, rows in after["rows_written"].items()
    }
    services: dict[str, float] = {}
    for name, rows in tables.items():
        services[name.split(".")[0]] = round(services.get(name.split(".")[0], 0.0) + rows, 1)
    return {
        "commits": round((after["commits"] - before["commits"] - own_commits) / n, 1),
        "rows_written_by_service": dict(sorted(services.items())),
        "rows_written_by_table": dict(sorted(((k, v) for k, v in tables.items() if v), key=lambda t: -t[1])),
    }


async def main(quick: bool) -> dict[str, Any]:
    total = 50 if quick else 1000
    suffix = uuid.uuid4().hex[:8]
    with scratch("bench-throughput-") as tmp, private_rabbit(Path(tmp) / "rabbitmq") as amqp:
        async with pg_database(f"bench_{suffix}") as db_url:
            ports = Ports()
            sandbox = await serve(ports.services["sandbox"])
            env = {
                **ports.env(),
                **QUIET_MESH,
                "FOUNDRY_DATABASE_URL": db_url,
                "FOUNDRY_AMQP_URL": amqp,
                "FOUNDRY_METRICS_PORT": "0",
                "FOUNDRY_LOG_FORMAT": "console",
                "FOUNDRY_DATA_DIR": str(Path(tmp) / "data"),  # beside, not around, the repositories
            }
            procs = {
                name: spawn(f"services.{name}", env, log_path=Path(tmp) / f"{name}.log") for name in SERVICES
            }
            try:
                for name, proc in procs.items():
                    await asyncio.to_thread(wait_ready, [f"127.0.0.1:{ports.services[name]}"], [], proc)
                targets = Targets(
                    organization=f"127.0.0.1:{ports.services['organization']}",
                    task=f"127.0.0.1:{ports.services['task']}",
                    github_data=f"127.0.0.1:{ports.services['github_data']}",
                    gateway_url="",
                    secret=Settings().internal_auth_secret.get_secret_value(),
                )
                world = await world_on(targets, Path(tmp), ready_task=False)
                metadata = caller_metadata(world.caller)
                per_worker = total // CONCURRENCY
                async with grpc.aio.insecure_channel(targets.task, options=GRPC_OPTIONS) as channel:
                    stub = pb_grpc.TaskServiceStub(channel)

                    def create() -> Any:
                        return stub.CreateTask(
                            pb.CreateTaskRequest(
                                parent=world.organization,
                                task=task_pb2.Task(repository=world.repository, prompt="throughput"),
                                request_id=str(uuid.uuid4()),
                            ),
                            metadata=metadata,
                            timeout=60,
                        )

                    await asyncio.sleep(1.5)  # the world's setup reported to the statistics
                    before = await db_activity(db_url)
                    polls = 2  # this reading and the one after
                    with py_spy(procs["task"].pid, Path(tmp) / "profile.txt") as profile:
                        began = time.perf_counter()
                        creates = await closed_loop(create, concurrency=CONCURRENCY, per_worker=per_worker)
                        created = len(creates.latencies)
                        ready, deadline = 0, time.perf_counter() + (60 if quick else 300)
                        while ready < created and time.perf_counter() < deadline:
                            await asyncio.sleep(0.05)
                            ready = await ready_count(db_url)
                            polls += 1
                        elapsed = time.perf_counter() - began
                    profile_summary = summarize(profile) if profile else {"samples": 0}
            finally:
                for proc in procs.values():
                    await asyncio.to_thread(stop, proc, 15)
                await sandbox.stop(None)
            # After the services exited (their backends then report everything they did).
            database_work = per_task(before, await db_activity(db_url), created, polls)
    rate = round(ready / elapsed, 1)
    met = ready == created and rate >= TARGET_PER_SECOND
    return write(
        NAME,
        quick=quick,
        inputs={
            "tasks": created,
            "concurrency": CONCURRENCY,
            "database": "postgresql",
            "messaging": "rabbitmq",
            "processes": "organization, github_data, task (one each) + instant sandbox in the bench process",
        },
        figures={
            "tasks_ready": ready,
            "seconds_create_to_all_ready": round(elapsed, 2),
            "tasks_per_second": rate,
            "create_phase_seconds": round(creates.wall, 2),
            "create_calls_per_second": round(created / creates.wall, 1),
            "create_errors": dict(creates.errors),
            "create_task_latency": latency_summary(creates.latencies),
            "profile": profile_summary,
            # Per task, create to ready, background included (drain-time writes too).
            "database_per_task": database_work,
        },
        targets={"tasks_per_second": target(f"create -> ready >= {TARGET_PER_SECOND} tasks/s", rate, met)},
        profile_notes="" if met else notes("task service process (create + provisioning)", profile_summary),
    )


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(main(quick))


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
