"""The service gRPC server's transport options: SO_REUSEPORT off, so a port clash fails loudly instead
of two processes silently sharing one port (grpc's default on Linux lets a second server bind it);
and a connection age whose grace outlasts every Watch stream, which ends with END `rotate`, never with
UNAVAILABLE from the transport."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from foundry.common.v1 import watch_pb2
from foundry.organization.v1 import organization_service_pb2 as pb
from foundry.organization.v1 import organization_service_pb2_grpc as pb_grpc

from services.platform.server.host import server_options
from services.platform.settings import Settings, WatchSettings
from tests.helpers.infra import unique_name
from tests.helpers.mesh import running


async def test_a_taken_port_fails_to_bind_instead_of_being_shared() -> None:
    holder = grpc.aio.server()  # grpc defaults: SO_REUSEPORT on
    port = holder.add_insecure_port("127.0.0.1:0")
    await holder.start()
    try:
        sharing = grpc.aio.server()
        assert sharing.add_insecure_port(f"127.0.0.1:{port}") == port  # what our option prevents
        with pytest.raises(RuntimeError):
            grpc.aio.server(options=server_options(Settings())).add_insecure_port(f"127.0.0.1:{port}")
    finally:
        await holder.stop(None)


@pytest.mark.parametrize("stream_seconds", [60.0, 600.0, 3600.0])
def test_the_connection_grace_outlasts_the_longest_stream(stream_seconds: float) -> None:
    options = dict(server_options(Settings(watch=WatchSettings(max_stream_seconds=stream_seconds))))
    assert options["grpc.max_connection_age_grace_ms"] > stream_seconds * 1000


async def test_a_stream_outlives_the_connection_age_and_ends_with_rotate(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        name_prefix=unique_name("foundry"),
        metrics_port=0,
        log_format="console",
        grpc_max_connection_age_seconds=1.0,
        watch=WatchSettings(max_stream_seconds=4.0, bookmark_seconds=1.0),
    )
    root = tmp_path / "repos"
    root.mkdir()
    async with running(settings, ["organization"]) as mesh:
        stub = pb_grpc.OrganizationServiceStub(mesh.channel("organization"))
        org = (
            await stub.ConnectLocalOrganization(pb.ConnectLocalOrganizationRequest(root_path=str(root)))
        ).organization
        began = time.monotonic()
        kinds: list[int] = []
        async for response in stub.WatchOrganizationSummary(
            pb.WatchOrganizationSummaryRequest(name=f"{org.name}/summary")
        ):
            kinds.append(response.event.kind)
            if response.event.kind == watch_pb2.WATCH_EVENT_KIND_END:
                assert (
                    response.event.end_reason == watch_pb2.WATCH_END_REASON_ROTATE
                    and response.event.resume_token
                )
                break
        lived = time.monotonic() - began
        # The connection reached its age (GOAWAY at 1 s) long before the stream's own rotation.
        assert lived > 3.0, (lived, kinds)
        assert watch_pb2.WATCH_EVENT_KIND_BOOKMARK in kinds
