"""Benchmark 4: read RPC throughput of a real service against a bare grpc.aio echo server.

The same closed-loop client (grpc.aio, 50 concurrent calls on one channel) drives TaskService.GetTask
on the embedded mesh for a fixed time, then /bench.Bare/Echo of a separate process returning the
same bytes (a serialized GetTaskResponse, so payloads match). Target: real / bare ≥ 0.6.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc

from bench.common import caller_metadata, scratch, target, write
from bench.driver import GRPC_OPTIONS, QUIET_MESH, bare_server, for_duration, targets_of, world_on
from bench.profiling import notes, py_spy, summarize
from load.mesh import EmbeddedMesh

NAME = "read_throughput"
CONCURRENCY = 50


async def main(quick: bool) -> dict[str, Any]:
    seconds = 1.0 if quick else 10.0
    with scratch("bench-read-") as tmp:
        mesh = await asyncio.to_thread(EmbeddedMesh.start, QUIET_MESH)
        try:
            world = await world_on(targets_of(mesh), Path(tmp), ready_task=True)
            metadata = caller_metadata(world.caller)
            async with grpc.aio.insecure_channel(mesh.target("task"), options=GRPC_OPTIONS) as channel:
                stub: Any = pb_grpc.TaskServiceStub(channel)
                request = pb.GetTaskRequest(name=world.task)

                def get() -> Any:
                    return stub.GetTask(request, metadata=metadata, timeout=30)

                payload = (await get()).SerializeToString()
                await for_duration(get, concurrency=CONCURRENCY, seconds=1)
                with py_spy(mesh.proc.pid, Path(tmp) / "profile.txt") as profile:
                    real = await for_duration(get, concurrency=CONCURRENCY, seconds=seconds)
                profile_summary = summarize(profile) if profile else {"samples": 0}
            async with bare_server() as bare_channel:
                echo: Any = bare_channel.unary_unary("/bench.Bare/Echo")
                await for_duration(lambda: echo(payload), concurrency=CONCURRENCY, seconds=1)
                bare = await for_duration(lambda: echo(payload), concurrency=CONCURRENCY, seconds=seconds)
        finally:
            await asyncio.to_thread(mesh.stop)
    real_rps, bare_rps = len(real.latencies) / real.wall, len(bare.latencies) / bare.wall
    ratio = round(real_rps / max(bare_rps, 1e-9), 3)
    met = ratio >= 0.6
    return write(
        NAME,
        quick=quick,
        inputs={
            "concurrency": CONCURRENCY,
            "seconds_each": seconds,
            "payload_bytes": len(payload),
            "client": "grpc.aio, one channel, this process",
            "real": "TaskService.GetTask on the embedded mesh (SQLite), signed caller + membership check",
            "bare": "bench.bare_server Echo (generic handler, bytes in/out), own process",
        },
        figures={
            "get_task_rps": round(real_rps, 1),
            "bare_echo_rps": round(bare_rps, 1),
            "ratio": ratio,
            "errors": {"get_task": dict(real.errors), "bare_echo": dict(bare.errors)},
            "profile": profile_summary,
        },
        targets={"ratio": target("GetTask rps / bare echo rps >= 0.6", ratio, met)},
        profile_notes="" if met else notes("embedded mesh process during GetTask", profile_summary),
    )


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(main(quick))


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=2))
