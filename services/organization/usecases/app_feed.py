"""Watch changes of the app shell (scope `app:users/<id>`, one per user): records the User, its
AuthSessions, its eligible Organizations and its GithubDiscovery whenever they change, in the
writer's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.organization import convert
from services.organization.domain.names import app_scope
from services.organization.store import accounts as a
from services.organization.store import github as g
from services.organization.store import projection as q
from services.platform.watch import record_change


async def organization_changed(session: AsyncSession, *, org_id: str) -> None:
    """Tell every active member's app stream about the organization's new state (settings, sync status)."""
    row = await a.get_organization(session, org_id=org_id)
    if row is None:
        return
    org = convert.organization(row, await q.get_sync_status(session, org_id=org_id))
    for user_id in sorted(await a.active_member_ids(session, org_id=org_id)):
        await record_change(session, scope=app_scope(user_id), name=org.name, resource=org)


async def organization_joined(session: AsyncSession, *, org_id: str, user_id: str) -> None:
    """The user became eligible for the organization: new Organization item and the updated User."""
    row = await a.get_organization(session, org_id=org_id)
    if row is not None:
        org = convert.organization(row, await q.get_sync_status(session, org_id=org_id))
        await record_change(session, scope=app_scope(user_id), name=org.name, resource=org)
    await user_changed(session, user_id=user_id)


async def user_changed(session: AsyncSession, *, user_id: str) -> None:
    row = await a.get_user(session, user_id=user_id)
    if row is None:
        return
    user = convert.user(row, await a.eligible_organization_ids(session, user_id=user_id))
    await record_change(session, scope=app_scope(user_id), name=user.name, resource=user)


async def auth_session_changed(session: AsyncSession, *, row: Any) -> None:
    auth = convert.auth_session(row)
    await record_change(session, scope=app_scope(row.user_id), name=auth.name, resource=auth)


async def discovery_changed(session: AsyncSession, *, user_id: str) -> None:
    """The user's GitHub discovery record changed (state, message): its GithubDiscovery item."""
    row = await g.get_discovery(session, user_id=user_id)
    if row is not None:
        discovery = convert.github_discovery(row)
        await record_change(session, scope=app_scope(user_id), name=discovery.name, resource=discovery)
