"""Versioned, resumable Watch streams: the mesh's one implementation of the Watch contract.

Writers, inside their own transaction::

    async with db.transaction() as session:
        ...  # change the service's rows
        await record_change(session, scope="task:organizations/acme/tasks/t-1",
                            name="organizations/acme/tasks/t-1", resource=task_pb)  # None = delete

Servicers::

    async for response in hub.stream(scope, resume_token=request.resume_token,
                                     snapshot=read_items, authorize=check_member,
                                     wrap=lambda e: WatchTaskResponse(event=e)):
        yield response

Contract (`foundry.common.v1.WatchEvent`, anchors §2.4):
1. No token: SNAPSHOT pages (`WatchSettings.snapshot_page_size` items each; at least one page),
   SNAPSHOT_END carrying the snapshot token S, then every change after S. The stream subscribes to
   the fan-out before it reads the snapshot, and drops buffered changes at or below S.
2. Token V: no snapshot; every retained change after V in version order, then live changes; a
   BOOKMARK with V at once when nothing is to be replayed ("caught up").
3. V older than retained history (`V < compacted_through`), newer than the scope's version, malformed
   or minted for another scope: RESET, then END `expired` with an empty token. The client drops its
   state and watches again without a token.
4. BOOKMARK with the current token after `bookmark_seconds` (default 15) without an event;
   `authorize` is re-checked at each bookmark.
5. Server-initiated ends are END events with a reason and the token to resume from: `rotate` after
   ~`max_stream_seconds` (times 0.9 to 1.0, jittered), `draining` on `WatchHub.drain()`, `lagging` when the
   subscriber's buffer (`subscriber_buffer` events) overflows, `unauthorized` when `authorize`
   fails at a bookmark, `expired` after a RESET. An `authorize` failure before the first event
   fails the RPC instead (PermissionDenied → PERMISSION_DENIED).
6. UPSERT and DELETE events carry exactly one item; item version = event token. Snapshot items carry
   the snapshot token. Tokens are opaque (`v1.<scope tag>.<version>`); compare for equality only.

Versions are per scope, gap-free and in commit order (see `changes`), so a late commit is never
skipped; a stream that finds a hole in the versions it needs answers RESET.

Retention: changes are kept in the service's database for `WatchSettings.retention_hours`
(`FOUNDRY_WATCH__RETENTION_HOURS`, default 24 h). Each hub compacts hourly (`WatchHub.compact()`);
compaction raises the scope's `compacted_through`, and tokens below it are expired.

Replicas: each hub broadcasts `{origin, scopes: {scope: version}}` on topic `watch.<service>` after
local commits; the other hubs wake their feeds for those scopes. Each feed re-reads its scope at
least once per `bookmark_seconds`, which repairs a lost broadcast. Commits made by a process
without a running hub are seen within that tick.
"""

from services.platform.watch.changes import (
    Change,
    ScopeState,
    compact_changes,
    read_changes,
    read_scope,
    record_change,
)
from services.platform.watch.hub import WatchHub, scope_kind
from services.platform.watch.stream import Authorize, Snapshot
from services.platform.watch.tokens import BadToken, TokenCodec

__all__ = [
    "Authorize",
    "BadToken",
    "Change",
    "ScopeState",
    "Snapshot",
    "TokenCodec",
    "WatchHub",
    "compact_changes",
    "read_changes",
    "read_scope",
    "record_change",
    "scope_kind",
]
