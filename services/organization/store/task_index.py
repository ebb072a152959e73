"""Queries of the task index (branch → task per repository). Keyword-only, taking a session."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Row, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization.store.tables import task_index


async def get_entry(session: AsyncSession, *, org_id: str, task_id: str) -> Row[Any] | None:
    return (
        await session.execute(
            select(task_index).where(task_index.c.organization_id == org_id, task_index.c.task_id == task_id)
        )
    ).first()


async def get_entry_by_branch(
    session: AsyncSession, *, org_id: str, repository: str, branch: str
) -> Row[Any] | None:
    return (
        await session.execute(
            select(task_index).where(
                task_index.c.organization_id == org_id,
                task_index.c.repository == repository,
                task_index.c.branch == branch,
            )
        )
    ).first()


async def insert_entry(
    session: AsyncSession,
    *,
    org_id: str,
    task_id: str,
    repository: str,
    branch: str,
    title: str,
    virtual: bool,
    pull_request: bytes | None,
    now: dt.datetime,
) -> None:
    """Insert an entry; raises IntegrityError when the (repository, branch) or task id is taken."""
    await session.execute(
        task_index.insert().values(
            organization_id=org_id,
            task_id=task_id,
            repository=repository,
            branch=branch,
            title=title,
            virtual=virtual,
            pull_request=pull_request,
            create_time=now,
            update_time=now,
        )
    )


async def update_entry(session: AsyncSession, *, org_id: str, task_id: str, **values: Any) -> None:
    """Change columns of one entry (e.g. `virtual=False`, `pull_request=...`, `update_time=...`)."""
    await session.execute(
        update(task_index)
        .where(task_index.c.organization_id == org_id, task_index.c.task_id == task_id)
        .values(**values)
    )


async def delete_entry(session: AsyncSession, *, org_id: str, task_id: str) -> bool:
    result = await session.execute(
        delete(task_index).where(task_index.c.organization_id == org_id, task_index.c.task_id == task_id)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_entries(
    session: AsyncSession, *, org_id: str, repository: str, branch: str, after_task_id: str, limit: int
) -> list[Row[Any]]:
    """Entries ordered by task id, after `after_task_id`, at most `limit`."""
    query = select(task_index).where(
        task_index.c.organization_id == org_id, task_index.c.task_id > after_task_id
    )
    if repository:
        query = query.where(task_index.c.repository == repository)
    if branch:
        query = query.where(task_index.c.branch == branch)
    return list(await session.execute(query.order_by(task_index.c.task_id).limit(limit)))
