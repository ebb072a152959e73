"""Session-wide fixtures: the run's own PostgreSQL server and RabbitMQ node (tests/helpers/servers.py,
started on first use, removed at the end), one database on it per run, plus a settings factory.
Tests that need isolation inside the run use `unique_name()`."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from services.platform.settings import Settings
from tests.helpers.infra import make_pg_database, unique_name
from tests.helpers.servers import SERVERS

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# Tests declare hundreds of short-lived queues: classic queues keep RabbitMQ light (each quorum queue
# is a Raft cluster). Tests about production behaviour set `messaging.queue_type="quorum"` themselves.
os.environ.setdefault("FOUNDRY_MESSAGING__QUEUE_TYPE", "classic")
# Tests connect local organizations in their temporary directories (the dev default is the home).
os.environ.setdefault("FOUNDRY_LOCAL_ROOTS", json.dumps([tempfile.gettempdir()]))


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    """URL of a PostgreSQL database created for this test run."""
    async with make_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of the run's private RabbitMQ node (its default vhost; tests isolate by name prefix)."""
    return SERVERS.amqp_url()


def pytest_unconfigure(config: pytest.Config) -> None:
    SERVERS.close()


_held: list[object] = []  # gRPC objects kept for the whole run (`_grpc_held_for_the_run`)


@pytest.fixture(scope="session", autouse=True)
async def _grpc_held_for_the_run() -> None:
    """Keep gRPC initialised for the whole run, with one idle channel that is never closed.

    grpc.aio counts its live channels and servers: each time the count falls to zero it shuts its
    completion queue down (joining the poller thread) and calls grpc_shutdown, which tears gRPC core
    down in a thread of its own; core likewise drops its default EventEngine (thread pool and timer
    thread) when nothing holds it. The next channel starts all of it again. A test process drops its
    last channel hundreds of times, and a teardown racing the next start is the kind of crash
    (SIGSEGV in a gRPC thread; see grpc/grpc#43364) that took the runner down in CI. Held, the
    rolling-restart test starts 1 timer thread and 1 thread pool instead of 12 and 14.
    A service holds its server for its whole life, so it never goes through the cycle."""
    import grpc.aio

    _held.append(grpc.aio.insecure_channel("localhost:1"))  # idle: never connects, never closed


HANG_REPORT_LEAD_SECONDS = 20.0  # before pytest-timeout's deadline


@pytest.fixture(autouse=True)
async def _asyncio_tasks_shown_before_a_timeout(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """An async test that hangs is killed by pytest-timeout, whose dump shows threads only: the event
    loop's thread sits in `select()` and which await never returned is lost. Shortly before that
    deadline, print every asyncio task's stack (in the test's captured output)."""
    if not inspect.iscoroutinefunction(getattr(request, "function", None)):
        yield
        return
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout") or 0)
    if limit <= HANG_REPORT_LEAD_SECONDS:
        yield
        return
    loop = asyncio.get_running_loop()
    timer = threading.Timer(
        limit - HANG_REPORT_LEAD_SECONDS, lambda: loop.call_soon_threadsafe(_print_tasks, request.node.nodeid)
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _print_tasks(test: str) -> None:
    tasks = asyncio.all_tasks()
    print(f"\n+++ {test}: still running near its timeout; {len(tasks)} asyncio tasks +++", file=sys.stderr)
    for task in tasks:
        try:
            task.print_stack(file=sys.stderr)  # the awaits it is suspended in, outermost first
        except Exception:  # a frame without a line number (a C-level await): the task at least
            print(f"{task!r} (stack unavailable)", file=sys.stderr)


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    """Build Settings for a test: embedded defaults in a temp data dir, overridable by keyword."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "name_prefix": unique_name("foundry"),
            "metrics_port": 0,
            "log_format": "console",
        }
        values.update(overrides)
        return Settings(**values)

    return make
