"""Benchmark: time to agent ready — CreateTask to the first session ready, with and without the warm pool.

Two embedded meshes (SQLite, in-process broker, `FOUNDRY_SANDBOX__PROVIDER=bubblewrap` where the
kernel allows it, else `local` and said so in the inputs; the offline ACP agent; a real local git
repository) get one task at a time, as a user creating tasks would. Measured from the CreateTask
call until the task's first session has its agent session (sandbox created or claimed, repository
checked out on the task's branch, agent started, `session/new`), as a client sees it: WatchTask
shows the task READY (an earlier version polled GetSession every 5 ms, which competed with the mesh
for the same 2 cores and added ~100-200 ms).

`cold`: `warm_pool_size=0`, every task provisions from scratch. `warm`: `warm_pool_size=1`; the first
task of the repository (the warm-up, not measured) gives it a pool, and before each measured task
the benchmark waits until the pool holds a warm sandbox again (a user's pace: refill takes about a
second), read from the mesh's sandbox database; each measured task's sandbox is checked to be
`from_warm_pool`.

Targets (issue 17, item 4): with the pool p50 ≤ 300 ms and p99 ≤ 1000 ms.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from typing import Any

from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from bench.common import latency_summary, target, write
from bench.driver import QUIET_MESH, embedded_world
from load.mesh import EmbeddedMesh
from services.sandbox.providers.bubblewrap import available

NAME = "agent_ready"
TARGET_P50_MS = 300.0
TARGET_P99_MS = 1000.0
# Where a warm task's time goes, from the embedded mesh's INFO log of one run (2026-12-06 22:22 UTC,
# 2 shared cores): written into the result when a target is missed.
PROFILE_NOTES = (
    "warm path, one task, create -> ready seen on WatchTask 300 ms: CreateTask 12 ms; queue hop to the "
    "provisioning delivery 23 ms; the organization reads of the whole delivery (egress, permission "
    "policy, model keys) together 20 ms; CreateSandbox (warm claim) 22 ms; PrepareRepository 69 ms "
    "(ls-remote, two git config and one checkout under bubblewrap; since 2026-12-07 the identity is "
    "written in the checkout's process and the two branch-name checks run at once); StartAgent 5 ms (the "
    "warm agent); "
    "StartAgentSession 45 ms (session/new); four step completions 15-27 ms each (one task transaction "
    "with its watch change, summary event and audit item, claiming the next step); the WatchTask "
    "event 11 ms. The organization's summary and audit handlers (10-35 ms each) run meanwhile on the "
    "same cores. What would take it further: the claim, switch and session in one sandbox call, and "
    "fewer transactions per step. Since 2026-12-07 13:00 UTC the git state after the switch takes one "
    "confined process instead of seven, and PrepareRepository asks its read-only questions at once: "
    "warm p50 216-221 ms, p99 290 ms on this machine (was 306-319 ms). On a slower machine "
    "(2026-12-07 23:30 UTC) the embedded process used 305 ms of CPU per 333 ms warm task: the path is "
    "CPU-bound in that one process (py-spy: SQLAlchemy 42 %, asyncio 18 %, aiosqlite 16 %), where every "
    "service's transactions for the task (steps, summaries, audit, outbox relays) share one core; a "
    "refill that started during the claiming task's steps (a periodic pass ignored the hold after a "
    "claim) cost about 30 ms of p50 until it was fixed."
)


async def _one(tasks: Any, metadata: Any, world: Any) -> tuple[float, str]:
    """Seconds from CreateTask until WatchTask shows the task READY (the stage is set in the
    transaction that gives the first session its agent session), and the task's name."""
    began = time.perf_counter()
    created = await tasks.CreateTask(
        pb.CreateTaskRequest(
            parent=world.organization,
            task=task_pb2.Task(repository=world.repository, prompt="benchmark: say hello"),
            request_id=str(uuid.uuid4()),
        ),
        metadata=metadata,
        timeout=30,
    )
    name = created.task.name
    # Watched, not polled: a poll loop would compete with the mesh for the same cores.
    stream = tasks.WatchTask(pb.WatchTaskRequest(name=name), metadata=metadata, timeout=120)
    try:
        async for response in stream:
            for item in response.event.items:
                task = task_pb2.Task()
                if not (item.resource.Unpack(task) and task.name == name):
                    continue
                if task.provisioning.stage == task_pb2.PROVISIONING_STAGE_READY:
                    return time.perf_counter() - began, name
                if task.status == task_pb2.TASK_STATUS_ERROR:
                    raise RuntimeError(f"{name} failed: {task.status_message}")
    finally:
        stream.cancel()
    raise TimeoutError(f"{name}: the watch ended before the task was ready")


def _warm_count(mesh: EmbeddedMesh) -> int:
    path = mesh.workdir / "data" / "sandbox.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        return int(db.execute("SELECT count(*) FROM sandboxes WHERE pool = 'warm'").fetchone()[0])


async def _wait_warm(mesh: EmbeddedMesh) -> None:
    deadline = time.monotonic() + 60
    while await asyncio.to_thread(_warm_count, mesh) < 1:
        if time.monotonic() > deadline:
            raise TimeoutError("the warm pool was not refilled within 60 s")
        await asyncio.sleep(0.05)


async def _series(provider: str, pool: int, rounds: int) -> dict[str, Any]:
    env = {
        **QUIET_MESH,
        "FOUNDRY_SANDBOX__PROVIDER": provider,
        "FOUNDRY_SANDBOX__WARM_POOL_SIZE": str(pool),
        "FOUNDRY_SANDBOX__WARM_POOL_REFILL_SECONDS": "0.5",
    }
    async with embedded_world(env, "bench-agent-ready-") as e:
        await _one(e.tasks, e.metadata, e.world)  # warm-up: imports, first git, first agent; the pool
        samples: list[float] = []
        claimed = 0
        for _ in range(rounds):
            if pool:
                await _wait_warm(e.mesh)
            seconds, name = await _one(e.tasks, e.metadata, e.world)
            samples.append(seconds)
            task = (await e.tasks.GetTask(pb.GetTaskRequest(name=name), metadata=e.metadata)).task
            got = await e.sandboxes.GetSandbox(
                sb_pb.GetSandboxRequest(name=task.sandbox.name), metadata=e.metadata
            )
            box = got.sandbox
            claimed += int(box.from_warm_pool)
    return {**latency_summary(samples), "from_warm_pool": claimed}


async def main(quick: bool) -> dict[str, Any]:
    rounds = 5 if quick else 30
    why = available()
    provider = "bubblewrap" if why is None else "local"
    cold = await _series(provider, 0, rounds)
    warm = await _series(provider, 1, rounds)
    met50, met99 = warm["p50_ms"] <= TARGET_P50_MS, warm["p99_ms"] <= TARGET_P99_MS
    return write(
        NAME,
        quick=quick,
        inputs={
            "rounds": rounds,
            "sequential": True,
            "provider": provider + ("" if why is None else f" (bubblewrap unavailable: {why})"),
            "agent": "fake (offline ACP agent)",
            "repository": "local, one commit",
            "observed_by": "WatchTask (provisioning stage READY)",
            "warm_pool_size": 1,
            "warm": "each measured task created with a warm sandbox in the pool",
        },
        figures={"cold": cold, "warm": warm},
        profile_notes="" if met50 and met99 else PROFILE_NOTES,
        targets={
            "warm_p50_ms": target(f"<= {TARGET_P50_MS:.0f}", warm["p50_ms"], met50),
            "warm_p99_ms": target(f"<= {TARGET_P99_MS:.0f}", warm["p99_ms"], met99),
            "cold_p50_ms": target("(reported)", cold["p50_ms"], True),
            "cold_p99_ms": target("(reported)", cold["p99_ms"], True),
        },
    )


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(main(quick))
