"""Benchmark: what confinement adds to a sandbox's provisioning, bubblewrap against `local`.

For each provider an embedded mesh (`FOUNDRY_SANDBOX__PROVIDER=bubblewrap` or `local`) is started and
its sandbox service driven as the task service drives it during provisioning, one sandbox at a time:

    CreateSandbox → PrepareRepository (real git clone + checkout of a local repository)
                  → StartAgentSession (the offline ACP agent started, `initialize`, `session/new`)

`create_to_agent_ready` is the wall time of those three calls; `first_command` the time of one
`CreateProcess` of `true` until it exited (the bare cost of entering the sandbox). Reported: p50/p99
per provider and the difference. No target: the figure is for the README and the issue.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from foundry.sandbox.v1 import process_pb2, sandbox_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from bench.common import caller_metadata, latency_summary, scratch, write
from bench.driver import GRPC_OPTIONS, QUIET_MESH
from load.mesh import EmbeddedMesh
from load.world import make_git_repos
from services.platform.identity import Caller
from services.sandbox.providers.bubblewrap import available

NAME = "sandbox_confinement"
ORG = "organizations/bench"


async def _provision(stub: Any, metadata: Any, origin: Path) -> tuple[float, float, str]:
    sandbox_id = uuid.uuid4().hex[:12]
    began = time.perf_counter()
    created = await stub.CreateSandbox(
        pb.CreateSandboxRequest(
            parent=ORG,
            sandbox_id=sandbox_id,
            sandbox=sandbox_pb2.Sandbox(
                task=f"{ORG}/tasks/{sandbox_id}", repository=f"{ORG}/repositories/demo"
            ),
        ),
        metadata=metadata,
        timeout=60,
    )
    name = created.sandbox.name
    await stub.PrepareRepository(
        pb.PrepareRepositoryRequest(name=name, clone_url=str(origin), branch=f"bench/{sandbox_id}"),
        metadata=metadata,
        timeout=60,
    )
    await stub.StartAgentSession(
        pb.StartAgentSessionRequest(parent=name, session_id="s1"), metadata=metadata, timeout=60
    )
    ready = time.perf_counter() - began
    began = time.perf_counter()
    process = (
        await stub.CreateProcess(
            pb.CreateProcessRequest(parent=name, process=process_pb2.Process(command="true")),
            metadata=metadata,
            timeout=30,
        )
    ).process
    while True:  # (a benchmark's own clock, not a product path)
        current = (await stub.GetProcess(pb.GetProcessRequest(name=process.name), metadata=metadata)).process
        if current.state == process_pb2.PROCESS_STATE_EXITED:
            break
        await asyncio.sleep(0.002)
    return ready, time.perf_counter() - began, name


async def _measure(provider: str, rounds: int, workdir: Path, origin: Path) -> dict[str, Any]:
    env = {**QUIET_MESH, "FOUNDRY_SANDBOX__PROVIDER": provider}
    mesh = await asyncio.to_thread(EmbeddedMesh.start, env, workdir=workdir)
    try:
        metadata = caller_metadata(Caller.service("task"))
        async with grpc.aio.insecure_channel(mesh.target("sandbox"), options=GRPC_OPTIONS) as channel:
            stub: Any = pb_grpc.SandboxServiceStub(channel)
            await _provision(stub, metadata, origin)  # warm-up: imports, first git, first agent
            ready: list[float] = []
            first: list[float] = []
            for _ in range(rounds):
                r, f, name = await _provision(stub, metadata, origin)
                ready.append(r)
                first.append(f)
                await stub.DestroySandbox(
                    pb.DestroySandboxRequest(name=name, reason="bench"), metadata=metadata
                )
    finally:
        await asyncio.to_thread(mesh.stop)
    return {"create_to_agent_ready": latency_summary(ready), "first_command": latency_summary(first)}


async def main(quick: bool) -> dict[str, Any]:
    why = available()
    rounds = 5 if quick else 30
    with scratch("bench-confine-") as tmp:
        origin = make_git_repos(Path(tmp) / "repos") / "demo"
        figures: dict[str, Any] = {}
        for provider in ("local", "bubblewrap"):
            if provider == "bubblewrap" and why is not None:
                figures[provider] = {"skipped": why}
                continue
            figures[provider] = await _measure(provider, rounds, Path(tmp) / provider, origin)
    if "create_to_agent_ready" in figures.get("bubblewrap", {}):
        for figure in ("create_to_agent_ready", "first_command"):
            for p in ("p50_ms", "p99_ms"):
                added = figures["bubblewrap"][figure][p] - figures["local"][figure][p]
                figures.setdefault("added_by_confinement", {}).setdefault(figure, {})[p] = round(added, 2)
    return write(
        NAME,
        quick=quick,
        inputs={"rounds": rounds, "agent": "fake (offline ACP agent)", "repository": "local, one commit"},
        figures=figures,
        targets={},
    )


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(main(quick))
