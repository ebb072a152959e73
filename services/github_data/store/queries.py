"""Reads and writes of the github_data tables: keyword-only functions taking an AsyncSession.

Connections, sync status and webhook deliveries live here; repository, pull request and member rows
in `rows` (re-exported, so callers use `queries.<name>` for everything).

Writers that touch an organization's rows first update its `sync_status` row (`bump_seq`,
`update_status`), which serializes them per organization (row lock on PostgreSQL, the database
lock on SQLite); upserts are then plain select-then-write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.github_data.domain.models import (
    Connection,
    SyncStatus,
    WebhookDelivery,
)
from services.github_data.store.mirror import (
    delete_member,
    delete_members,
    delete_pull_request,
    delete_pull_requests,
    delete_repositories,
    get_member,
    get_pull_request,
    get_repository,
    list_members,
    list_pull_requests,
    list_repositories,
    save_member,
    stale_members,
    touch_pull_request,
    touch_repository,
    write_pull_request,
    write_repository,
)
from services.github_data.store.tables import (
    connections,
    pull_requests,
    repositories,
    sync_status,
    webhook_deliveries,
)
from services.platform.db.upsert import insert as upsert_insert

# -- connections ------------------------------------------------------------------------------------


def _connection(row: Any) -> Connection:
    return Connection(
        organization=row.organization,
        provider=row.provider,
        root_path=row.root_path or "",
        account_login=row.account_login or "",
        account_id=row.account_id or 0,
        account_type=row.account_type or "",
        installation_id=row.installation_id or 0,
        token_user=row.token_user or "",
        api_url=row.api_url or "",
        installation_status=row.installation_status,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _connection_values(c: Connection) -> dict[str, Any]:
    return {
        "provider": c.provider,
        "root_path": c.root_path or None,
        "account_login": c.account_login or None,
        "account_id": c.account_id or None,
        "account_type": c.account_type or None,
        "installation_id": c.installation_id or None,
        "token_user": c.token_user or None,
        "api_url": c.api_url or None,
        "installation_status": c.installation_status,
    }


async def get_connection(session: AsyncSession, *, org: str) -> Connection | None:
    row = (await session.execute(select(connections).where(connections.c.organization == org))).first()
    return _connection(row) if row else None


async def save_connection(session: AsyncSession, *, connection: Connection, now: datetime) -> Connection:
    """Insert or update the connection of `connection.organization` (one upsert: two first connects
    at once both succeed); returns it as stored."""
    values = {**_connection_values(connection), "update_time": now}
    stmt = upsert_insert(session, connections).values(
        organization=connection.organization, create_time=now, **values
    )
    await session.execute(
        stmt.on_conflict_do_update(index_elements=[connections.c.organization], set_=values)
    )
    stored = await get_connection(session, org=connection.organization)
    assert stored is not None
    return stored


async def set_installation(
    session: AsyncSession, *, org: str, status: str, installation_id: int | None, now: datetime
) -> None:
    values: dict[str, Any] = {"installation_status": status, "update_time": now}
    if installation_id:
        values["installation_id"] = installation_id
    await session.execute(update(connections).where(connections.c.organization == org).values(**values))


async def connections_for_account(session: AsyncSession, *, login: str) -> list[Connection]:
    """GitHub connections whose account login is `login` (case-insensitive)."""
    rows = await session.execute(
        select(connections).where(
            connections.c.provider == "github", func.lower(connections.c.account_login) == login.lower()
        )
    )
    return [_connection(r) for r in rows]


# -- sync status ------------------------------------------------------------------------------------


def _status(row: Any, repos: int = 0, prs: int = 0, conn: Connection | None = None) -> SyncStatus:
    account = ""
    if conn is not None:
        account = conn.root_path if conn.provider == "local" else conn.account_login
    return SyncStatus(
        organization=row.organization,
        state=row.state,
        phase=row.phase,
        label=row.label,
        processed=row.processed,
        total=row.total,
        generation=row.generation,
        last_sync_time=row.last_sync_time,
        last_webhook_time=row.last_webhook_time,
        last_webhook_event=row.last_webhook_event,
        error_message=row.error_message,
        version=row.version,
        job_state=row.job_state,
        job_reason=row.job_reason,
        job_rerun=row.job_rerun,
        update_time=row.update_time,
        repository_count=repos,
        open_pull_request_count=prs,
        provider=conn.provider if conn else None,
        installation_status=conn.installation_status if conn else "",
        connected_account=account,
    )


async def create_status(session: AsyncSession, *, org: str, now: datetime) -> None:
    """The first status row of an organization (pending, generation 0); none when it has one (two
    first connects at once)."""
    await session.execute(
        upsert_insert(session, sync_status)
        .values(
            organization=org,
            state="pending",
            phase=None,
            label="",
            processed=0,
            total=0,
            generation=0,
            last_webhook_event="",
            error_message="",
            version=0,
            seq=0,
            job_state="idle",
            job_reason="",
            job_rerun="",
            update_time=now,
        )
        .on_conflict_do_nothing(index_elements=[sync_status.c.organization])
    )


async def get_status(session: AsyncSession, *, org: str, with_counts: bool = True) -> SyncStatus | None:
    """The status with current row counts and connection facts; None when never connected."""
    row = (await session.execute(select(sync_status).where(sync_status.c.organization == org))).first()
    if row is None:
        return None
    conn = await get_connection(session, org=org)
    if not with_counts:
        return _status(row, conn=conn)
    repos, prs = await counts(session, org=org)
    return _status(row, repos, prs, conn)


async def job_started_at(session: AsyncSession, *, org: str) -> datetime | None:
    stmt = select(sync_status.c.job_started_at).where(sync_status.c.organization == org)
    return (await session.execute(stmt)).scalar()


async def bump_seq(session: AsyncSession, *, org: str) -> int:
    """Next value of the organization's version counter (takes the status row's write lock)."""
    stmt = (
        update(sync_status)
        .where(sync_status.c.organization == org)
        .values(seq=sync_status.c.seq + 1)
        .returning(sync_status.c.seq)
    )
    return int((await session.execute(stmt)).scalar_one())


async def update_status(
    session: AsyncSession,
    *,
    org: str,
    values: dict[str, Any],
    token: str | None = None,
    where_generation: int | None = None,
    where_job_states: Sequence[str] | None = None,
    where_lease_lapsed_at: datetime | None = None,
) -> bool:
    """Update the status row; `version` is bumped from the counter. Conditions fence the write:
    `token` (this runner still owns the job), `where_generation`, `where_job_states`,
    `where_lease_lapsed_at` (no runner holds a lease on the job at that time).
    Returns False when a condition did not hold (nothing written)."""
    conditions = [sync_status.c.organization == org]
    if token is not None:
        conditions.append(sync_status.c.job_token == token)
    if where_generation is not None:
        conditions.append(sync_status.c.generation == where_generation)
    if where_job_states is not None:
        conditions.append(sync_status.c.job_state.in_(list(where_job_states)))
    if where_lease_lapsed_at is not None:
        lease = sync_status.c.job_lease_until
        conditions.append(or_(lease.is_(None), lease <= where_lease_lapsed_at))
    stmt = (
        update(sync_status)
        .where(and_(*conditions))
        .values(seq=sync_status.c.seq + 1, version=sync_status.c.seq + 1, **values)
    )
    result = await session.execute(stmt)
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def request_rerun(session: AsyncSession, *, org: str, reason: str) -> bool:
    """Record that a sync was asked for (`reason`) while one runs, unless one was already; False when
    no sync runs or a rerun is recorded. Not a change of the status shown: `version` stays."""
    stmt = (
        update(sync_status)
        .where(
            and_(
                sync_status.c.organization == org,
                sync_status.c.job_state == "running",
                sync_status.c.job_rerun == "",
            )
        )
        .values(job_rerun=reason)
    )
    return bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def take_rerun(session: AsyncSession, *, org: str) -> str:
    """The rerun recorded during the sync that ends now ("" when none), cleared."""
    stmt = select(sync_status.c.job_rerun).where(sync_status.c.organization == org)
    reason = str((await session.execute(stmt)).scalar() or "")
    if reason:
        clear = update(sync_status).where(sync_status.c.organization == org).values(job_rerun="")
        await session.execute(clear)
    return reason


async def renew_lease(session: AsyncSession, *, org: str, token: str, until: datetime | None) -> bool:
    """Move the lease of the runner holding `token` to `until` (None: hand it back); False when that
    runner no longer owns the job. Not a change of the status: `version` stays."""
    stmt = (
        update(sync_status)
        .where(and_(sync_status.c.organization == org, sync_status.c.job_token == token))
        .values(job_lease_until=until)
    )
    return bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def active_jobs(session: AsyncSession, *, lease_lapsed_at: datetime) -> list[tuple[str, int]]:
    """(organization, generation) of every sync queued, or running without a live lease at
    `lease_lapsed_at` (its runner died, or a stop handed the lease back)."""
    lease = sync_status.c.job_lease_until
    rows = await session.execute(
        select(sync_status.c.organization, sync_status.c.generation).where(
            or_(
                sync_status.c.job_state == "queued",
                and_(
                    sync_status.c.job_state == "running",
                    or_(lease.is_(None), lease <= lease_lapsed_at),
                ),
            )
        )
    )
    return [(r.organization, int(r.generation)) for r in rows]


async def stalled_jobs(session: AsyncSession, *, lease_lapsed_at: datetime) -> list[tuple[str, int]]:
    """(organization, generation) of every running sync whose lease lapsed before `lease_lapsed_at`;
    their lease is cleared in the same statement, so the next sweep does not take them again."""
    lease = sync_status.c.job_lease_until
    stmt = (
        update(sync_status)
        .where(and_(sync_status.c.job_state == "running", lease.is_not(None), lease <= lease_lapsed_at))
        .values(job_lease_until=None)
        .returning(sync_status.c.organization, sync_status.c.generation)
    )
    return [(r.organization, int(r.generation)) for r in await session.execute(stmt)]


async def counts(session: AsyncSession, *, org: str) -> tuple[int, int]:
    """(stored repositories, stored open pull requests) of `org`."""
    repos = (
        await session.execute(
            select(func.count()).select_from(repositories).where(repositories.c.organization == org)
        )
    ).scalar_one()
    prs = (
        await session.execute(
            select(func.count()).select_from(pull_requests).where(pull_requests.c.organization == org)
        )
    ).scalar_one()
    return int(repos), int(prs)


# -- webhook deliveries -----------------------------------------------------------------------------


def _delivery(row: Any) -> WebhookDelivery:
    return WebhookDelivery(
        delivery_id=row.delivery_id,
        event=row.event,
        action=row.action,
        payload=row.payload,
        state=row.state,
        receive_time=row.receive_time,
        organization=row.organization,
        detail=row.detail,
        handle_time=row.handle_time,
    )


async def get_delivery(session: AsyncSession, *, delivery_id: str) -> WebhookDelivery | None:
    row = (
        await session.execute(
            select(webhook_deliveries).where(webhook_deliveries.c.delivery_id == delivery_id)
        )
    ).first()
    return _delivery(row) if row else None


async def insert_delivery(session: AsyncSession, *, delivery: WebhookDelivery) -> None:
    await session.execute(
        insert(webhook_deliveries).values(
            delivery_id=delivery.delivery_id,
            event=delivery.event,
            action=delivery.action,
            payload=delivery.payload,
            organization=delivery.organization,
            state=delivery.state,
            detail=delivery.detail,
            receive_time=delivery.receive_time,
            handle_time=None,
        )
    )


async def finish_delivery(
    session: AsyncSession, *, delivery_id: str, state: str, organization: str, detail: str, now: datetime
) -> None:
    await session.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.delivery_id == delivery_id)
        .values(state=state, organization=organization, detail=detail, handle_time=now)
    )


__all__ = [
    "active_jobs",
    "bump_seq",
    "connections_for_account",
    "counts",
    "create_status",
    "delete_member",
    "delete_members",
    "delete_pull_request",
    "delete_pull_requests",
    "delete_repositories",
    "finish_delivery",
    "get_connection",
    "get_delivery",
    "get_member",
    "get_pull_request",
    "get_repository",
    "get_status",
    "insert_delivery",
    "job_started_at",
    "list_members",
    "list_pull_requests",
    "list_repositories",
    "save_connection",
    "save_member",
    "set_installation",
    "stale_members",
    "touch_pull_request",
    "touch_repository",
    "update_status",
    "write_pull_request",
    "write_repository",
]
