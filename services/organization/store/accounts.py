"""Queries of organizations, members, users, auth sessions and GitHub tokens.

Keyword-only functions taking a session."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization.store.tables import auth_sessions, members, organizations, users
from services.platform.db.upsert import insert

ACTIVE = 1  # MemberState.MEMBER_STATE_ACTIVE


# -- organizations -------------------------------------------------------------------------------


async def get_organization(session: AsyncSession, *, org_id: str) -> Row[Any] | None:
    return (await session.execute(select(organizations).where(organizations.c.id == org_id))).first()


async def get_organizations(session: AsyncSession, *, org_ids: list[str]) -> list[Row[Any]]:
    """Organizations with these ids, by display name."""
    rows = await session.execute(
        select(organizations)
        .where(organizations.c.id.in_(org_ids))
        .order_by(organizations.c.display_name, organizations.c.id)
    )
    return list(rows)


async def get_organization_by_request(session: AsyncSession, *, request_id: str) -> Row[Any] | None:
    return (
        await session.execute(select(organizations).where(organizations.c.request_id == request_id))
    ).first()


async def local_organizations(session: AsyncSession) -> list[Any]:
    """(id, local_root_path) of every organization backed by a local directory."""
    rows = await session.execute(
        select(organizations.c.id, organizations.c.local_root_path).where(
            organizations.c.local_root_path != ""
        )
    )
    return list(rows)


async def insert_organization(session: AsyncSession, **values: Any) -> None:
    await session.execute(organizations.insert().values(**values))


async def update_organization(session: AsyncSession, *, org_id: str, **values: Any) -> None:
    await session.execute(update(organizations).where(organizations.c.id == org_id).values(**values))


# -- members -------------------------------------------------------------------------------------


async def get_member(session: AsyncSession, *, org_id: str, user_id: str) -> Row[Any] | None:
    return (
        await session.execute(
            select(members).where(members.c.organization_id == org_id, members.c.user_id == user_id)
        )
    ).first()


async def put_member(session: AsyncSession, *, org_id: str, user_id: str, **values: Any) -> None:
    """Insert or update a membership (`values`: login, display_name, email, avatar_url, role, state,
    create_time, update_time; create_time is kept on update)."""
    stmt = insert(session, members).values(organization_id=org_id, user_id=user_id, **values)
    changes = {k: v for k, v in values.items() if k != "create_time"}
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[members.c.organization_id, members.c.user_id], set_=changes
        )
    )


async def list_members(session: AsyncSession, *, org_id: str, after_login: str, limit: int) -> list[Row[Any]]:
    """Members ordered by (login, user id) after `after_login`, at most `limit`."""
    rows = await session.execute(
        select(members)
        .where(members.c.organization_id == org_id, members.c.login > after_login)
        .order_by(members.c.login, members.c.user_id)
        .limit(limit)
    )
    return list(rows)


async def active_member_ids(session: AsyncSession, *, org_id: str) -> list[str]:
    rows = await session.execute(
        select(members.c.user_id).where(members.c.organization_id == org_id, members.c.state == ACTIVE)
    )
    return [r[0] for r in rows]


async def eligible_organization_ids(session: AsyncSession, *, user_id: str) -> list[str]:
    """Organizations where the user is an active member, by id."""
    rows = await session.execute(
        select(members.c.organization_id)
        .where(members.c.user_id == user_id, members.c.state == ACTIVE)
        .order_by(members.c.organization_id)
    )
    return [r[0] for r in rows]


# -- users and tokens ----------------------------------------------------------------------------


async def get_user(session: AsyncSession, *, user_id: str) -> Row[Any] | None:
    return (await session.execute(select(users).where(users.c.id == user_id))).first()


async def put_user(session: AsyncSession, *, user_id: str, **values: Any) -> None:
    """Insert or update a user; `create_time` is kept on update."""
    stmt = insert(session, users).values(id=user_id, **values)
    changes = {k: v for k, v in values.items() if k != "create_time"}
    await session.execute(stmt.on_conflict_do_update(index_elements=[users.c.id], set_=changes))


async def update_user(session: AsyncSession, *, user_id: str, **values: Any) -> None:
    await session.execute(update(users).where(users.c.id == user_id).values(**values))


# -- auth sessions -------------------------------------------------------------------------------


async def get_auth_session(session: AsyncSession, *, session_id: str) -> Row[Any] | None:
    return (await session.execute(select(auth_sessions).where(auth_sessions.c.id == session_id))).first()


async def insert_auth_session(session: AsyncSession, **values: Any) -> None:
    await session.execute(auth_sessions.insert().values(**values))


async def update_auth_session(session: AsyncSession, *, session_id: str, **values: Any) -> None:
    await session.execute(update(auth_sessions).where(auth_sessions.c.id == session_id).values(**values))
