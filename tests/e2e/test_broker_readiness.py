"""RabbitMQ lost while a service runs (issue #16): the admin port's /readyz turns 503 saying why, the
gRPC health service `broker` turns NOT_SERVING, and both come back once aio-pika has reconnected;
liveness stays up all along, and so does the gRPC `readiness` the clients route by (requests do not
need the broker: work and events wait in the outbox). The node is the test's own, stopped and started
again on the same ports and data."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.platform.server.health import BROKER, READINESS
from tests.helpers.infra import free_port
from tests.helpers.procs import spawn
from tests.helpers.servers import PrivateRabbit, private_rabbit

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def rabbit() -> Iterator[PrivateRabbit]:
    with private_rabbit("foundry-rabbit-readiness-") as node:
        yield node


def _until(what: str, check: Callable[[], Any], log: Path, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except (httpx.HTTPError, grpc.RpcError):
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {timeout} s\n{log.read_text()[-3000:]}")


def test_readyz_reports_a_broker_lost_after_start_and_recovers(rabbit: PrivateRabbit, tmp_path: Path) -> None:
    """Twice on one node: stopped (SIGTERM: the broker closes the connection), then crashed (SIGKILL)."""
    admin, grpc_port = free_port(), free_port()
    log = tmp_path / "organization.log"
    proc = spawn(
        "services.organization",
        {
            # aio-pika's default is 5 s between reconnect attempts; 1 s keeps the test short.
            "FOUNDRY_AMQP_URL": f"{rabbit.url}?reconnect_interval=1",
            "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
            "FOUNDRY_ORGANIZATION_PORT": str(grpc_port),
            "FOUNDRY_METRICS_PORT": str(admin),
            "FOUNDRY_LOG_FORMAT": "json",
        },
        log_path=log,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)

    def readyz() -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=2)

    def status(service: str) -> int:
        return int(health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)

    try:
        _until("ready", lambda: readyz().status_code == 200, log)
        assert (status(READINESS), status(BROKER)) == (SERVING, SERVING)
        for how in (signal.SIGTERM, signal.SIGKILL):
            rabbit.stop(how)
            lost_at = time.monotonic()
            body = _until("503 on /readyz", lambda: (r := readyz()).status_code == 503 and r.json(), log)
            noticed = time.monotonic() - lost_at
            assert body["ready"] is False
            assert "message broker connection lost" in body["reason"], body
            assert status(BROKER) == NOT_SERVING
            assert status(READINESS) == SERVING, "clients would stop routing to every replica at once"
            assert status("") == SERVING
            assert httpx.get(f"http://127.0.0.1:{admin}/livez", timeout=2).status_code == 200

            rabbit.start()
            back_at = time.monotonic()
            _until("ready again", lambda: readyz().status_code == 200, log)
            recovered = time.monotonic() - back_at
            assert (status(READINESS), status(BROKER)) == (SERVING, SERVING)
            assert proc.poll() is None, "the service exited instead of reconnecting"
            print(f"\nbroker {how.name}: 503 after {noticed:.2f} s, 200 {recovered:.2f} s after it listened")
        text = log.read_text()
        assert text.count("amqp_connection_lost") == 2 and text.count("amqp_connection_restored") == 2
    finally:
        channel.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except Exception:
            proc.kill()
            raise
