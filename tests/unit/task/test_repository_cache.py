"""CreateTask's repository cache (services/task/repositories.py): answers are reused for the TTL, a
`github_data.repository.removed` / `.changed` event drops the repository's answer at once (so a removed
repository is refused on the next create), the TTL bounds staleness when no event arrives, and
NotFound is never cached."""

from __future__ import annotations

import asyncio
import time

import pytest
from foundry.github_data.v1 import events_pb2 as gd_events
from foundry.github_data.v1 import repository_pb2

from services.platform.errors import NotFound
from services.task.repositories import REPOSITORY_TTL_SECONDS, RepositoryCache

NAME = "organizations/acme/repositories/r1"


class FakeGithubData:
    """GetRepository of a store the test edits; counts the calls."""

    def __init__(self) -> None:
        self.rows = {NAME: repository_pb2.Repository(name=NAME, default_branch="main")}
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def repository(self, name: str) -> repository_pb2.Repository:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if name not in self.rows:
            raise NotFound(f"{name} not found", reason="REPOSITORY_NOT_FOUND")
        return self.rows[name]


def test_the_ttl_is_stated() -> None:
    assert REPOSITORY_TTL_SECONDS == 10.0


async def test_answers_are_reused_and_a_removed_event_drops_them() -> None:
    store = FakeGithubData()
    cache = RepositoryCache(store.repository)
    assert (await cache.get(NAME)).default_branch == "main"
    assert (await cache.get(NAME)).default_branch == "main"
    assert store.calls == 1
    del store.rows[NAME]  # github_data removes it and publishes the event
    await cache.on_event(
        "github_data.repository.removed", gd_events.RepositoryRemoved(name=NAME).SerializeToString()
    )
    with pytest.raises(NotFound):
        await cache.get(NAME)
    with pytest.raises(NotFound):  # NotFound is not cached: asked again
        await cache.get(NAME)
    assert store.calls == 3


async def test_a_changed_event_drops_the_answer() -> None:
    store = FakeGithubData()
    cache = RepositoryCache(store.repository)
    await cache.get(NAME)
    store.rows[NAME] = repository_pb2.Repository(name=NAME, default_branch="trunk")
    body = gd_events.RepositoryChanged(name=NAME, repository=store.rows[NAME]).SerializeToString()
    await cache.on_event("github_data.repository.changed", body)
    assert (await cache.get(NAME)).default_branch == "trunk"


async def test_without_an_event_the_ttl_expires_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeGithubData()
    cache = RepositoryCache(store.repository)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    await cache.get(NAME)
    del store.rows[NAME]  # the event is lost (broker down)
    clock[0] += REPOSITORY_TTL_SECONDS - 0.5
    assert (await cache.get(NAME)).name == NAME  # still within the TTL: the stale answer
    clock[0] += 1.0
    with pytest.raises(NotFound):
        await cache.get(NAME)


async def test_an_answer_fetched_across_an_event_is_not_cached() -> None:
    store = FakeGithubData()
    cache = RepositoryCache(store.repository)
    store.gate = asyncio.Event()
    pending = asyncio.create_task(cache.get(NAME))
    while store.calls == 0:  # noqa: ASYNC110 - the fake exposes a count, not an event
        await asyncio.sleep(0)
    await cache.on_event("github_data.repository.removed", b"\xff\xff")  # malformed: forget all
    store.gate.set()
    await pending  # answered with what it read, but not kept
    store.gate = None
    del store.rows[NAME]
    with pytest.raises(NotFound):
        await cache.get(NAME)
