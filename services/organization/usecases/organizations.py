"""Organizations and their members: ConnectLocalOrganization, Get/List, members, CheckMembership."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from foundry.github_data.v1 import connection_pb2, sync_status_pb2
from foundry.github_data.v1 import github_data_service_pb2 as gh_pb2
from foundry.organization.v1 import member_pb2, organization_pb2
from sqlalchemy.exc import IntegrityError

from services.organization import convert
from services.organization.convert import timestamp
from services.organization.domain.errors import DOMAIN, organization_not_found
from services.organization.domain.local_roots import check_local_root, expand_roots, overlaps
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
from services.organization.store import accounts as a
from services.organization.store import projection as q
from services.organization.usecases import _caller, app_feed, members
from services.platform import clock
from services.platform.authz import Membership
from services.platform.db import Database
from services.platform.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied, require
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


async def _is_member(session: Any, org_id: str, user_id: str) -> bool:
    row = await a.get_member(session, org_id=org_id, user_id=user_id)
    return row is not None and row.state == ACTIVE


class Organizations:
    """Organizations, members and membership checks.

    Args:
        connect_queue: full name of this service's work queue that forwards ConnectOrganization to
            github-data (see `workers.connect_provider`).
        allowed_roots: directories local organizations may lie in (`{user}`: the caller's id).
        protected_paths: directories no local organization may be, lie in or hold (the mesh's own).
    """

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        membership: Membership,
        *,
        connect_queue: str,
        allowed_roots: Sequence[str],
        protected_paths: Sequence[str],
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._membership = membership
        self._connect_queue = connect_queue
        self._allowed_roots = list(allowed_roots)
        self._protected = [PurePosixPath(p) for p in protected_paths]

    async def connect_local(
        self, *, organization_id: str, display_name: str, root_path: str, request_id: str
    ) -> organization_pb2.Organization:
        """Create an organization backed by the directory `root_path`, make the caller its owner and
        enqueue its connection to github-data (which syncs the repositories in the background).

        The path is resolved (symlinks followed) and must lie inside one of the allowed roots
        (`Settings.allowed_local_roots`), never be, lie in or hold the mesh's data directory or sandbox
        root, and not overlap a directory another organization the caller is not a member of holds.
        Connecting never grants membership: it creates an organization or returns one the caller
        already belongs to (a retry with the same `request_id`, or the same id and directory).

        Raises InvalidArgument (not an absolute path to a directory, bad id, `ROOT_PROTECTED`),
        PermissionDenied (`ROOT_NOT_ALLOWED`, `LOCAL_ROOTS_DISABLED`, `ROOT_CONNECTED_ELSEWHERE`,
        service caller), AlreadyExists (`ORGANIZATION_ID_TAKEN`: the id belongs to another directory or
        to an organization the caller is not a member of).
        """
        user_id = _caller.user_id()
        require(os.path.isabs(root_path), "root_path", "must be an absolute path", domain=DOMAIN)
        root = await asyncio.to_thread(os.path.realpath, root_path)
        is_dir = await asyncio.to_thread(os.path.isdir, root)
        require(is_dir, "root_path", "is not a directory", domain=DOMAIN)
        check_local_root(root, allowed=expand_roots(self._allowed_roots, user_id), protected=self._protected)
        base = os.path.basename(root) or "root"
        org_id = check_organization_id(organization_id or f"local-{slugify(base) or 'root'}")
        require(len(request_id) <= 64, "request_id", "must be at most 64 characters", domain=DOMAIN)
        now = clock.now()
        try:
            async with self._db.transaction() as session:
                by_request = (
                    await a.get_organization_by_request(session, request_id=request_id)
                    if request_id
                    else None
                )
                if by_request is not None and not await _is_member(session, by_request.id, user_id):
                    by_request = None  # another user's request id: never an answer for this caller
                existing = by_request or await a.get_organization(session, org_id=org_id)
                if existing is not None and (
                    existing.local_root_path != root or not await _is_member(session, existing.id, user_id)
                ):
                    raise AlreadyExists(
                        f"organization id {existing.id!r} is taken; choose another id",
                        reason="ORGANIZATION_ID_TAKEN",
                        domain=DOMAIN,
                        metadata={"organization": organization_name(existing.id)},
                    )
                if existing is None:
                    await self._refuse_foreign_overlap(session, root, user_id)
                    await self._create(session, org_id, display_name or base, root, request_id or None, now)
                    await self._add_owner(session, org_id, user_id, now)
                org_id = existing.id if existing is not None else org_id
                row = await a.get_organization(session, org_id=org_id)
                status = await q.get_sync_status(session, org_id=org_id)
        except IntegrityError:  # a concurrent connect (or another user's request id) got there first
            raise AlreadyExists(
                f"organization {org_id!r} already exists", reason="ORGANIZATION_ID_TAKEN", domain=DOMAIN
            ) from None
        self._membership.forget(organization_name(org_id))
        return convert.organization(row, status)

    async def _refuse_foreign_overlap(self, session: Any, root: str, user_id: str) -> None:
        """PermissionDenied when `root` is, holds or lies in another organization's directory whose
        members do not include the caller (connecting it would hand them that organization's code)."""
        for other in await a.local_organizations(session):
            if overlaps(root, other.local_root_path) and not await _is_member(session, other.id, user_id):
                raise PermissionDenied(
                    f"{root} overlaps the directory of an organization you are not a member of; ask "
                    "one of its owners to add you",
                    reason="ROOT_CONNECTED_ELSEWHERE",
                    domain=DOMAIN,
                )

    async def _create(
        self,
        session: Any,
        org_id: str,
        display_name: str,
        root: str,
        request_id: str | None,
        now: dt.datetime,
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
            create_time=now,
            update_time=now,
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
        status.update_time.CopyFrom(timestamp(now))
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

    async def _add_owner(self, session: Any, org_id: str, user_id: str, now: dt.datetime) -> None:
        member = await a.get_member(session, org_id=org_id, user_id=user_id)
        if member is None or member.state != ACTIVE:
            await self._activate(
                session, org_id, user_id, member, await a.get_user(session, user_id=user_id), OWNER
            )

    async def _activate(
        self, session: Any, org_id: str, user_id: str, existing: Any, user: Any, role: int
    ) -> None:
        """Make `user_id` an ACTIVE member with `role` (profile from its user row, if any), publish
        MemberChanged and put the organization in the user's app shell."""
        await members.put_member(
            self._outbox,
            session,
            org_id=org_id,
            user_id=user_id,
            existing=existing,
            login=user.login if user else user_id,
            display_name=user.display_name if user else user_id,
            email=user.email if user else "",
            avatar_url=user.avatar_url if user else "",
            role=role,
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
        return convert.organization(row, status)

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
        return [convert.organization(r, statuses.get(r.id)) for r in page], token

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
        return [convert.member(r) for r in rows[:limit]], rows[limit - 1].login if len(rows) > limit else ""

    async def create_member(self, *, parent: str, user: str, role: int) -> member_pb2.Member:
        """Add `user` (signed in before) to the local organization `parent` as an ACTIVE member.

        Raises InvalidArgument (names, role), PermissionDenied (caller not an owner or admin; an admin
        adding an owner), FailedPrecondition `NOT_LOCAL` (GitHub organizations take members from
        GitHub), NotFound (`USER_NOT_FOUND`), AlreadyExists (`MEMBER_EXISTS`).
        """
        org_id = parse_organization(parent, "parent")
        user_id = parse_user(user, "member.user")
        role = role or member_pb2.MEMBER_ROLE_MEMBER
        require(role in member_pb2.MemberRole.values(), "member.role", f"unknown role {role}", domain=DOMAIN)
        caller_id = _caller.user_id()
        await self._membership.require(organization_name(org_id))
        async with self._db.transaction() as session:
            org = await a.get_organization(session, org_id=org_id)
            if org is None:
                raise organization_not_found(org_id)
            caller = await a.get_member(session, org_id=org_id, user_id=caller_id)
            caller_role = int(caller.role) if caller is not None and caller.state == ACTIVE else 0
            if caller_role not in (OWNER, member_pb2.MEMBER_ROLE_ADMIN) or (
                role == OWNER and caller_role != OWNER
            ):
                raise PermissionDenied(
                    "only owners may add members (and only owners may add an owner)",
                    reason="NOT_AN_OWNER",
                    domain=DOMAIN,
                )
            if not org.local_root_path:
                raise FailedPrecondition(
                    f"{organization_name(org_id)} takes its members from GitHub",
                    reason="NOT_LOCAL",
                    domain=DOMAIN,
                )
            account = await a.get_user(session, user_id=user_id)
            if account is None:
                raise NotFound(
                    f"users/{user_id} has never signed in here", reason="USER_NOT_FOUND", domain=DOMAIN
                )
            existing = await a.get_member(session, org_id=org_id, user_id=user_id)
            if existing is not None and existing.state == ACTIVE:
                raise AlreadyExists(
                    f"users/{user_id} is already a member of {organization_name(org_id)}",
                    reason="MEMBER_EXISTS",
                    domain=DOMAIN,
                )
            await self._activate(session, org_id, user_id, existing, account, role)
            row = await a.get_member(session, org_id=org_id, user_id=user_id)
        self._membership.forget(organization_name(org_id))
        return convert.member(row)

    async def get_member(self, name: str) -> member_pb2.Member:
        """One member. Raises NotFound, PermissionDenied."""
        org_id, user_id = parse_child(name, "members")
        await self._membership.require(organization_name(org_id))
        async with self._db.snapshot() as session:
            row = await a.get_member(session, org_id=org_id, user_id=user_id)
        if row is None:
            raise NotFound(f"member {name} not found", reason="MEMBER_NOT_FOUND", domain=DOMAIN)
        return convert.member(row)

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
