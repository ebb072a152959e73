"""Where `ReplicaRoutes` (services/platform/routing.py) sends calls: a placing call for a resource
with no known owner goes round the replicas in turn, whatever other calls the balanced channel
carries in between; a known owner gets every call. Two real gRPC servers over loopback, each
answering one method with its own address."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from services.platform.channels import Channels
from services.platform.routing import ReplicaRoutes, first_segments
from services.platform.settings import Settings

WHO = "/test.Replica/Who"


class WhoStub:
    """`await stub.Who(b"")`: the answering replica's address, as bytes."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Who: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(WHO)


@pytest.fixture
async def replicas() -> AsyncIterator[list[str]]:
    servers, addresses = [], []
    for _ in range(2):
        server = grpc.aio.server()
        address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"

        async def who(request: bytes, context: Any, answer: bytes = address.encode()) -> bytes:
            return answer

        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(who)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Replica", {"Who": handler}),)
        )
        await server.start()
        servers.append(server)
        addresses.append(address)
    try:
        yield addresses
    finally:
        for server in servers:
            await server.stop(None)


async def _who(stub: WhoStub) -> str:
    return bytes(await stub.Who(b"")).decode()


async def test_placing_calls_alternate_between_replicas_whatever_the_balanced_channel_carries(
    replicas: list[str], settings_factory: Callable[..., Settings]
) -> None:
    # `ipv4:` with two addresses: one target that resolves to both replicas, as a headless service.
    settings = settings_factory(sandbox_target="ipv4:" + ",".join(replicas))
    peers = Channels(settings, "task")
    routes: ReplicaRoutes[WhoStub] = ReplicaRoutes(peers, "sandbox", WhoStub, first_segments(4))
    try:
        # Both channels connected to both replicas first (round robin picks among READY ones only).
        for channel in (peers.channel("sandbox"), peers.placement_channel("sandbox")):
            seen = {await _who(WhoStub(channel)) for _ in range(20)}
            assert seen == set(replicas), seen
        placed: list[str] = []
        for n in range(6):
            name = f"organizations/acme/sandboxes/s{n}"
            # A balanced call between placements (ListAgents, GetSandbox, ...): sharing that channel's
            # round robin, every placement would land on the same replica.
            await routes.call(name, _who)
            chosen = await routes.call(name, _who, placing=True)
            routes.remember(name, chosen)
            placed.append(chosen)
        assert sorted(set(placed)) == sorted(replicas), placed
        assert all(a != b for a, b in itertools.pairwise(placed)), placed  # in turn
        # A known owner gets the call, placing or not.
        owner = placed[0]
        for placing in (False, True):
            got = await routes.call("organizations/acme/sandboxes/s0/processes/p", _who, placing=placing)
            assert got == owner
    finally:
        await peers.close()
