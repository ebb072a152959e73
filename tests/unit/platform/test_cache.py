"""The shared peer-answer cache (services/platform/cache.py): bounded, expired entries dropped first,
selective forgets, unknown events forget everything, and a cache without events cannot listen."""

from __future__ import annotations

import time

import pytest

from services.platform.cache import TtlCache
from services.platform.messaging.memory import MemoryBroker


class Owner:
    """The answering service: the answer is the key's length plus a version the test bumps."""

    def __init__(self) -> None:
        self.version = 0
        self.asked: list[str] = []

    async def fetch(self, key: str) -> int:
        self.asked.append(key)
        return len(key) + self.version


async def test_a_full_cache_drops_expired_answers_first_then_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    owner = Owner()
    cache: TtlCache[str, int] = TtlCache(owner.fetch, ttl_seconds=10, max_entries=3)
    await cache.get("a")
    clock[0] += 8
    await cache.get("bb")
    await cache.get("ccc")
    clock[0] += 3  # "a" expired, the two others live
    await cache.get("dddd")  # full: "a" goes, the live ones stay
    owner.asked.clear()
    assert [await cache.get(k) for k in ("bb", "ccc", "dddd")] == [2, 3, 4]
    assert owner.asked == []
    await cache.get("eeeee")  # full of live answers: everything goes
    await cache.get("bb")
    assert owner.asked == ["eeeee", "bb"]


async def test_forget_where_drops_only_the_matching_keys() -> None:
    owner = Owner()
    cache: TtlCache[str, int] = TtlCache(owner.fetch, ttl_seconds=60)
    for key in ("org1/a", "org1/b", "org2/a"):
        await cache.get(key)
    owner.version = 10
    cache.forget_where(lambda key: key.startswith("org1/"))
    assert [await cache.get(k) for k in ("org1/a", "org1/b", "org2/a")] == [16, 16, 6]


async def test_an_event_names_keys_and_an_unknown_one_forgets_everything() -> None:
    owner = Owner()

    def stale(routing_key: str, body: bytes) -> list[str] | None:
        return [body.decode()] if routing_key == "thing.changed" else None

    cache: TtlCache[str, int] = TtlCache(owner.fetch, ttl_seconds=60, events="thing.*", invalidate=stale)
    await cache.get("x")
    await cache.get("y")
    owner.version = 1
    await cache.on_event("thing.changed", b"x")
    assert (await cache.get("x"), await cache.get("y")) == (2, 1)
    owner.version = 2
    await cache.on_event("thing.renamed", b"")  # unknown here: nothing stale is kept
    assert (await cache.get("x"), await cache.get("y")) == (3, 3)


async def test_a_cache_without_events_refuses_to_listen() -> None:
    cache: TtlCache[str, int] = TtlCache(Owner().fetch, ttl_seconds=1)
    with pytest.raises(ValueError, match="no events"):
        await cache.listen(MemoryBroker())
