"""Queries of the organization summary projection (task summaries, repositories, open pull requests,
sync status, applied event versions). Keyword-only functions taking the caller's session."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Row, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization.store.tables import (
    applied_versions,
    open_pull_requests,
    repositories,
    sync_statuses,
    task_summaries,
)
from services.platform.clock import EPOCH
from services.platform.db.upsert import insert


async def accept_version(session: AsyncSession, *, name: str, version: int) -> bool:
    """Record `version` as the newest applied version of entity `name` if it is newer than the stored one.

    Returns False for a repeated or older version (the caller must then change nothing). Atomic: the
    row is locked until the caller's transaction ends, so concurrent events of one entity serialize.
    """
    stmt = insert(session, applied_versions).values(name=name, version=version)
    stmt = stmt.on_conflict_do_update(
        index_elements=[applied_versions.c.name],
        set_={"version": stmt.excluded.version},
        where=applied_versions.c.version < stmt.excluded.version,
    ).returning(applied_versions.c.version)
    return (await session.execute(stmt)).first() is not None


# -- task summaries ------------------------------------------------------------------------------


async def get_task_summary(session: AsyncSession, *, org_id: str, task_id: str) -> Row[Any] | None:
    """The stored row (repository, counted, update_time, summary) or None."""
    return (
        await session.execute(
            select(task_summaries).where(
                task_summaries.c.organization_id == org_id, task_summaries.c.task_id == task_id
            )
        )
    ).first()


async def put_task_summary(
    session: AsyncSession,
    *,
    org_id: str,
    task_id: str,
    repository: str,
    counted: bool,
    update_time: dt.datetime,
    summary: bytes,
) -> None:
    """Insert or replace one task summary row."""
    values = {"repository": repository, "counted": counted, "update_time": update_time, "summary": summary}
    stmt = insert(session, task_summaries).values(organization_id=org_id, task_id=task_id, **values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[task_summaries.c.organization_id, task_summaries.c.task_id], set_=values
        )
    )


async def delete_task_summary(session: AsyncSession, *, org_id: str, task_id: str) -> bool:
    """Delete one task summary row; True when it existed."""
    result = await session.execute(
        delete(task_summaries).where(
            task_summaries.c.organization_id == org_id, task_summaries.c.task_id == task_id
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def repository_task_stats(
    session: AsyncSession, *, org_id: str, repository: str
) -> tuple[int, dt.datetime | None]:
    """(number of counted tasks, newest task update_time or None) of one repository."""
    row = (
        await session.execute(
            select(
                func.count().filter(task_summaries.c.counted.is_(True)),
                func.max(task_summaries.c.update_time),
            ).where(task_summaries.c.organization_id == org_id, task_summaries.c.repository == repository)
        )
    ).one()
    return int(row[0] or 0), row[1]


async def list_task_summaries(session: AsyncSession, *, org_id: str) -> list[bytes]:
    """Serialized TaskSummary messages of the organization, most recently updated first."""
    rows = await session.execute(
        select(task_summaries.c.summary)
        .where(task_summaries.c.organization_id == org_id)
        .order_by(task_summaries.c.update_time.desc(), task_summaries.c.task_id)
    )
    return [r[0] for r in rows]


# -- repositories --------------------------------------------------------------------------------


async def get_repository(session: AsyncSession, *, org_id: str, name: str) -> Row[Any] | None:
    return (
        await session.execute(
            select(repositories).where(repositories.c.organization_id == org_id, repositories.c.name == name)
        )
    ).first()


async def put_repository(session: AsyncSession, *, org_id: str, name: str, **values: Any) -> None:
    """Insert or update a repository row; `values` are column values (all required on insert)."""
    stmt = insert(session, repositories).values(organization_id=org_id, name=name, **values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[repositories.c.organization_id, repositories.c.name], set_=values
        )
    )


async def delete_repository(session: AsyncSession, *, org_id: str, name: str) -> None:
    await session.execute(
        delete(repositories).where(repositories.c.organization_id == org_id, repositories.c.name == name)
    )


async def list_repositories(session: AsyncSession, *, org_id: str) -> list[Row[Any]]:
    """Repositories shown in the summary (listed, or with tasks), most recent activity first."""
    rows = await session.execute(
        select(repositories)
        .where(
            repositories.c.organization_id == org_id,
            or_(repositories.c.listed.is_(True), repositories.c.task_count > 0),
        )
        .order_by(repositories.c.latest_activity_time.desc(), repositories.c.name)
    )
    return list(rows)


# -- open pull requests --------------------------------------------------------------------------


async def put_open_pull_request(
    session: AsyncSession,
    *,
    name: str,
    org_id: str,
    repository: str,
    head_branch: str,
    update_time: dt.datetime,
    summary: bytes,
) -> None:
    values = {
        "organization_id": org_id,
        "repository": repository,
        "head_branch": head_branch,
        "update_time": update_time,
        "summary": summary,
    }
    stmt = insert(session, open_pull_requests).values(name=name, **values)
    await session.execute(stmt.on_conflict_do_update(index_elements=[open_pull_requests.c.name], set_=values))


async def delete_open_pull_request(session: AsyncSession, *, name: str) -> bool:
    result = await session.execute(delete(open_pull_requests).where(open_pull_requests.c.name == name))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_open_pull_requests(session: AsyncSession, *, org_id: str) -> list[bytes]:
    """Serialized PullRequestSummary messages, most recently updated first."""
    rows = await session.execute(
        select(open_pull_requests.c.summary)
        .where(open_pull_requests.c.organization_id == org_id)
        .order_by(open_pull_requests.c.update_time.desc(), open_pull_requests.c.name)
    )
    return [r[0] for r in rows]


# -- sync status ---------------------------------------------------------------------------------


async def put_sync_status(session: AsyncSession, *, org_id: str, status: bytes) -> None:
    stmt = insert(session, sync_statuses).values(organization_id=org_id, status=status)
    await session.execute(
        stmt.on_conflict_do_update(index_elements=[sync_statuses.c.organization_id], set_={"status": status})
    )


async def get_sync_status(session: AsyncSession, *, org_id: str) -> bytes | None:
    row = (
        await session.execute(select(sync_statuses.c.status).where(sync_statuses.c.organization_id == org_id))
    ).first()
    return row[0] if row else None


async def get_sync_statuses(session: AsyncSession, *, org_ids: list[str]) -> dict[str, bytes]:
    rows = await session.execute(
        select(sync_statuses.c.organization_id, sync_statuses.c.status).where(
            sync_statuses.c.organization_id.in_(org_ids)
        )
    )
    return {r[0]: r[1] for r in rows}


async def update_repository(session: AsyncSession, *, org_id: str, name: str, **values: Any) -> None:
    """Change columns of an existing repository row."""
    await session.execute(
        update(repositories)
        .where(repositories.c.organization_id == org_id, repositories.c.name == name)
        .values(**values)
    )


async def lock_repository(session: AsyncSession, *, org_id: str, name: str, full_name: str) -> Row[Any]:
    """Return the repository row locked for this transaction, creating an unlisted placeholder if
    missing. Recounting under this lock makes concurrent recounts of one repository serialize, so
    the last writer counts every committed task (no lost update under READ COMMITTED)."""
    stmt = insert(session, repositories).values(
        organization_id=org_id,
        name=name,
        full_name=full_name,
        default_branch="",
        listed=False,
        own_update_time=EPOCH,
        task_count=0,
        latest_activity_time=EPOCH,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[repositories.c.organization_id, repositories.c.name],
        set_={"name": stmt.excluded.name},
    ).returning(*repositories.c)
    return (await session.execute(stmt)).one()
