"""Client-side drivers shared by the benchmarks: closed-loop callers, the bare baseline server
process, and a world (user, organization, repository) on a mesh."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc
from foundry.task.v1 import task_service_pb2_grpc as task_grpc

from bench.common import caller_metadata, scratch
from load.config import Targets
from load.mesh import EmbeddedMesh, free_port, spawn, stop
from load.world import World, set_up
from services.platform.settings import Settings

GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


@dataclass
class Loop:
    """Outcome of a closed loop: latencies of the successful calls (s), wall time (s), failures by code."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return len(self.latencies) + sum(self.errors.values())


async def closed_loop(call: Callable[[], Awaitable[object]], *, concurrency: int, per_worker: int) -> Loop:
    """`concurrency` workers each await `call()` `per_worker` times back to back. A failed RPC is
    counted in `errors` (by status code) and the worker goes on."""
    loop = Loop()

    async def worker() -> None:
        for _ in range(per_worker):
            began = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                loop.errors[exc.code().name] += 1
                continue
            loop.latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    loop.wall = time.perf_counter() - began
    return loop


async def for_duration(call: Callable[[], Awaitable[object]], *, concurrency: int, seconds: float) -> Loop:
    """`concurrency` workers call back to back for `seconds` (failures counted, not raised)."""
    loop = Loop()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                loop.errors[exc.code().name] += 1
                continue
            loop.latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    loop.wall = time.perf_counter() - began
    return loop


async def open_loop(
    call: Callable[[], Awaitable[object]], *, concurrency: int, rate: float, seconds: float
) -> Loop:
    """`concurrency` callers share a fixed arrival rate of `rate` calls per second for `seconds`: each
    caller starts a call every `concurrency / rate` seconds (phases staggered), or at once when its
    previous call overran its slot. Unlike `closed_loop`, latency then measures one call under a
    stated load instead of the queueing of a saturated server."""
    loop = Loop()
    period = concurrency / rate
    began = time.perf_counter()

    async def caller(index: int) -> None:
        due = began + period * index / concurrency
        while due < began + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            started = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                loop.errors[exc.code().name] += 1
            else:
                loop.latencies.append(time.perf_counter() - started)
            due += period

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    loop.wall = time.perf_counter() - began
    return loop


@contextlib.asynccontextmanager
async def bare_server() -> AsyncIterator[grpc.aio.Channel]:
    """Start `python -m bench.bare_server` (SQLite file in a temp dir) and yield a channel to it."""
    with tempfile.TemporaryDirectory(prefix="foundry-bare-") as tmp:
        port = free_port()
        proc = spawn(
            "bench.bare_server",
            {},
            log_path=Path(tmp) / "bare.log",
            args=["--port", str(port), "--db-url", f"sqlite+aiosqlite:///{tmp}/bare.sqlite3"],
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
        try:
            await asyncio.wait_for(channel.channel_ready(), 30)
            yield channel
        finally:
            await channel.close()
            stop(proc, timeout=5)


def targets_of(mesh: EmbeddedMesh) -> Targets:
    return Targets(
        organization=mesh.target("organization"),
        task=mesh.target("task"),
        github_data=mesh.target("github_data"),
        gateway_url=mesh.gateway_url,
        secret=Settings().internal_auth_secret.get_secret_value(),
    )


async def world_on(targets: Targets, workdir: Path, *, ready_task: bool) -> World:
    """A signed-in user, a local organization on a fresh git repository under `workdir`, and
    (with `ready_task`) an idle task."""
    return await asyncio.to_thread(
        set_up, targets, login="bench", repos_dir=workdir / "repos", ready_task=ready_task
    )


QUIET_MESH = {"FOUNDRY_DRAIN__GRACE_SECONDS": "2", "FOUNDRY_LOG_LEVEL": "ERROR"}


@dataclass
class EmbeddedWorld:
    """An embedded mesh with a world on it, and task and sandbox stubs speaking as its user."""

    mesh: EmbeddedMesh
    world: World
    metadata: tuple[tuple[str, str], ...]
    tasks: Any  # TaskServiceStub
    sandboxes: Any  # SandboxServiceStub


@contextlib.asynccontextmanager
async def embedded_world(env: Mapping[str, str], prefix: str) -> AsyncIterator[EmbeddedWorld]:
    """Start an embedded mesh with `env`, set up a world (no task) in a scratch directory named
    `prefix…`, and yield it with open stubs; the mesh is stopped and the directory removed after."""
    with scratch(prefix) as tmp:
        mesh = await asyncio.to_thread(EmbeddedMesh.start, dict(env))
        try:
            world = await world_on(targets_of(mesh), Path(tmp), ready_task=False)
            async with (
                grpc.aio.insecure_channel(mesh.target("task"), options=GRPC_OPTIONS) as task_channel,
                grpc.aio.insecure_channel(mesh.target("sandbox"), options=GRPC_OPTIONS) as sandbox_channel,
            ):
                yield EmbeddedWorld(
                    mesh,
                    world,
                    caller_metadata(world.caller),
                    task_grpc.TaskServiceStub(task_channel),
                    sb_grpc.SandboxServiceStub(sandbox_channel),
                )
        finally:
            await asyncio.to_thread(mesh.stop)
