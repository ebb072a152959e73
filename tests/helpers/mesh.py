"""Run real service hosts in the test's event loop (port 0, SQLite in a temp dir or PostgreSQL) and
talk to them through real gRPC channels that carry a signed caller identity."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from services.platform.channels import open_channel
from services.platform.identity import Caller
from services.platform.messaging.broker import Broker
from services.platform.process import make_broker
from services.platform.server.host import ServiceHost
from services.platform.settings import ServiceName, Settings
from tests.helpers.infra import free_port

ALICE = Caller(subject="user/1001", login="alice")
BOB = Caller(subject="user/1002", login="bob")


def with_free_ports(settings: Settings) -> Settings:
    """A copy of `settings` whose four service ports are free ports (peers find each other through them)."""
    ports = {f"{name}_port": free_port() for name in ("organization", "task", "github_data", "sandbox")}
    return settings.model_copy(update={**ports, "gateway_port": free_port()})


@dataclass
class Mesh:
    settings: Settings
    broker: Broker
    hosts: dict[str, ServiceHost] = field(default_factory=dict)
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, service: ServiceName, caller: Caller = ALICE) -> grpc.aio.Channel:
        """A channel to `service` speaking as `caller` (closed with the mesh)."""
        ch = open_channel(f"127.0.0.1:{self.hosts[service].port}", self.settings, caller, timeout=30)
        self._channels.append(ch)
        return ch


@contextlib.asynccontextmanager
async def running(
    settings: Settings, services: Sequence[ServiceName], *, broker: Broker | None = None
) -> AsyncIterator[Mesh]:
    """Start `services` (with their real wiring) on free ports; drain and close them afterwards."""
    from services.embedded import service_wiring

    settings = with_free_ports(settings)
    broker = broker or make_broker(settings)
    await broker.connect()
    mesh = Mesh(settings, broker)
    try:
        for name in services:
            host = ServiceHost(settings, name, broker, service_wiring(name))
            mesh.hosts[name] = host
            await host.start()
        yield mesh
    finally:
        for ch in mesh._channels:
            await ch.close()
        for host in reversed(list(mesh.hosts.values())):
            await host.begin_drain()
            await host.wait_idle(5)
            await host.close()
        await broker.close()
