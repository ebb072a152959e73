"""A peer that was down for a while is called again soon after it is back.

gRPC core spaces a channel's reconnect attempts by a backoff that grows 1.6x from 1 s up to
120 s, and while the channel waits, every call fails UNAVAILABLE at once (the mesh's retry policy
retries for ~1.5 s only). With those defaults a peer restarted after a 10 s outage is reached again
only at the next attempt, ~16 s after it went away; after a minute's outage up to ~40 s late. The
mesh's channels cap the backoff (`RECONNECT_BACKOFF_MAX_MS`), so a restarted peer is called again
within about that cap, however long it was down."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.platform.channels import RECONNECT_BACKOFF_MAX_MS, open_channel
from services.platform.identity import Caller
from services.platform.server.health import READINESS
from services.platform.settings import Settings
from tests.helpers.infra import free_port

DOWN = 10.0  # seconds the peer is away: five reconnect attempts with gRPC's default backoff


async def _serve(port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set(READINESS, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    await server.start()
    return server


async def test_a_restarted_peer_is_called_again_within_the_backoff_cap() -> None:
    port = free_port()
    server = await _serve(port)
    channel = open_channel(f"127.0.0.1:{port}", Settings(), Caller.service("test"), timeout=1)
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=READINESS)
    try:
        await stub.Check(request)
        await server.stop(None)
        away = time.monotonic()
        failures = 0
        while time.monotonic() - away < DOWN:  # callers keep calling while it is away
            try:
                await stub.Check(request, timeout=0.5)
            except grpc.aio.AioRpcError:
                failures += 1
            await asyncio.sleep(0.5)
        assert failures
        server = await _serve(port)
        back = time.monotonic()
        while True:
            try:
                await stub.Check(request, timeout=0.5)
                break
            except grpc.aio.AioRpcError as exc:
                waited = time.monotonic() - back
                assert waited < 10, f"still {exc.code().name} {waited:.1f} s after the peer came back"
            await asyncio.sleep(0.05)
        waited = time.monotonic() - back
        print(f"\npeer away {DOWN:.0f} s, called again {waited:.2f} s after it came back")
        assert waited < RECONNECT_BACKOFF_MAX_MS / 1000 * 1.2 + 0.5, waited
    finally:
        await channel.close()
        await server.stop(None)
