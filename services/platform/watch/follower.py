"""The one client loop for every Watch RPC (WatchTask, WatchOrganizationSummary, WatchSession, …):
open the stream, then keep following the scope across streams the way the contract asks
(README "Watch streams"; the browser's static/js/stream.js mirrors it over SSE):

    END rotate / draining / lagging   reopen with the END's resume token (no snapshot, no gap)
    END expired                       reopen with no token: a new snapshot
    RESET                             the next stream bootstraps (the server sends a snapshot)
    END unauthorized, other ENDs      stop (`WatchStopped` says why)
    stream closed without END         stop (the caller decides whether to reopen)

    async for event in follow(lambda token: stub.WatchTask(WatchTaskRequest(name=n, resume_token=token))):
        ...   # every WatchEvent, END frames included, in order

Used by foundryctl and the benchmarks; tests apply the events to `testing.WatchClient`, which checks
the contract as they go.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from foundry.common.v1 import watch_pb2

RESUMABLE = frozenset(
    {
        watch_pb2.WATCH_END_REASON_ROTATE,
        watch_pb2.WATCH_END_REASON_DRAINING,
        watch_pb2.WATCH_END_REASON_LAGGING,
    }
)


class WatchStopped(Exception):
    """The server ended the watch for good: `reason` is the END reason (e.g. UNAUTHORIZED)."""

    def __init__(self, reason: watch_pb2.WatchEndReason.ValueType, message: str) -> None:
        super().__init__(message or watch_pb2.WatchEndReason.Name(reason))
        self.reason = reason


async def follow(
    open_stream: Callable[[str], AsyncIterable[Any]], *, token: str = ""
) -> AsyncIterator[watch_pb2.WatchEvent]:
    """Yield every event of one watched scope, across as many streams as the server asks for.

    `open_stream(token)` opens one stream (the RPC call, whose responses carry `.event`) with a
    resume token ("" bootstraps). Returns when a stream closes without END; raises WatchStopped
    after an END that cannot be resumed (unauthorized, not found, …). RPC errors propagate.
    """
    while True:
        end: watch_pb2.WatchEvent | None = None
        async for response in open_stream(token):
            event: watch_pb2.WatchEvent = response.event
            kind = event.kind
            if kind == watch_pb2.WATCH_EVENT_KIND_RESET:
                token = ""
            elif kind == watch_pb2.WATCH_EVENT_KIND_END:
                end = event
            elif kind != watch_pb2.WATCH_EVENT_KIND_SNAPSHOT:  # SNAPSHOT_END, changes, bookmarks
                token = event.resume_token
            yield event
            if end is not None:
                break
        if end is None:
            return
        if end.end_reason in RESUMABLE:
            token = end.resume_token or token
        elif end.end_reason == watch_pb2.WATCH_END_REASON_EXPIRED:
            token = ""
        else:
            raise WatchStopped(end.end_reason, end.message)
