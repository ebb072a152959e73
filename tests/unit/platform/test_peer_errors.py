"""Peer errors map in one place: a service's channels (`Channels(map_errors=True)`, as every host
builds them) raise a peer's failed call as the same FoundryError, keeping its reason, domain and
metadata (which replica routing reads), while tools' channels keep grpc errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services.platform.channels import Channels, open_channel
from services.platform.errors import Internal, NotFound
from services.platform.identity import Caller
from services.platform.routing import ON_OTHER_REPLICA, owner_of
from services.platform.settings import Settings
from tests.helpers.infra import free_port


class _Peer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Answers Check by the service name asked: "ok", "missing" (NOT_FOUND with ErrorInfo),
    "moved" (ON_OTHER_REPLICA), anything else INTERNAL."""

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> object:
        if request.service == "ok":
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        if request.service in ("missing", "moved"):
            missing = request.service == "missing"
            info = error_details_pb2.ErrorInfo(
                reason="THING_NOT_FOUND" if missing else ON_OTHER_REPLICA,
                domain="foundry.test",
                metadata={"thing": "things/1"} if missing else {"replica": "10.0.0.7:50051"},
            )
            detail = any_pb2.Any()
            detail.Pack(info)
            status = status_pb2.Status(
                code=code_pb2.NOT_FOUND if missing else code_pb2.FAILED_PRECONDITION,
                message="things/1 does not exist" if missing else "lives elsewhere",
                details=[detail],
            )
            await context.abort_with_status(rpc_status.to_status(status))
        await context.abort(grpc.StatusCode.INTERNAL, "disk on fire")


@pytest.fixture
async def peer() -> AsyncIterator[str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(_Peer(), server)
    port = free_port()
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_a_service_channel_raises_the_peer_error_as_the_same_foundry_error(peer: str) -> None:
    channels = Channels(Settings(), "task", map_errors=True)
    stub = health_pb2_grpc.HealthStub(channels.channel_to(peer))
    try:
        ok = await stub.Check(health_pb2.HealthCheckRequest(service="ok"))
        assert ok.status == health_pb2.HealthCheckResponse.SERVING

        with pytest.raises(NotFound) as missing:
            await stub.Check(health_pb2.HealthCheckRequest(service="missing"))
        # About the request: the peer's words, unprefixed, with its reason, domain and metadata.
        assert missing.value.message == "things/1 does not exist"
        assert missing.value.reason == "THING_NOT_FOUND"
        assert missing.value.domain == "foundry.test"
        assert missing.value.metadata == {"thing": "things/1"}
        assert isinstance(missing.value.__cause__, grpc.aio.AioRpcError)

        with pytest.raises(Internal) as broken:
            await stub.Check(health_pb2.HealthCheckRequest(service="boom"))
        assert broken.value.message == "Check: disk on fire"  # a server failure names the peer method

        # Replica routing reads the owner from the mapped error as it did from the grpc one.
        with pytest.raises(Exception) as moved:
            await stub.Check(health_pb2.HealthCheckRequest(service="moved"))
        assert owner_of(moved.value) == "10.0.0.7:50051"
        assert owner_of(missing.value) is None
    finally:
        await channels.close()


async def test_a_tools_channel_keeps_grpc_errors(peer: str) -> None:
    channel = open_channel(peer, Settings(), Caller.service("test"), timeout=5)
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Check(health_pb2.HealthCheckRequest(service="missing"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as moved:
            await stub.Check(health_pb2.HealthCheckRequest(service="moved"))
        assert owner_of(moved.value) == "10.0.0.7:50051"
    finally:
        await channel.close()
