"""The issues' end-to-end flows across the four real services, the real gateway and the GitHub-wire
test server, on both backends: the embedded default (SQLite files + in-process broker) and
PostgreSQL + RabbitMQ. The scenarios live in tests/unit/flows/scenarios_*.py.

The PostgreSQL world has a database of its own (every service's schema is named after the service,
so sharing the run's database with other tests would mix their rows) and its own queue prefix."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypedDict

import pytest

from services.platform.settings import Settings
from tests.helpers.infra import make_pg_database, unique_name
from tests.unit.flows import (
    scenarios_github,
    scenarios_local,
    scenarios_members,
    scenarios_publish,
    scenarios_summary,
)
from tests.unit.flows.world import FlowWorld, flow_world

BACKENDS = {"embedded": "embedded", "postgres": "postgres+rabbitmq"}


class _Backing(TypedDict, total=False):
    """The Settings fields that switch the mesh to PostgreSQL and RabbitMQ."""

    database_url: str
    amqp_url: str


@pytest.fixture(
    scope="module",
    params=["embedded", pytest.param("postgres", marks=pytest.mark.integration)],
)
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FlowWorld]:
    backend: str = request.param
    root = tmp_path_factory.mktemp(f"flows-{backend}")
    async with contextlib.AsyncExitStack() as stack:
        backing: _Backing = {}
        if backend == "postgres":
            backing["database_url"] = await stack.enter_async_context(make_pg_database())
            backing["amqp_url"] = request.getfixturevalue("amqp_url")
        settings = Settings(
            data_dir=root / "data",
            name_prefix=unique_name("flows"),
            metrics_port=0,
            log_format="console",
            log_level="WARNING",
            **backing,
        )
        yield await stack.enter_async_context(flow_world(settings, root))


def _backend(world: FlowWorld) -> str:
    return BACKENDS["postgres" if world.mesh.settings.database_url else "embedded"]


async def test_local_organization_lists_its_repositories_without_a_request_waiting(
    world: FlowWorld, tmp_path: Path
) -> None:
    await scenarios_local.local_organization_lists_its_repositories_without_waiting(world, tmp_path)


async def test_task_reaches_ready_and_a_message_shows_in_transcript_and_diff(
    world: FlowWorld, tmp_path: Path
) -> None:
    await scenarios_local.task_turn_changes_a_file(world, tmp_path)


async def test_github_pull_requests_are_virtual_tasks_and_a_merge_archives_the_owning_task(
    world: FlowWorld,
) -> None:
    await scenarios_github.pull_requests_become_virtual_tasks_and_a_merge_archives(world)


async def test_task_and_pull_request_changes_reach_an_open_summary_stream_in_milliseconds(
    world: FlowWorld,
) -> None:
    await scenarios_summary.changes_reach_an_open_summary_stream(world, _backend(world))


async def test_a_resumed_summary_stream_converges_to_a_fresh_bootstrap(world: FlowWorld) -> None:
    await scenarios_summary.resumed_stream_converges(world)


async def test_publish_pushes_with_a_github_token_and_opens_exactly_one_pull_request(
    world: FlowWorld,
) -> None:
    await scenarios_publish.publish_on_github_pushes_and_opens_one_pull_request(world)


async def test_publish_on_a_local_organization_is_refused_at_once(world: FlowWorld, tmp_path: Path) -> None:
    await scenarios_publish.publish_on_a_local_organization_fails_at_once(world, tmp_path)


async def test_a_member_removed_on_github_loses_access_everywhere_before_the_cache_ttl(
    world: FlowWorld,
) -> None:
    await scenarios_members.removed_member_loses_access_promptly(world)
