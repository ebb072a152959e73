"""grpc.health.v1 with separate liveness and readiness.

- service ""           liveness: SERVING from start until the process exits (stays SERVING while draining,
                       so Kubernetes does not restart a pod that is shutting down on purpose).
- service "readiness"  readiness: SERVING once started, NOT_SERVING the moment the drain begins.
- each full service name (e.g. `foundry.task.v1.TaskService`) follows readiness.
- service "broker"     the message broker connection: NOT_SERVING while it is lost after start-up (and
                       being re-established), SERVING again once it is back. It does not turn
                       readiness off: requests do not need the broker (work and events are outbox rows,
                       relayed when it is back), and readiness is what clients and Kubernetes route by,
                       so a broker outage taking every replica of every service out of rotation at
                       once would turn a delay into an outage. The admin port's /readyz reports it.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

READINESS = "readiness"
BROKER = "broker"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """Owns the health servicer of one gRPC server."""

    def __init__(self, server: grpc.aio.Server, service_names: list[str]) -> None:
        self.servicer = health.aio.HealthServicer()
        self.service_names = service_names
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def starting(self) -> None:
        await self.servicer.set("", SERVING)
        for name in (READINESS, BROKER, *self.service_names):
            await self.servicer.set(name, NOT_SERVING)

    async def ready(self) -> None:
        for name in (READINESS, *self.service_names):
            await self.servicer.set(name, SERVING)

    async def broker(self, unavailable_reason: str) -> None:
        await self.servicer.set(BROKER, NOT_SERVING if unavailable_reason else SERVING)

    async def not_ready(self) -> None:
        for name in (READINESS, *self.service_names):
            await self.servicer.set(name, NOT_SERVING)
