"""Membership changes: the MemberChanged / MemberRemoved events every writer of `members` publishes,
and the application of github-data's GitHub member events to the member rows.

Every change of a membership row publishes, in the writer's transaction (outbox):

    organization.member.changed   MemberChanged   created, or role / state / profile changed
    organization.member.removed   MemberRemoved   the row was deleted

Their version is the change's time in microseconds, kept strictly growing per membership (a
membership deleted and created again continues above the removal). Every process caching membership
checks drops that (organization, user) answer when it sees one (`services.platform.authz`).

GitHub members (`github_data.member.changed` / `.removed`, queue `organization.github_members`):
the GitHub member id is the user id of a GitHub user here. A member event is applied only if its
version is newer than the last applied one of that GitHub member (`applied_versions`):

    changed   the user signed in before → ACTIVE member with the GitHub role (admin → ADMIN, else
              MEMBER); never signed in (no user row) → INVITED, no access yet; GitHub state
              `pending` → INVITED. An ACTIVE membership keeps its role, as in GitHub discovery
              (which makes every discovered organization member an admin).
    removed   the membership is deleted, whatever its role: the user loses access at once and the
              organization leaves their app shell (WatchApp DELETE item, updated User)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from foundry.github_data.v1 import events_pb2 as gh_events
from foundry.organization.v1 import events_pb2, member_pb2
from google.protobuf.message import DecodeError
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization import convert
from services.organization.domain.errors import DOMAIN
from services.organization.domain.names import app_scope, organization_name, parse_child
from services.organization.store import accounts as a
from services.organization.store import github as g
from services.organization.store import projection as q
from services.organization.usecases import app_feed
from services.platform import clock
from services.platform.errors import InvalidArgument
from services.platform.logging import get_logger
from services.platform.outbox import Outbox
from services.platform.watch import record_change

log = get_logger(__name__)

MEMBER_CHANGED = "organization.member.changed"
MEMBER_REMOVED = "organization.member.removed"
GITHUB_MEMBER_CHANGED = "github_data.member.changed"
GITHUB_MEMBER_REMOVED = "github_data.member.removed"
GITHUB_MEMBER_KEYS = (GITHUB_MEMBER_CHANGED, GITHUB_MEMBER_REMOVED)

OWNER = member_pb2.MEMBER_ROLE_OWNER
ADMIN = member_pb2.MEMBER_ROLE_ADMIN
MEMBER = member_pb2.MEMBER_ROLE_MEMBER
ACTIVE = member_pb2.MEMBER_STATE_ACTIVE
INVITED = member_pb2.MEMBER_STATE_INVITED


def next_version(previous: dt.datetime | None) -> int:
    """A membership's next version: microseconds since the epoch now, or just above the previous
    version (`previous`, the row's update_time, is that version's instant), so a clock step back never
    lowers a version. The row's times are stored as `clock.from_us(version)`."""
    now = clock.to_us(clock.now())
    return now if previous is None else max(now, clock.to_us(previous) + 1)


async def put_member(
    outbox: Outbox, session: AsyncSession, *, org_id: str, user_id: str, existing: Any, **values: Any
) -> None:
    """Insert or update the membership (`values` as `store.accounts.put_member`, without the times)
    and publish MemberChanged. `existing` is the row read in this transaction (None if absent)."""
    version = next_version(existing.update_time if existing is not None else None)
    at = clock.from_us(version)
    await a.put_member(session, org_id=org_id, user_id=user_id, create_time=at, update_time=at, **values)
    row = await a.get_member(session, org_id=org_id, user_id=user_id)
    member = convert.member(row)
    await outbox.publish(
        session,
        routing_key=MEMBER_CHANGED,
        message=events_pb2.MemberChanged(name=member.name, version=version, member=member),
    )


async def delete_member(outbox: Outbox, session: AsyncSession, *, org_id: str, existing: Any) -> None:
    """Delete the membership row `existing` and publish MemberRemoved."""
    await g.delete_member(session, org_id=org_id, user_id=existing.user_id)
    await outbox.publish(
        session,
        routing_key=MEMBER_REMOVED,
        message=events_pb2.MemberRemoved(
            name=f"organizations/{org_id}/members/{existing.user_id}",
            version=next_version(existing.update_time),
            user=f"users/{existing.user_id}",
        ),
    )


async def organization_left(session: AsyncSession, *, org_id: str, user_id: str) -> None:
    """The user is no longer eligible for the organization: DELETE item and updated User on WatchApp."""
    await record_change(session, scope=app_scope(user_id), name=organization_name(org_id), resource=None)
    await app_feed.user_changed(session, user_id=user_id)


class GithubMembers:
    """Applies github-data's GitHub member events to the member rows (see the module docstring)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def apply(self, session: AsyncSession, *, routing_key: str, body: bytes) -> bool:
        """Apply one event in the caller's transaction; False when it was old, repeated or moot.

        Raises InvalidArgument (reason `MALFORMED_EVENT` / `UNKNOWN_EVENT`) for a body or name that
        cannot be read, so the Worker dead-letters it.
        """
        if routing_key not in GITHUB_MEMBER_KEYS:
            raise InvalidArgument(
                f"no member rule for routing key {routing_key!r}", domain=DOMAIN, reason="UNKNOWN_EVENT"
            )
        changed = gh_events.GithubMemberChanged()
        try:
            if routing_key == GITHUB_MEMBER_CHANGED:
                changed.ParseFromString(body)
                name, version = changed.name, changed.version
            else:
                removed = gh_events.GithubMemberRemoved.FromString(body)
                name, version = removed.name, removed.version
        except DecodeError as exc:
            raise InvalidArgument(
                f"{routing_key}: undecodable body ({exc})", domain=DOMAIN, reason="MALFORMED_EVENT"
            ) from exc
        org_id, user_id = parse_child(name, "githubMembers")
        if not await q.accept_version(session, name=name, version=version):
            return False
        if await a.get_organization(session, org_id=org_id) is None:
            return False
        existing = await a.get_member(session, org_id=org_id, user_id=user_id)
        if routing_key == GITHUB_MEMBER_REMOVED:
            if existing is None:
                return False
            await delete_member(self._outbox, session, org_id=org_id, existing=existing)
            if existing.state == ACTIVE:
                await organization_left(session, org_id=org_id, user_id=user_id)
            log.info("github_member_removed", organization=org_id, user=user_id)
            return True
        return await self._changed(session, org_id, user_id, existing, changed)

    async def _changed(
        self,
        session: AsyncSession,
        org_id: str,
        user_id: str,
        existing: Any,
        event: gh_events.GithubMemberChanged,
    ) -> bool:
        gm = event.github_member
        user = await a.get_user(session, user_id=user_id)
        role: int = ADMIN if gm.role == "admin" else MEMBER
        if existing is not None and (existing.role == OWNER or existing.state == ACTIVE):
            role = int(existing.role)
        state = ACTIVE if user is not None and gm.state in ("", "active") else INVITED
        values = {
            "login": user.login if user is not None else gm.login,
            "display_name": (user.display_name if user is not None else gm.display_name) or gm.login,
            "email": user.email if user is not None else gm.email,
            "avatar_url": (user.avatar_url if user is not None else "") or gm.avatar_url,
            "role": role,
            "state": state,
        }
        if existing is not None and all(getattr(existing, k) == v for k, v in values.items()):
            return False
        await put_member(self._outbox, session, org_id=org_id, user_id=user_id, existing=existing, **values)
        was_active = existing is not None and existing.state == ACTIVE
        if state == ACTIVE and not was_active:
            await app_feed.organization_joined(session, org_id=org_id, user_id=user_id)
        elif was_active and state != ACTIVE:
            await organization_left(session, org_id=org_id, user_id=user_id)
        log.info("github_member_applied", organization=org_id, user=user_id, role=role, state=state)
        return True
