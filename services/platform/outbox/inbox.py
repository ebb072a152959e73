"""Inbox: the dedup half of "exactly once in effect".

A consumer inserts `(consumer, message_id)` into the `inbox` table in the same transaction as the
message's effect. A redelivery finds the row (the insert does nothing) and must skip the effect.
The `Worker` does this for handlers through `HandlerContext.transaction()`; `claim` is the building
block for code that manages its own transaction.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform import clock
from services.platform.db.tables import inbox


async def claim(session: AsyncSession, *, consumer: str, message_id: str) -> bool:
    """Record that `consumer` processes `message_id` in the session's transaction.

    Returns False when the row already exists (the effect already committed: skip it). On PostgreSQL
    a concurrent claim of the same id waits for the other transaction and then returns False.
    """
    values = {"consumer": consumer, "message_id": message_id, "processed_at": clock.now()}
    if session.get_bind().dialect.name == "postgresql":
        result = await session.execute(pg_insert(inbox).values(**values).on_conflict_do_nothing())
    else:
        result = await session.execute(sqlite_insert(inbox).values(**values).on_conflict_do_nothing())
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def was_processed(session: AsyncSession, *, consumer: str, message_id: str) -> bool:
    """True when `consumer` already committed the effect of `message_id`."""
    row = await session.execute(
        select(inbox.c.message_id).where(inbox.c.consumer == consumer, inbox.c.message_id == message_id)
    )
    return row.first() is not None


async def prune(session: AsyncSession, *, older_than: timedelta) -> int:
    """Delete inbox rows older than `older_than` (longer than any redelivery can lag); returns the count."""
    cutoff = clock.now() - older_than
    result = await session.execute(delete(inbox).where(inbox.c.processed_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]
