"""The watch change log: writers record changes inside their own transaction; hubs read them back.

Tables (`services.platform.db.tables`): `watch_scopes(scope, version, compacted_through)` and
`watch_changes(scope, version, kind, name, type_url, payload, committed_at)`.

Ordering: `record_change` bumps the scope's version with `INSERT ... ON CONFLICT (scope) DO UPDATE
SET version = version + 1 RETURNING version` (one statement, creating the scope at version 1). The
row lock is held until the writer commits, so the versions of one scope commit in version order and
without gaps (a rolled-back writer gives its version back).
Reading `version > V ORDER BY version` therefore never skips a change that commits late, which a
bigserial cursor would (anchors §2.3). A missing version in a read means compaction removed it.

Retention: `compact_changes` deletes, per scope, every change up to the newest one committed before
the cutoff and raises `compacted_through` to it; a resume token below `compacted_through` is
expired (the stream answers RESET). `WatchHub` runs it hourly with `WatchSettings.retention_hours`.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.platform import clock
from services.platform.db.engine import Database, after_commit, defer_insert
from services.platform.db.tables import watch_changes, watch_scopes

UPSERT = "upsert"
DELETE = "delete"
TYPE_URL_PREFIX = "type.googleapis.com/"
_PENDING = "foundry_watch_pending"

Notifier = Callable[[str, int], None]
"""Called after commit with (scope, highest committed version of that scope in the transaction)."""

# Hubs listening to commits made through an engine, keyed weakly by the engine so a disposed
# Database leaves nothing behind. One entry per WatchHub.start(); removed by its stop().
_notifiers: weakref.WeakKeyDictionary[Engine, list[Notifier]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Change:
    """One retained change of a scope. `payload` is the serialized resource (None for DELETE)."""

    version: int
    kind: str
    name: str
    type_url: str
    payload: bytes | None


@dataclass(frozen=True, slots=True)
class ScopeState:
    """The scope's newest committed version and the highest version removed by compaction."""

    version: int
    compacted_through: int


def register_notifier(engine: AsyncEngine, notifier: Notifier) -> Callable[[], None]:
    """Call `notifier(scope, version)` after every commit through `engine` that recorded a change.

    Returns a function that removes the registration.
    """
    entries = _notifiers.setdefault(engine.sync_engine, [])
    entries.append(notifier)

    def unregister() -> None:
        if notifier in entries:
            entries.remove(notifier)

    return unregister


async def record_change(session: AsyncSession, *, scope: str, name: str, resource: Message | None) -> int:
    """Append a change of `name` to `scope`'s log inside the caller's open write transaction.

    Args:
        session: the session of a `Database.transaction()`; the change commits or rolls back with it.
        scope: the watch scope, e.g. `task:organizations/acme/tasks/t-1` (see `WatchHub.stream`).
        name: the resource name carried in `WatchItem.name`.
        resource: the resource's new state, or None for a delete (tombstone).

    Returns:
        The scope version of this change (gap-free, starting at 1). Writers can store it as the
        entity's version so that detail streams and rows agree.

    After commit, every `WatchHub` started on this engine is notified and tells the other replicas.
    """
    bumped = await _bump(session, scope)
    await defer_insert(
        session,
        _INSERT_CHANGE,
        {
            "scope": scope,
            "version": bumped,
            "kind": UPSERT if resource is not None else DELETE,
            "name": name,
            "type_url": TYPE_URL_PREFIX + resource.DESCRIPTOR.full_name if resource is not None else "",
            "payload": resource.SerializeToString() if resource is not None else None,
            "committed_at": clock.now(),
        },
    )
    pending: dict[str, int] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = {}
        engine = session.get_bind()
        after_commit(session, lambda: _notify(engine, pending))
    pending[scope] = bumped
    return bumped


def _bump_statement(insert: Any) -> Any:
    """`INSERT … ON CONFLICT (scope) DO UPDATE SET version = version + 1 RETURNING version`: one
    statement whether or not the scope exists. The row lock it takes (the update, or the insert's
    unique entry, which a concurrent creator waits on and then updates) is held until commit."""
    return (
        insert(watch_scopes)
        .values(scope=bindparam("scope"), version=1, compacted_through=0)
        .on_conflict_do_update(
            index_elements=[watch_scopes.c.scope], set_={"version": watch_scopes.c.version + 1}
        )
        .returning(watch_scopes.c.version)
    )


_BUMPS = {"postgresql": _bump_statement(postgresql.insert), "sqlite": _bump_statement(sqlite.insert)}
_INSERT_CHANGE = watch_changes.insert()


async def _bump(session: AsyncSession, scope: str) -> int:
    result = await session.execute(_BUMPS[_dialect(session)], {"scope": scope})
    return int(result.scalar_one())


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _notify(engine: Any, pending: dict[str, int]) -> None:
    for notifier in list(_notifiers.get(engine, ())):
        for scope, version in pending.items():
            notifier(scope, version)


async def read_scope(session: AsyncSession, scope: str) -> ScopeState:
    """The scope's state as seen by `session` (version 0 for a scope that never changed)."""
    row = (
        await session.execute(
            select(watch_scopes.c.version, watch_scopes.c.compacted_through).where(
                watch_scopes.c.scope == scope
            )
        )
    ).first()
    if row is None:
        return ScopeState(version=0, compacted_through=0)
    return ScopeState(version=int(row.version), compacted_through=int(row.compacted_through or 0))


async def read_changes(
    session: AsyncSession, scope: str, *, after: int, upto: int | None = None, limit: int = 500
) -> list[Change]:
    """Changes of `scope` with `after < version <= upto` in version order, at most `limit`."""
    query = select(
        watch_changes.c.version,
        watch_changes.c.kind,
        watch_changes.c.name,
        watch_changes.c.type_url,
        watch_changes.c.payload,
    ).where(watch_changes.c.scope == scope, watch_changes.c.version > after)
    if upto is not None:
        query = query.where(watch_changes.c.version <= upto)
    rows = (await session.execute(query.order_by(watch_changes.c.version).limit(limit))).all()
    return [Change(int(r.version), r.kind, r.name, r.type_url, r.payload) for r in rows]


def is_contiguous(after: int, changes: Sequence[Change]) -> bool:
    """True when `changes` are exactly versions after+1, after+2, … (nothing was compacted away)."""
    return all(change.version == after + i for i, change in enumerate(changes, start=1))


async def compact_changes(db: Database, *, older_than: dt.datetime) -> int:
    """Drop history committed before `older_than` and raise each scope's `compacted_through`.

    Works one scope per transaction, so it holds at most one scope row lock at a time and cannot
    deadlock with writers. Returns the number of change rows deleted.
    """
    async with db.snapshot() as session:
        rows = (
            await session.execute(
                select(watch_changes.c.scope, func.max(watch_changes.c.version))
                .where(watch_changes.c.committed_at < older_than)
                .group_by(watch_changes.c.scope)
            )
        ).all()
    deleted = 0
    for scope, upto in rows:
        async with db.transaction() as session:
            await session.execute(
                update(watch_scopes)
                .where(watch_scopes.c.scope == scope, watch_scopes.c.compacted_through < upto)
                .values(compacted_through=upto)
            )
            result = await session.execute(
                watch_changes.delete().where(watch_changes.c.scope == scope, watch_changes.c.version <= upto)
            )
            deleted += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return deleted
