"""Queries of GitHub organization discovery: discovery records, installations, GitHub-backed
organizations and memberships. Keyword-only functions taking a session."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization.store.tables import (
    applied_versions,
    github_discoveries,
    github_installations,
    members,
    organizations,
)
from services.platform.db.upsert import insert

ACTIVE = 1  # MemberState.MEMBER_STATE_ACTIVE
PROVIDER_GITHUB = 2  # github_data Provider.PROVIDER_GITHUB


async def put_discovery(session: AsyncSession, *, user_id: str, **values: Any) -> None:
    """Insert or update a user's discovery record (`values`: state, error_message, update_time,
    synced_time)."""
    stmt = insert(session, github_discoveries).values(user_id=user_id, **values)
    await session.execute(
        stmt.on_conflict_do_update(index_elements=[github_discoveries.c.user_id], set_=values)
    )


async def get_discovery(session: AsyncSession, *, user_id: str) -> Row[Any] | None:
    return (
        await session.execute(select(github_discoveries).where(github_discoveries.c.user_id == user_id))
    ).first()


async def get_installation(session: AsyncSession, *, org_id: str) -> Row[Any] | None:
    return (
        await session.execute(
            select(github_installations).where(github_installations.c.organization_id == org_id)
        )
    ).first()


async def put_installation(session: AsyncSession, *, org_id: str, **values: Any) -> None:
    """Insert or update (`values`: installation_status, installation_id, connected_installation_id,
    update_time)."""
    stmt = insert(session, github_installations).values(organization_id=org_id, **values)
    await session.execute(
        stmt.on_conflict_do_update(index_elements=[github_installations.c.organization_id], set_=values)
    )


async def find_github_organization(session: AsyncSession, *, account_id: int, kind: int) -> Row[Any] | None:
    """The GitHub-backed organization of this GitHub account and kind (survives login renames)."""
    rows = await session.execute(
        select(organizations)
        .where(
            organizations.c.provider == PROVIDER_GITHUB,
            organizations.c.github_account_id == account_id,
            organizations.c.kind == kind,
        )
        .order_by(organizations.c.create_time)
        .limit(1)
    )
    return rows.first()


async def github_memberships(session: AsyncSession, *, user_id: str, kind: int) -> list[Any]:
    """(organization id, github_account_id) of the GitHub-backed organizations of `kind` where the
    user is an active member."""
    rows = await session.execute(
        select(organizations.c.id, organizations.c.github_account_id)
        .join(members, members.c.organization_id == organizations.c.id)
        .where(
            members.c.user_id == user_id,
            members.c.state == ACTIVE,
            organizations.c.provider == PROVIDER_GITHUB,
            organizations.c.kind == kind,
        )
        .order_by(organizations.c.id)
    )
    return list(rows)


async def delete_member(session: AsyncSession, *, org_id: str, user_id: str) -> None:
    await session.execute(
        delete(members).where(members.c.organization_id == org_id, members.c.user_id == user_id)
    )


async def reported_version(session: AsyncSession, *, name: str) -> int:
    """The newest version of entity `name` applied from github-data's events; 0 when none was."""
    row = (
        await session.execute(select(applied_versions.c.version).where(applied_versions.c.name == name))
    ).first()
    return int(row[0]) if row is not None else 0
