"""GitHub organization discovery, as github-data reports it: github-data owns users' OAuth tokens and
reads the accounts a token sees; its `github_data.user_accounts.changed` events (applied here by
`apply_event`, newer versions only) say where the discovery is and, once done, what it found. This
service stays the only writer of organizations and memberships.

`apply` is idempotent: an organization, membership or installation that is already as discovered is
not written again (no Watch change, no second connect). It creates or updates the personal
organization and one per GitHub organization (domain.github_accounts), makes the user owner / admin
(an existing active membership keeps its role), removes memberships of GitHub organizations the user
left, and enqueues github-data's ConnectOrganization (queue `organization.connect_provider`) for a
connected organization whose connection is new or changed. A connected organization is never
downgraded to `install_required` by one user's view (installations visible to users differ; removals
arrive as webhooks at github-data). An organization id already used by a non-GitHub organization or
another GitHub account is skipped and logged. A failed discovery (`record_failure`) shows its error.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from foundry.github_data.v1 import connection_pb2, sync_status_pb2
from foundry.github_data.v1 import events_pb2 as gh_events_pb2
from foundry.github_data.v1 import github_data_service_pb2 as gh_pb2
from foundry.organization.v1 import member_pb2, organization_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization import convert
from services.organization.domain.github_accounts import Discovered, GithubAccount, personal_id, plan
from services.organization.domain.names import (
    app_scope,
    organization_name,
    parse_user,
    summary_scope,
    sync_status_name,
)
from services.organization.store import accounts as a
from services.organization.store import github as g
from services.organization.store import projection as q
from services.organization.usecases import app_feed, members
from services.platform import clock
from services.platform.authz import Membership
from services.platform.logging import get_logger
from services.platform.outbox import Outbox
from services.platform.watch import record_change

log = get_logger(__name__)

PERSONAL = organization_pb2.ORGANIZATION_KIND_PERSONAL
SHARED = organization_pb2.ORGANIZATION_KIND_ORGANIZATION
ACTIVE = member_pb2.MEMBER_STATE_ACTIVE
ROLES = {"owner": member_pb2.MEMBER_ROLE_OWNER, "admin": member_pb2.MEMBER_ROLE_ADMIN}
CONNECTED = sync_status_pb2.INSTALLATION_STATUS_CONNECTED
INSTALL_REQUIRED = sync_status_pb2.INSTALLATION_STATUS_INSTALL_REQUIRED
_INSTALLATION = {"connected": CONNECTED, "install_required": INSTALL_REQUIRED}


class GithubDiscovery:
    """Applies github-data's account discoveries to organizations and memberships.

    Args:
        connect_queue: full name of this service's `connect_provider` work queue.
    """

    def __init__(self, outbox: Outbox, membership: Membership, *, connect_queue: str) -> None:
        self._outbox = outbox
        self._membership = membership
        self._connect_queue = connect_queue

    async def apply_event(self, session: AsyncSession, event: gh_events_pb2.UserAccountsChanged) -> bool:
        """Apply one `github_data.user_accounts.changed` event unless a newer one was applied; True
        when it was applied. PENDING/RUNNING update the app shell's discovery state, DONE creates or
        updates the organizations and memberships it implies, ERROR records the failure."""
        user_id = parse_user(event.user, "user")
        name = convert.github_discovery_name(user_id)
        if not await q.accept_version(session, name=name, version=event.version):
            return False
        at = (convert.to_time(event.update_time) if event.HasField("update_time") else None) or clock.now()
        if event.state == gh_events_pb2.USER_ACCOUNTS_STATE_DONE:
            viewer, organizations, installations = convert.discovered_accounts(event)
            kept = await self.apply(
                session, user_id=user_id, found=plan(viewer, organizations, installations)
            )
            log.info("github_discovery_applied", user=user_id, organizations=kept)
        elif event.state == gh_events_pb2.USER_ACCOUNTS_STATE_ERROR:
            await self.record_failure(session, user_id=user_id, error=event.error_message)
        else:
            state = "running" if event.state == gh_events_pb2.USER_ACCOUNTS_STATE_RUNNING else "queued"
            await g.put_discovery(session, user_id=user_id, state=state, error_message="", update_time=at)
            await app_feed.discovery_changed(session, user_id=user_id)
        return True

    # -- applying a discovery -----------------------------------------------------------------------

    async def apply(self, session: AsyncSession, *, user_id: str, found: list[Discovered]) -> list[str]:
        """Write what `discover` found for `user_id`; returns the organization ids the user is in.

        Watch changes (app scopes, summary scopes) and connect work items join the session's transaction.
        """
        user = await a.get_user(session, user_id=user_id)
        if user is None:
            return []
        now = clock.now()
        kept: list[str] = []
        memberships_changed = False
        for item in found:
            org_id, org_changed = await self._organization(session, item, now)
            if org_id is None:
                continue
            kept.append(org_id)
            joined = await self._member(session, org_id, user, ROLES[item.role], now)
            org_changed |= await self._installation(session, org_id, item, user_id, now)
            if org_changed:
                await app_feed.organization_changed(session, org_id=org_id)
            elif joined:
                await self._show(session, org_id, user_id)
            memberships_changed |= joined
        accounts = {i.account.account_id for i in found if i.kind == "organization"}
        for row in await g.github_memberships(session, user_id=user_id, kind=SHARED):
            if row.github_account_id not in accounts:  # the user left the GitHub organization
                existing = await a.get_member(session, org_id=row.id, user_id=user_id)
                await members.delete_member(self._outbox, session, org_id=row.id, existing=existing)
                await record_change(
                    session, scope=app_scope(user_id), name=organization_name(row.id), resource=None
                )
                memberships_changed = True
                log.info("github_membership_removed", organization=row.id, user=user_id)
        if memberships_changed:
            await app_feed.user_changed(session, user_id=user_id)
        await g.put_discovery(
            session, user_id=user_id, state="synced", error_message="", update_time=now, synced_time=now
        )
        await app_feed.discovery_changed(session, user_id=user_id)
        return kept

    def forget_memberships(self) -> None:
        """Drop cached membership answers after a discovery committed (its joins and removals)."""
        self._membership.forget()

    async def _organization(
        self, session: AsyncSession, item: Discovered, now: dt.datetime
    ) -> tuple[str | None, bool]:
        """(id, changed) of the organization backing `item`, created if missing; id None on a conflict."""
        kind = PERSONAL if item.kind == "user" else SHARED
        row = await g.find_github_organization(session, account_id=item.account.account_id, kind=kind)
        if row is not None:
            if row.github_login == item.account.login:
                return row.id, False
            await a.update_organization(
                session, org_id=row.id, github_login=item.account.login, update_time=now
            )
            return row.id, True
        if await a.get_organization(session, org_id=item.organization_id) is not None:
            log.warning(
                "github_organization_id_taken",
                organization=item.organization_id,
                github_login=item.account.login,
                github_account_id=item.account.account_id,
            )
            return None, False
        await a.insert_organization(
            session,
            id=item.organization_id,
            kind=kind,
            display_name=item.display_name,
            slug=item.organization_id,
            primary_domain=item.primary_domain,
            default_model="",
            auto_import_repositories=True,
            provider=sync_status_pb2.PROVIDER_GITHUB,
            github_login=item.account.login,
            github_account_id=item.account.account_id,
            local_root_path="",
            request_id=None,
            create_time=now,
            update_time=now,
        )
        return item.organization_id, True

    async def _member(
        self, session: AsyncSession, org_id: str, user: Any, role: int, now: dt.datetime
    ) -> bool:
        """Make the user an active member with `role` unless they already are one (role kept)."""
        member = await a.get_member(session, org_id=org_id, user_id=user.id)
        if member is not None and member.state == ACTIVE:
            return False
        await members.put_member(
            self._outbox,
            session,
            org_id=org_id,
            user_id=user.id,
            existing=member,
            login=user.login,
            display_name=user.display_name,
            email=user.email,
            avatar_url=user.avatar_url,
            role=role,
            state=ACTIVE,
        )
        return True

    async def _installation(
        self, session: AsyncSession, org_id: str, item: Discovered, user_id: str, now: dt.datetime
    ) -> bool:
        """Record the installation status; enqueue a connect when newly connected or its installation
        changed. True when the organization's visible status changed."""
        stored = await g.get_installation(session, org_id=org_id)
        status = _INSTALLATION[item.installation]
        installation_id = item.installation_id
        if stored is not None and stored.installation_status == CONNECTED:
            status = CONNECTED  # never downgraded by one user's view
            installation_id = installation_id or int(stored.installation_id)
        connected_id = stored.connected_installation_id if stored is not None else None
        if status == CONNECTED and connected_id != installation_id:
            await self._connect(session, org_id, item, installation_id, user_id)
            connected_id = installation_id
        if (
            stored is not None
            and stored.installation_status == status
            and stored.installation_id == installation_id
            and stored.connected_installation_id == connected_id
        ):
            return False
        await g.put_installation(
            session,
            org_id=org_id,
            installation_status=status,
            installation_id=installation_id,
            connected_installation_id=connected_id,
            update_time=now,
        )
        if stored is not None and stored.installation_status == status:
            return False
        if status == CONNECTED:
            label = "Waiting for the first sync"
        else:
            label = f"Install the GitHub App on {item.account.login}"
        return await self._placeholder(
            session, org_id, state=sync_status_pb2.SYNC_STATE_PENDING, installation=status,
            account=item.account.login, label=label, now=now,
        )  # fmt: skip

    async def _connect(
        self, session: AsyncSession, org_id: str, item: Discovered, installation_id: int, user_id: str
    ) -> None:
        account_type = (
            connection_pb2.GITHUB_ACCOUNT_TYPE_USER
            if item.kind == "user"
            else connection_pb2.GITHUB_ACCOUNT_TYPE_ORGANIZATION
        )
        connection = connection_pb2.Connection(
            name=f"organizations/{org_id}/connection",
            provider=sync_status_pb2.PROVIDER_GITHUB,
            github=connection_pb2.GithubSettings(
                account_login=item.account.login,
                account_id=item.account.account_id,
                account_type=account_type,
                installation_id=installation_id,
                token_user=f"users/{user_id}",
            ),
        )
        request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"connect/{org_id}/{installation_id}"))
        await self._outbox.enqueue(
            session,
            queue=self._connect_queue,
            message=gh_pb2.ConnectOrganizationRequest(connection=connection, request_id=request_id),
        )
        log.info("github_connect_enqueued", organization=org_id, installation_id=installation_id)

    async def _placeholder(
        self,
        session: AsyncSession,
        org_id: str,
        *,
        state: sync_status_pb2.SyncState.ValueType,
        installation: sync_status_pb2.InstallationStatus.ValueType,
        account: str,
        label: str,
        now: dt.datetime,
        error: str = "",
    ) -> bool:
        """Write our own sync status (version 0) until github-data reports one; True when written."""
        name = sync_status_name(org_id)
        if await g.reported_version(session, name=name) > 0:
            return False
        status = sync_status_pb2.SyncStatus(
            name=name,
            state=state,
            provider=sync_status_pb2.PROVIDER_GITHUB,
            installation_status=installation,
            connected_account=account,
            label=label,
            error_message=error,
        )
        status.update_time.CopyFrom(convert.timestamp(now))
        await q.put_sync_status(session, org_id=org_id, status=status.SerializeToString())
        await record_change(session, scope=summary_scope(org_id), name=name, resource=status)
        return True

    async def _show(self, session: AsyncSession, org_id: str, user_id: str) -> None:
        row = await a.get_organization(session, org_id=org_id)
        org = convert.organization(row, await q.get_sync_status(session, org_id=org_id))
        await record_change(session, scope=app_scope(user_id), name=org.name, resource=org)

    # -- persistent failure ---------------------------------------------------------------------------

    async def record_failure(self, session: AsyncSession, *, user_id: str, error: str) -> None:
        """Record why discovery failed for good, on the user's discovery record (the app shell's
        `github_discovery`, state ERROR with the message) and as an ERROR sync status of their
        personal organization (created from the sign-in profile if missing; only while github-data
        has not reported a status of its own)."""
        now = clock.now()
        await g.put_discovery(session, user_id=user_id, state="failed", error_message=error, update_time=now)
        await app_feed.discovery_changed(session, user_id=user_id)
        user = await a.get_user(session, user_id=user_id)
        if user is None or not user.github_account_id:
            return
        account = GithubAccount(
            login=user.login, account_id=int(user.github_account_id), name=user.display_name
        )
        item = Discovered(
            organization_id=personal_id(user.login),
            kind="user",
            account=account,
            role="owner",
            installation="connected",
            installation_id=0,
        )
        org_id, _ = await self._organization(session, item, now)
        if org_id is None:
            return
        joined = await self._member(session, org_id, user, ROLES["owner"], now)
        await self._placeholder(
            session, org_id, state=sync_status_pb2.SYNC_STATE_ERROR,
            installation=sync_status_pb2.INSTALLATION_STATUS_UNSPECIFIED, account=user.login,
            label="GitHub organization discovery failed", error=error, now=now,
        )  # fmt: skip
        await app_feed.organization_changed(session, org_id=org_id)
        if joined:
            await app_feed.user_changed(session, user_id=user_id)
