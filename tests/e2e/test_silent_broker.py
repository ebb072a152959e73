"""A broker that accepts TCP and never answers the AMQP header (seen in production as a wedged
RabbitMQ): a starting service must say so on /readyz and in its log, keep retrying, and still end at
once on SIGTERM instead of hanging."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from services.platform.messaging.amqp import CLOSE_TIMEOUT_SECONDS
from tests.helpers.infra import free_port, unique_name
from tests.helpers.procs import spawn
from tests.helpers.tcp_proxy import FreezableProxy


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


def test_a_broker_gone_silent_while_running_does_not_hold_the_drain(tmp_path: Path, amqp_url: str) -> None:
    """RabbitMQ wedges under a running service (every byte either way held by a proxy: the
    connection stays open, no AMQP reply ever comes, no heartbeat either). SIGTERM must still end
    the service within its drain budget (grace + unwind + the bounded broker close), exit 0, and
    the log must say the broker did not answer, instead of the drain waiting on basic.cancel and
    the close until the orchestrator's SIGKILL."""
    parsed = urlsplit(amqp_url)
    with FreezableProxy(parsed.hostname or "127.0.0.1", parsed.port or 5672) as proxy:
        admin = free_port()
        log = tmp_path / "organization.log"
        grace, unwind = 2.0, 1.0
        proc = spawn(
            "services.organization",
            {
                "FOUNDRY_AMQP_URL": parsed._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}").geturl(),
                "FOUNDRY_NAME_PREFIX": unique_name("silent"),
                "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
                "FOUNDRY_ORGANIZATION_PORT": str(free_port()),
                "FOUNDRY_METRICS_PORT": str(admin),
                "FOUNDRY_LOG_FORMAT": "json",
                "FOUNDRY_DRAIN__GRACE_SECONDS": str(grace),
                "FOUNDRY_DRAIN__UNWIND_SECONDS": str(unwind),
            },
            log_path=log,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=2).status_code == 200:
                        break
                assert proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.2)
            else:
                raise AssertionError(f"not ready\n{log.read_text()[-2000:]}")
            proxy.freeze()
            proc.send_signal(signal.SIGTERM)
            began = time.monotonic()
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running 60 s after SIGTERM\n{log.read_text()[-3000:]}") from None
            took = time.monotonic() - began
            print(f"\nSIGTERM -> exit with the broker silent: {took:.1f} s")
            budget = grace + unwind + CLOSE_TIMEOUT_SECONDS + 2.0
            assert took < budget, f"{took:.1f} s > {budget:.1f} s\n{log.read_text()[-3000:]}"
            assert code == 0, log.read_text()[-2000:]
            assert "amqp_broker_not_answering" in log.read_text(), log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
