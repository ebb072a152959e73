"""One cache for a peer's answers that rarely change: kept `ttl_seconds`, dropped at once by events.

Membership checks (`authz.Membership`), CreateTask's repository rows (`services/task/repositories.py`)
and the gateway's auth-session checks each ask another service a question whose answer rarely
changes. `TtlCache` keeps each answer for a short TTL; where the owner publishes events about the
answers, a process that ran `await cache.listen(broker)` gets a copy of every matching event
(`Broker.subscribe_events`: one per process, so every replica hears each one) and forgets the keys it
names at once, so the TTL only bounds staleness when an event is missed (the broker down).

Rules every user relies on:
- an exception from `fetch` is raised to the caller and never cached (a NotFound is asked again);
- an answer fetched while a forget happened is returned but not kept (it may predate the change);
- a malformed or unknown event forgets everything rather than keep a stale answer;
- at most `max_entries`: a full cache first drops its expired entries, then everything.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

from services.platform.logging import get_logger
from services.platform.messaging.broker import Broker, Subscription

log = get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
# (routing key, event body) → the keys the event makes stale; None: every key. Raising forgets all.
Invalidate = Callable[[str, bytes], Iterable[K] | None]


class TtlCache(Generic[K, V]):
    """`await cache.get(key)`: `fetch(key)`'s answer, reused for `ttl_seconds` (monotonic clock).

    Args:
        fetch: asks the owner; its exceptions reach the caller of `get` uncached.
        ttl_seconds: how long an answer is reused when no event drops it.
        events: the routing-key pattern `listen` subscribes to (e.g. `organization.member.*`); "" for
            a cache no event invalidates.
        invalidate: maps one such event to the keys it makes stale.
        max_entries: the bound on cached answers.
    """

    def __init__(
        self,
        fetch: Callable[[K], Awaitable[V]],
        *,
        ttl_seconds: float,
        events: str = "",
        invalidate: Invalidate[K] | None = None,
        max_entries: int = 10_000,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl_seconds
        self._events = events
        self._invalidate = invalidate
        self._max = max_entries
        self._answers: dict[K, tuple[float, V]] = {}
        # Bumped by every forget: an answer fetched across a forget is not cached (it may predate it).
        self._generation = 0
        self._subscription: Subscription | None = None

    async def get(self, key: K) -> V:
        now = time.monotonic()
        hit = self._answers.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        value = await self._fetch(key)
        if generation == self._generation:
            if len(self._answers) >= self._max:
                self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
                if len(self._answers) >= self._max:
                    self._answers.clear()
            self._answers[key] = (now + self._ttl, value)
        return value

    def forget(self, key: K | None = None) -> None:
        """Drop the answer of `key` (every answer with None)."""
        self._generation += 1
        if key is None:
            self._answers.clear()
        else:
            self._answers.pop(key, None)

    def forget_where(self, stale: Callable[[K], bool]) -> None:
        """Drop the answers whose key `stale` accepts."""
        self._generation += 1
        self._answers = {k: v for k, v in self._answers.items() if not stale(k)}

    async def on_event(self, routing_key: str, body: bytes) -> None:
        """Apply one event: forget the keys `invalidate` names (all of them if it cannot tell)."""
        try:
            keys = self._invalidate(routing_key, body) if self._invalidate else None
        except Exception:  # a malformed event: drop everything rather than keep a stale answer
            log.warning("cache_event_malformed", routing_key=routing_key, exc_info=True)
            keys = None
        if keys is None:
            self.forget()
            return
        for key in keys:
            self.forget(key)

    async def listen(self, broker: Broker) -> None:
        """Subscribe this process to the cache's events (idempotent); `stop_listening` ends it.
        Raises ValueError for a cache built without `events`."""
        if not self._events:
            raise ValueError("this cache has no events to listen to")
        if self._subscription is None:
            self._subscription = await broker.subscribe_events(self._events, self.on_event)

    async def stop_listening(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.cancel()
