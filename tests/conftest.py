"""Session-wide fixtures: one PostgreSQL database and one RabbitMQ vhost per test run (both removed at
the end), plus a settings factory. Tests that need isolation inside the run use `unique_name()`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.platform.settings import Settings
from tests.helpers.infra import make_pg_database, make_rabbit_vhost, unique_name

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# Tests declare hundreds of short-lived queues: classic queues keep RabbitMQ light (each quorum queue
# is a Raft cluster). Tests about production behaviour set `messaging.queue_type="quorum"` themselves.
os.environ.setdefault("FOUNDRY_MESSAGING__QUEUE_TYPE", "classic")


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    """URL of a PostgreSQL database created for this test run."""
    async with make_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """URL of a RabbitMQ vhost created for this test run."""
    with make_rabbit_vhost() as url:
        yield url


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
