"""The repository rows CreateTask needs (clone URL, default branch, full name), cached.

CreateTask used to ask github_data (`GetRepository`) on every call. Answers are now reused for
`REPOSITORY_TTL_SECONDS`; every replica also subscribes to `github_data.repository.changed` /
`.removed` and drops that repository's answer at once, so a removed repository is refused within
the event's delivery time, and within the TTL when an event is missed (broker down). Only found
repositories are cached: NotFound is asked again each time, so a repository that appears is usable
at once (`services/platform/cache.py` has the rules).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from foundry.github_data.v1 import events_pb2 as gd_events
from foundry.github_data.v1 import repository_pb2

from services.platform.cache import TtlCache

REPOSITORY_TTL_SECONDS = 10.0
REPOSITORY_EVENTS = "github_data.repository.*"
REPOSITORY_CHANGED = "github_data.repository.changed"
REPOSITORY_REMOVED = "github_data.repository.removed"


def _stale(routing_key: str, body: bytes) -> list[str] | None:
    """The repository a `github_data.repository.*` event names (None for an event unknown here)."""
    if routing_key == REPOSITORY_CHANGED:
        return [gd_events.RepositoryChanged.FromString(body).name]
    if routing_key == REPOSITORY_REMOVED:
        return [gd_events.RepositoryRemoved.FromString(body).name]
    return None


class RepositoryCache(TtlCache[str, repository_pb2.Repository]):
    """`await cache.get(name)`: the stored repository (NotFound from github_data as is)."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[repository_pb2.Repository]],
        *,
        ttl_seconds: float = REPOSITORY_TTL_SECONDS,
    ) -> None:
        super().__init__(fetch, ttl_seconds=ttl_seconds, events=REPOSITORY_EVENTS, invalidate=_stale)
