"""Benchmark 5: 1,000 SSE subscribers on one organization through one gateway.

The services run as the embedded mesh; the gateway under test is its own `python -m gateway` process
(so its memory is measurable) pointed at them. N browser streams (`GET /v1/stream?topic=
organization:...`, one HTTP connection each, same signed-in user) open and wait for their snapshot.
Figures: upstream Watch streams the gateway opened for them (its admin /metrics,
foundry_gateway_upstream_streams{topic_type="organization"}; must be 1), gateway RSS growth per
subscriber (target ≤ 50 KB), and the time for one change (a new task) to reach every subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc

from bench.common import caller_metadata, latency_summary, scratch, target, write
from bench.driver import QUIET_MESH, targets_of, world_on
from bench.event_latency import sign_in
from load.mesh import EmbeddedMesh, free_port, spawn, stop, wait_ready

NAME = "sse_fanout"
CONNECT_PARALLELISM = 50


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def metric(admin_port: int, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{admin_port}/metrics", follow_redirects=True)).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Subscriber:
    """One browser tab: waits for its snapshot, then records when the next upsert arrives."""

    def __init__(self) -> None:
        self.snapshot = asyncio.Event()
        self.upsert_at: float | None = None

    async def follow(self, http: httpx.AsyncClient, topic: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            response = await http.send(
                http.build_request("GET", "/v1/stream", params={"topic": topic}), stream=True
            )
        try:
            async for line in response.aiter_lines():
                if line == "event: snapshot":
                    self.snapshot.set()
                elif line == "event: upsert" and self.snapshot.is_set() and self.upsert_at is None:
                    self.upsert_at = time.perf_counter()
        finally:
            await response.aclose()


async def main(quick: bool) -> dict[str, Any]:
    subscribers = 100 if quick else 1000
    with scratch("bench-sse-") as tmp:
        mesh = await asyncio.to_thread(EmbeddedMesh.start, QUIET_MESH)
        gw_port, admin_port = free_port(), free_port()
        gateway = spawn(
            "gateway",
            {
                **mesh.ports.env(),
                **QUIET_MESH,
                "FOUNDRY_GATEWAY_PORT": str(gw_port),
                "FOUNDRY_METRICS_PORT": str(admin_port),
                "FOUNDRY_LOG_FORMAT": "console",
            },
            log_path=Path(tmp) / "gateway.log",
        )
        tasks: list[asyncio.Task[None]] = []
        try:
            url = f"http://127.0.0.1:{gw_port}"
            await asyncio.to_thread(wait_ready, [], [url], gateway)
            world = await world_on(targets_of(mesh), Path(tmp), ready_task=False)
            topic = f"organization:{world.organization}"
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
            async with httpx.AsyncClient(
                base_url=url, timeout=httpx.Timeout(60, read=None), limits=limits
            ) as http:
                await sign_in(http, world.login)
                warm = (
                    Subscriber()
                )  # pays the gateway's one-off costs (imports, first upstream) before measuring
                warm_task = asyncio.create_task(warm.follow(http, topic, asyncio.Semaphore(1)))
                await asyncio.wait_for(warm.snapshot.wait(), 30)
                warm_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await warm_task
                await asyncio.sleep(0.5)
                upstream_before = await metric(
                    admin_port, "foundry_gateway_upstream_streams", topic_type="organization"
                )
                rss_before = rss_bytes(gateway.pid)
                gate = asyncio.Semaphore(CONNECT_PARALLELISM)
                subs = [Subscriber() for _ in range(subscribers)]
                began = time.perf_counter()
                tasks = [asyncio.create_task(s.follow(http, topic, gate)) for s in subs]
                await asyncio.wait_for(asyncio.gather(*(s.snapshot.wait() for s in subs)), 300)
                connect_seconds = time.perf_counter() - began
                await asyncio.sleep(1.0)  # let allocations settle
                rss_after = rss_bytes(gateway.pid)
                upstream = await metric(
                    admin_port, "foundry_gateway_upstream_streams", topic_type="organization"
                )
                attached = await metric(admin_port, "foundry_gateway_subscribers", topic_type="organization")
                async with grpc.aio.insecure_channel(mesh.target("task")) as channel:
                    changed_at = time.perf_counter()
                    await pb_grpc.TaskServiceStub(channel).CreateTask(
                        pb.CreateTaskRequest(
                            parent=world.organization,
                            task=task_pb2.Task(repository=world.repository, prompt="fan-out"),
                            request_id=str(uuid.uuid4()),
                        ),
                        metadata=caller_metadata(world.caller),
                        timeout=30,
                    )
                deadline = time.perf_counter() + 60
                # Receipt times are stamped by the readers; this loop only decides when to stop.
                while any(s.upsert_at is None for s in subs) and time.perf_counter() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                fanout = [s.upsert_at - changed_at for s in subs if s.upsert_at is not None]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            stop(gateway, timeout=10)
            await asyncio.to_thread(mesh.stop)
    per_sub_kb = round((rss_after - rss_before) / subscribers / 1024, 2)
    return write(
        NAME,
        quick=quick,
        inputs={
            "subscribers": subscribers,
            "topic": "organization",
            "connect_parallelism": CONNECT_PARALLELISM,
            "gateway": "python -m gateway, own process, in front of the embedded mesh",
        },
        figures={
            "upstream_streams": upstream,
            "upstream_streams_before_subscribers": upstream_before,
            "subscribers_attached": attached,
            "gateway_rss_before_mb": round(rss_before / 2**20, 1),
            "gateway_rss_after_mb": round(rss_after / 2**20, 1),
            "gateway_kb_per_subscriber": per_sub_kb,
            "connect_all_seconds": round(connect_seconds, 2),
            "fanout_one_change": {**latency_summary(fanout), "received": len(fanout)},
        },
        targets={
            "upstream_streams": target("1 upstream Watch for all subscribers", upstream, upstream == 1),
            "kb_per_subscriber": target(
                "gateway memory <= 50 KB per subscriber", per_sub_kb, per_sub_kb <= 50
            ),
        },
    )


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(main(quick))


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
