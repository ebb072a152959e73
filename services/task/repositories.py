"""The repository rows CreateTask needs (clone URL, default branch, full name), cached.

CreateTask used to ask github_data (`GetRepository`) on every call. Answers are now reused for
`REPOSITORY_TTL_SECONDS`; every replica also subscribes to `github_data.repository.changed` /
`.removed` (`Broker.subscribe_events`: a copy per process) and drops that repository's answer at
once, so a removed repository is refused within the event's delivery time, and within the TTL when
an event is missed (broker down). Only found repositories are cached: NotFound is asked again each
time, so a repository that appears is usable at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from foundry.github_data.v1 import events_pb2 as gd_events
from foundry.github_data.v1 import repository_pb2

from services.platform.logging import get_logger
from services.platform.messaging.broker import Broker, Subscription

log = get_logger(__name__)

REPOSITORY_TTL_SECONDS = 10.0
REPOSITORY_EVENTS = "github_data.repository.*"
REPOSITORY_CHANGED = "github_data.repository.changed"
REPOSITORY_REMOVED = "github_data.repository.removed"
MAX_ENTRIES = 10_000

Fetch = Callable[[str], Awaitable[repository_pb2.Repository]]


class RepositoryCache:
    """`await cache.get(name)`: the stored repository (NotFound from github_data as is)."""

    def __init__(self, fetch: Fetch, *, ttl_seconds: float = REPOSITORY_TTL_SECONDS) -> None:
        self._fetch = fetch
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, repository_pb2.Repository]] = {}
        # Bumped by every forget: an answer fetched across a forget is not cached (it may predate it).
        self._generation = 0
        self._subscription: Subscription | None = None

    async def get(self, name: str) -> repository_pb2.Repository:
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        repository = await self._fetch(name)
        if generation == self._generation:
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
            self._cache[name] = (now + self._ttl, repository)
        return repository

    def forget(self, name: str | None = None) -> None:
        """Drop the cached answer of `name` (all with None)."""
        self._generation += 1
        if name is None:
            self._cache.clear()
        else:
            self._cache.pop(name, None)

    async def on_event(self, routing_key: str, body: bytes) -> None:
        """Apply a `github_data.repository.*` event: forget the repository it names."""
        try:
            if routing_key == REPOSITORY_CHANGED:
                self.forget(gd_events.RepositoryChanged.FromString(body).name)
            elif routing_key == REPOSITORY_REMOVED:
                self.forget(gd_events.RepositoryRemoved.FromString(body).name)
            else:  # a repository event this version does not know: drop everything, keep nothing stale
                self.forget()
        except Exception:  # a malformed event: drop everything rather than keep a stale answer
            log.warning("repository_event_malformed", routing_key=routing_key, exc_info=True)
            self.forget()

    async def listen(self, broker: Broker) -> None:
        """Subscribe this process to repository events (idempotent); `stop_listening` ends it."""
        if self._subscription is None:
            self._subscription = await broker.subscribe_events(REPOSITORY_EVENTS, self.on_event)

    async def stop_listening(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.cancel()
