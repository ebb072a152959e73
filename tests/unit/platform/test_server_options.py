"""The service gRPC server turns SO_REUSEPORT off, so a port clash fails loudly instead of two
processes silently sharing one port (grpc's default on Linux lets a second server bind it)."""

from __future__ import annotations

import grpc
import pytest

from services.platform.server.host import SERVER_OPTIONS


async def test_a_taken_port_fails_to_bind_instead_of_being_shared() -> None:
    holder = grpc.aio.server()  # grpc defaults: SO_REUSEPORT on
    port = holder.add_insecure_port("127.0.0.1:0")
    await holder.start()
    try:
        sharing = grpc.aio.server()
        assert sharing.add_insecure_port(f"127.0.0.1:{port}") == port  # what our option prevents
        with pytest.raises(RuntimeError):
            grpc.aio.server(options=SERVER_OPTIONS).add_insecure_port(f"127.0.0.1:{port}")
    finally:
        await holder.stop(None)
