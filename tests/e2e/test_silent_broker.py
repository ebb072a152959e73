"""A broker that accepts TCP and never answers the AMQP header (seen in production as a wedged
RabbitMQ): a starting service must say so on /readyz and in its log, keep retrying, and still end at
once on SIGTERM instead of hanging."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.infra import free_port
from tests.helpers.procs import spawn


@pytest.fixture
def silent_broker() -> Iterator[int]:
    """A TCP listener that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize(
    ("connect_timeout", "when"), [("1", "between attempts"), ("30", "during an attempt")]
)
def test_a_silent_broker_is_reported_and_sigterm_still_stops_the_service(
    silent_broker: int, tmp_path: Path, connect_timeout: str, when: str
) -> None:
    admin = free_port()
    log = tmp_path / "organization.log"
    proc = spawn(
        "services.organization",
        {
            "FOUNDRY_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{silent_broker}/",
            "FOUNDRY_MESSAGING__CONNECT_TIMEOUT_SECONDS": connect_timeout,
            "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
            "FOUNDRY_ORGANIZATION_PORT": str(free_port()),
            "FOUNDRY_METRICS_PORT": str(admin),
            "FOUNDRY_LOG_FORMAT": "json",
        },
        log_path=log,
    )
    try:
        deadline = time.monotonic() + 30
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=2)
                body = response.json()
                assert response.status_code == 503, body
                if when == "during an attempt" or "handshake" in str(body.get("waiting_for", "")):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        if when == "between attempts":
            assert "handshake" in str(body.get("waiting_for", "")), body
            assert "broker_connect_failed" in log.read_text()
        else:
            time.sleep(1.0)  # well inside the 30 s attempt: the stop must cancel it
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code = proc.wait(timeout=10)
        assert time.monotonic() - began < 5, "SIGTERM waited on the broker"
        assert code == 0, log.read_text()[-2000:]
        assert "start_aborted" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_silent_database_fails_the_start_within_its_timeout(
    silent_broker: int, tmp_path: Path, amqp_url: str
) -> None:
    """The same listener as PostgreSQL: the start fails within the connect timeout, saying so, instead
    of waiting asyncpg's 60 s (or forever) with readiness off and nothing in the log."""
    log = tmp_path / "task.log"
    began = time.monotonic()
    proc = spawn(
        "services.task",
        {
            "FOUNDRY_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{silent_broker}/foundry",
            "FOUNDRY_DATABASE_CONNECT_TIMEOUT_SECONDS": "1",
            "FOUNDRY_AMQP_URL": amqp_url,
            "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
            "FOUNDRY_TASK_PORT": str(free_port()),
            "FOUNDRY_METRICS_PORT": "0",
            "FOUNDRY_LOG_FORMAT": "json",
        },
        log_path=log,
    )
    try:
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code != 0 and time.monotonic() - began < 20, text[-2000:]
    assert "start_failed" in text and "Timeout" in text, text[-2000:]
