"""Organizations and their members: ConnectLocalOrganization, Get/List, members, CheckMembership."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from foundry.github_data.v1 import connection_pb2, sync_status_pb2
from foundry.github_data.v1 import github_data_service_pb2 as gh_pb2
from foundry.organization.v1 import member_pb2, organization_pb2
from sqlalchemy.exc import IntegrityError

from services.organization.domain.errors import DOMAIN, organization_not_found
from services.organization.domain.names import (
    check_organization_id,
    organization_name,
    parse_child,
    parse_organization,
    parse_user,
    slugify,
    summary_scope,
    sync_status_name,
)
from services.organization.projection._time import from_us
from services.organization.store import accounts as a
from services.organization.store import projection as q
from services.organization.store._sql import now_us
from services.organization.usecases import _caller, app_feed, members, records
from services.platform.authz import Membership
from services.platform.db import Database
from services.platform.errors import AlreadyExists, NotFound, require
from services.platform.outbox import Outbox
from services.platform.paging import offset_page
from services.platform.watch import record_change

OWNER = member_pb2.MEMBER_ROLE_OWNER
ACTIVE = member_pb2.MEMBER_STATE_ACTIVE


def member_check(db: Database) -> Any:
    """The local `MemberCheck` for `Membership`: (organizations/{org}, users/{user}) → active member?"""

    async def check(organization: str, user: str) -> bool:
        org_id, user_id = organization.removeprefix("organizations/"), user.removeprefix("users/")
        async with db.snapshot() as session:
            row = await a.get_member(session, org_id=org_id, user_id=user_id)
        return row is not None and row.state == ACTIVE

    return check


class Organizations:
    """Organizations, members and membership checks.

    Args:
        connect_queue: full name of this service's work queue that forwards ConnectOrganization to
            github-data (see `workers.connect_provider`).
    """

    def __init__(self, db: Database, outbox: Outbox, membership: Membership, *, connect_queue: str) -> None:
        self._db = db
        self._outbox = outbox
        self._membership = membership
        self._connect_queue = connect_queue

    async def connect_local(
        self, *, organization_id: str, display_name: str, root_path: str, request_id: str
    ) -> organization_pb2.Organization:
        """Create an organization backed by the directory `root_path`, make the caller its owner and
        enqueue its connection to github-data (which syncs the repositories in the background).

        Idempotent: a retry with the same `request_id`, or connecting the same id to the same
        directory again, returns the existing organization (adding the caller as owner).
        Raises InvalidArgument (not an absolute path to a directory, bad id), AlreadyExists
        (`ORGANIZATION_ID_TAKEN`: the id belongs to another directory), PermissionDenied (service caller).
        """
        user_id = _caller.user_id()
        require(os.path.isabs(root_path), "root_path", "must be an absolute path", domain=DOMAIN)
        is_dir = await asyncio.to_thread(os.path.isdir, root_path)
        require(is_dir, "root_path", "is not a directory", domain=DOMAIN)
        root = os.path.normpath(root_path)  # noqa: ASYNC240 - string-only, no I/O
        base = os.path.basename(root) or "root"
        org_id = check_organization_id(organization_id or f"local-{slugify(base) or 'root'}")
        require(len(request_id) <= 64, "request_id", "must be at most 64 characters", domain=DOMAIN)
        now = now_us()
        try:
            async with self._db.transaction() as session:
                existing = (
                    await a.get_organization_by_request(session, request_id=request_id)
                    if request_id
                    else None
                )
                existing = existing or await a.get_organization(session, org_id=org_id)
                if existing is not None and existing.local_root_path != root:
                    raise AlreadyExists(
                        f"organization {existing.id!r} is connected to another directory",
                        reason="ORGANIZATION_ID_TAKEN",
                        domain=DOMAIN,
                        metadata={"organization": organization_name(existing.id)},
                    )
                if existing is None:
                    await self._create(session, org_id, display_name or base, root, request_id or None, now)
                org_id = existing.id if existing is not None else org_id
                await self._add_owner(session, org_id, user_id, now)
                row = await a.get_organization(session, org_id=org_id)
                status = await q.get_sync_status(session, org_id=org_id)
        except IntegrityError:  # a concurrent connect created it first: answer from its row
            raise AlreadyExists(
                f"organization {org_id!r} already exists", reason="ORGANIZATION_ID_TAKEN", domain=DOMAIN
            ) from None
        self._membership.forget(organization_name(org_id))
        return records.organization(row, status)

    async def _create(
        self, session: Any, org_id: str, display_name: str, root: str, request_id: str | None, now: int
    ) -> None:
        await a.insert_organization(
            session,
            id=org_id,
            kind=organization_pb2.ORGANIZATION_KIND_PERSONAL,
            display_name=display_name,
            slug=org_id,
            primary_domain="personal",
            default_model="",
            auto_import_repositories=True,
            provider=sync_status_pb2.PROVIDER_LOCAL,
            github_login="",
            github_account_id=0,
            local_root_path=root,
            request_id=request_id,
            create_us=now,
            update_us=now,
        )
        # Until github-data reports progress the organization shows PENDING (its own event versions
        # start at 1, so our version-0 placeholder never hides a real report).
        status = sync_status_pb2.SyncStatus(
            name=sync_status_name(org_id),
            state=sync_status_pb2.SYNC_STATE_PENDING,
            provider=sync_status_pb2.PROVIDER_LOCAL,
            installation_status=sync_status_pb2.INSTALLATION_STATUS_CONNECTED,
            connected_account=root,
            label="Waiting for the first sync",
        )
        status.update_time.CopyFrom(from_us(now))
        await q.put_sync_status(session, org_id=org_id, status=status.SerializeToString())
        connection = connection_pb2.Connection(
            name=f"organizations/{org_id}/connection",
            provider=sync_status_pb2.PROVIDER_LOCAL,
            local=connection_pb2.LocalSettings(root_path=root),
        )
        await self._outbox.enqueue(
            session,
            queue=self._connect_queue,
            message=gh_pb2.ConnectOrganizationRequest(connection=connection, request_id=f"connect-{org_id}"),
        )
        await record_change(session, scope=summary_scope(org_id), name=status.name, resource=status)

    async def _add_owner(self, session: Any, org_id: str, user_id: str, now: int) -> None:
        member = await a.get_member(session, org_id=org_id, user_id=user_id)
        if member is not None and member.state == ACTIVE:
            return
        user = await a.get_user(session, user_id=user_id)
        await members.put_member(
            self._outbox,
            session,
            org_id=org_id,
            user_id=user_id,
            existing=member,
            login=user.login if user else user_id,
            display_name=user.display_name if user else user_id,
            email=user.email if user else "",
            avatar_url=user.avatar_url if user else "",
            role=OWNER,
            state=ACTIVE,
        )
        await app_feed.organization_joined(session, org_id=org_id, user_id=user_id)

    async def get(self, name: str) -> organization_pb2.Organization:
        """One organization (members only). Raises NotFound, PermissionDenied."""
        org_id = parse_organization(name)
        await self._membership.require(organization_name(org_id))
        async with self._db.snapshot() as session:
            row = await a.get_organization(session, org_id=org_id)
            status = await q.get_sync_status(session, org_id=org_id)
        if row is None:
            raise organization_not_found(org_id)
        return records.organization(row, status)

    async def list_organizations(
        self, *, page_size: int, page_token: str
    ) -> tuple[list[organization_pb2.Organization], str]:
        """The caller's eligible organizations by display name; page_token is an offset."""
        user_id = _caller.user_id()
        offset, limit = offset_page(page_size, page_token, default=100, maximum=1000, domain=DOMAIN)
        async with self._db.snapshot() as session:
            ids = await a.eligible_organization_ids(session, user_id=user_id)
            rows = await a.get_organizations(session, org_ids=ids)
            statuses = await q.get_sync_statuses(session, org_ids=ids)
        page = rows[offset : offset + limit]
        token = str(offset + limit) if offset + limit < len(rows) else ""
        return [records.organization(r, statuses.get(r.id)) for r in page], token

    async def list_members(
        self, *, parent: str, page_size: int, page_token: str
    ) -> tuple[list[member_pb2.Member], str]:
        """Members by login; page_token is the last login of the previous page."""
        org_id = parse_organization(parent, "parent")
        require(page_size >= 0, "page_size", "must not be negative", domain=DOMAIN)
        await self._membership.require(organization_name(org_id))
        limit = min(page_size or 100, 1000)
        async with self._db.snapshot() as session:
            rows = await a.list_members(session, org_id=org_id, after_login=page_token, limit=limit + 1)
        return [records.member(r) for r in rows[:limit]], rows[limit - 1].login if len(rows) > limit else ""

    async def get_member(self, name: str) -> member_pb2.Member:
        """One member. Raises NotFound, PermissionDenied."""
        org_id, user_id = parse_child(name, "members")
        await self._membership.require(organization_name(org_id))
        async with self._db.snapshot() as session:
            row = await a.get_member(session, org_id=org_id, user_id=user_id)
        if row is None:
            raise NotFound(f"member {name} not found", reason="MEMBER_NOT_FOUND", domain=DOMAIN)
        return records.member(row)

    async def check_membership(self, *, organization: str, user: str) -> tuple[bool, int]:
        """(active member?, role). `user` empty = the caller; users may only ask about themselves,
        services about anyone. Never fails for a non-member."""
        org_id = parse_organization(organization, "organization")
        user_id = parse_user(user, "user") if user else _caller.user_id()
        _caller.require_self_or_service(user_id)
        async with self._db.snapshot() as session:
            row = await a.get_member(session, org_id=org_id, user_id=user_id)
        if row is None or row.state != ACTIVE:
            return False, member_pb2.MEMBER_ROLE_UNSPECIFIED
        return True, int(row.role)
