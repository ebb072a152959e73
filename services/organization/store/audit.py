"""Queries of the audit log. Keyword-only, taking a session."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Row, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization.store.tables import audit_events
from services.platform.db.upsert import insert


async def append(session: AsyncSession, **values: Any) -> bool:
    """Insert one event; False when (organization_id, event_id) is already stored."""
    stmt = (
        insert(session, audit_events)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[audit_events.c.organization_id, audit_events.c.event_id])
    )
    return bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def list_events(
    session: AsyncSession,
    *,
    org_id: str,
    repository: str,
    branch: str,
    task: str,
    before: tuple[dt.datetime, int] | None,
    limit: int,
) -> list[Row[Any]]:
    """Events newest first (create_time, id descending), strictly before `before`, at most `limit`."""
    query = select(audit_events).where(audit_events.c.organization_id == org_id)
    if repository:
        query = query.where(audit_events.c.repository == repository)
    if branch:
        query = query.where(audit_events.c.branch == branch)
    if task:
        query = query.where(audit_events.c.task == task)
    if before is not None:
        at, row_id = before
        query = query.where(
            or_(
                audit_events.c.create_time < at,
                and_(audit_events.c.create_time == at, audit_events.c.id < row_id),
            )
        )
    query = query.order_by(audit_events.c.create_time.desc(), audit_events.c.id.desc()).limit(limit)
    return list(await session.execute(query))
