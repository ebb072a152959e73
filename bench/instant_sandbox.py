"""An instant sandbox service for throughput benchmarks: the SandboxService RPCs that task
provisioning calls (CreateSandbox, PrepareRepository, StartAgent, StartAgentSession, plus
CloseAgentSession and DestroySandbox) answered at once from memory, idempotent by id, so the
figure measures the task service, its database and its queue rather than git clones and agent
processes. Served in the benchmark's own process on a free port (`serve`), or as its own process:
`python -m bench.instant_sandbox --port N` (bench/summary_latency.py, so that its calls do not share
the measuring client's event loop)."""

from __future__ import annotations

from typing import Any

import grpc
from foundry.sandbox.v1 import agent_session_pb2, sandbox_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc


class InstantSandbox(sb_grpc.SandboxServiceServicer):
    def __init__(self) -> None:
        self.sandboxes: dict[str, sandbox_pb2.Sandbox] = {}
        self.sessions: dict[str, agent_session_pb2.AgentSession] = {}

    async def CreateSandbox(self, request: Any, context: Any) -> Any:
        name = f"{request.parent}/sandboxes/{request.sandbox_id}"
        created = name not in self.sandboxes
        if created:
            self.sandboxes[name] = sandbox_pb2.Sandbox(
                name=name,
                task=request.sandbox.task,
                repository=request.sandbox.repository,
                provider="instant",
                state=sandbox_pb2.SANDBOX_STATE_RUNNING,
            )
        return sb_pb2.CreateSandboxResponse(sandbox=self.sandboxes[name], created=created)

    async def PrepareRepository(self, request: Any, context: Any) -> Any:
        box = self.sandboxes[request.name]
        box.checkout.CopyFrom(
            sandbox_pb2.RepositoryCheckout(
                clone_url=request.clone_url,
                branch=request.branch,
                base_branch=request.base_branch,
                path=f"/instant/{request.name}",
            )
        )
        return sb_pb2.PrepareRepositoryResponse(sandbox=box)

    async def StartAgent(self, request: Any, context: Any) -> Any:
        return sb_pb2.StartAgentResponse(
            agent_connection=agent_session_pb2.AgentConnection(
                name=f"{request.parent}/agents/instant",
                state=agent_session_pb2.AGENT_CONNECTION_STATE_READY,
            )
        )

    async def StartAgentSession(self, request: Any, context: Any) -> Any:
        name = f"{request.parent}/sessions/{request.session_id}"
        session = self.sessions.setdefault(
            name, agent_session_pb2.AgentSession(name=name, state=agent_session_pb2.AGENT_SESSION_STATE_IDLE)
        )
        return sb_pb2.StartAgentSessionResponse(agent_session=session)

    async def PromptSession(self, request: Any, context: Any) -> Any:
        # The task's prompt is its first turn: taken, and left running (no agent here to end it).
        turn = agent_session_pb2.Turn(
            name=f"{request.name}/turns/{request.turn_id}", state=agent_session_pb2.TURN_STATE_RUNNING
        )
        return sb_pb2.PromptSessionResponse(turn=turn)

    async def CancelTurn(self, request: Any, context: Any) -> Any:
        turn = agent_session_pb2.Turn(name=request.name, state=agent_session_pb2.TURN_STATE_CANCELLED)
        return sb_pb2.CancelTurnResponse(turn=turn)

    async def CloseAgentSession(self, request: Any, context: Any) -> Any:
        session = self.sessions.get(request.name) or agent_session_pb2.AgentSession(name=request.name)
        session.state = agent_session_pb2.AGENT_SESSION_STATE_CLOSED
        return sb_pb2.CloseAgentSessionResponse(agent_session=session)

    async def DestroySandbox(self, request: Any, context: Any) -> Any:
        box = self.sandboxes.get(request.name) or sandbox_pb2.Sandbox(name=request.name)
        box.state = sandbox_pb2.SANDBOX_STATE_DESTROYED
        return sb_pb2.DestroySandboxResponse(sandbox=box)


async def serve(port: int) -> grpc.aio.Server:
    """Start the instant sandbox on 127.0.0.1:`port` (health is served for readiness probes)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    # Only the provisioning RPCs are implemented; the rest answer UNIMPLEMENTED (servicer defaults).
    sb_grpc.add_SandboxServiceServicer_to_server(InstantSandbox(), server)  # type: ignore[abstract]
    checker = health.aio.HealthServicer()
    await checker.set("readiness", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def _serve_forever(port: int) -> None:
    server = await serve(port)
    await server.wait_for_termination()


if __name__ == "__main__":
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(prog="python -m bench.instant_sandbox")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(_serve_forever(parser.parse_args().port))
