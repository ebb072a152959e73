"""Users, auth sessions and the app shell (GetAppSnapshot, WatchApp, SelectOrganization)."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from foundry.common.v1 import watch_pb2
from foundry.organization.v1 import app_snapshot_pb2, user_pb2
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization import convert
from services.organization.domain.errors import DOMAIN, not_a_member, precondition, session_invalid
from services.organization.domain.names import (
    app_scope,
    app_snapshot_name,
    check_login,
    organization_name,
    parse_app_snapshot,
    parse_auth_session,
    parse_organization,
    parse_user,
    slugify,
)
from services.organization.store import accounts as a
from services.organization.store import github as g
from services.organization.store import projection as q
from services.organization.usecases import _caller, app_feed
from services.platform import clock
from services.platform.db import Database
from services.platform.errors import NotFound, PermissionDenied, Unauthenticated, require
from services.platform.settings import Settings
from services.platform.watch import TokenCodec, WatchHub, read_scope

M = TypeVar("M", bound=Message)
SIGNED_IN = app_snapshot_pb2.AUTH_STATUS_SIGNED_IN
SIGNED_OUT = app_snapshot_pb2.AUTH_STATUS_SIGNED_OUT


def _user_not_found(user_id: str) -> NotFound:
    return NotFound(f"user {user_id!r} not found", reason="USER_NOT_FOUND", domain=DOMAIN)


def _app_snapshot_owner(name: str) -> str | None:
    """The user id of the app snapshot singleton `name` (`users/{user}/appSnapshot`); None for
    `users/me` asked by a service (it then means the auth session's user).

    Raises InvalidArgument (empty or malformed name) and PermissionDenied (a user naming another user).
    """
    named = parse_app_snapshot(name)
    caller = _caller.current()
    if caller.is_service:
        return None if named == "me" else named
    if named not in ("me", caller.user_id):
        raise PermissionDenied(
            f"{name} is another user's app snapshot; use users/me/appSnapshot",
            reason="NOT_YOUR_USER",
            domain=DOMAIN,
        )
    return caller.user_id


def _session_of(owner: str | None, auth_session: str, name: str) -> str:
    """The user id of `auth_session`, which must belong to `owner` (when known). Raises
    InvalidArgument (malformed) and PermissionDenied (another user's session)."""
    user_id, _ = parse_auth_session(auth_session)
    if owner is not None and user_id != owner:
        raise PermissionDenied(
            f"auth_session {auth_session} does not belong to the user of {name}",
            reason="NOT_YOUR_USER",
            domain=DOMAIN,
        )
    _caller.require_self_or_service(user_id)
    return user_id


class Accounts:
    """Sign-in, auth sessions and the app shell of one auth session."""

    def __init__(
        self,
        db: Database,
        hub: WatchHub,
        settings: Settings,
    ) -> None:
        self._db = db
        self._hub = hub
        self._settings = settings

    # -- sign-in ----------------------------------------------------------------------------------

    async def sign_in_local(
        self, *, login: str, display_name: str, email: str, user_agent: str
    ) -> tuple[user_pb2.User, user_pb2.AuthSession]:
        """Create or update the local user `local-<slug of login>` and open an auth session.

        Raises FailedPrecondition `LOCAL_SIGN_IN_DISABLED` unless `gateway.dev_sign_in` is on, and
        InvalidArgument for a bad login.
        """
        if not self._settings.gateway.dev_sign_in:
            raise precondition("LOCAL_SIGN_IN_DISABLED", "offline sign-in is disabled by configuration")
        check_login(login)
        user_id = f"local-{slugify(login)}"
        return await self._sign_in(
            user_id,
            user_agent,
            identity_provider=user_pb2.IDENTITY_PROVIDER_LOCAL,
            login=login,
            display_name=display_name or login,
            email=email or f"{login}@localhost",
            avatar_url="",
            github_account_id=0,
            role_label="Local user",
        )

    async def sign_in_with_github(
        self,
        *,
        github_account_id: int,
        login: str,
        display_name: str,
        email: str,
        avatar_url: str,
        user_agent: str,
    ) -> tuple[user_pb2.User, user_pb2.AuthSession]:
        """Create or update the GitHub user (id = GitHub account id) and open a session. The OAuth
        token goes to github-data (the gateway calls its SetGithubToken), which discovers the user's
        accounts; `usecases.github_discovery` applies what it found."""
        require(github_account_id > 0, "github_account_id", "must be positive", domain=DOMAIN)
        check_login(login)
        user_id = str(github_account_id)
        return await self._sign_in(
            user_id,
            user_agent,
            identity_provider=user_pb2.IDENTITY_PROVIDER_GITHUB,
            login=login,
            display_name=display_name or login,
            email=email or f"{github_account_id}+{login}@users.noreply.github.com",
            avatar_url=avatar_url,
            github_account_id=github_account_id,
            role_label="GitHub user",
        )

    async def _sign_in(
        self,
        user_id: str,
        user_agent: str,
        **profile: Any,
    ) -> tuple[user_pb2.User, user_pb2.AuthSession]:
        now = clock.now()
        ttl = dt.timedelta(hours=self._settings.gateway.session_ttl_hours)
        session_id = secrets.token_hex(16)
        async with self._db.transaction() as session:
            await a.put_user(
                session,
                user_id=user_id,
                default_model="",
                create_time=now,
                update_time=now,
                last_sign_in_time=now,
                **profile,
            )
            await a.insert_auth_session(
                session,
                id=session_id,
                user_id=user_id,
                active_organization="",
                user_agent=user_agent,
                create_time=now,
                expire_time=now + ttl,
                revoke_time=None,
            )
            row = await a.get_auth_session(session, session_id=session_id)
            await app_feed.user_changed(session, user_id=user_id)
            await app_feed.auth_session_changed(session, row=row)
            user_row = await a.get_user(session, user_id=user_id)
            user = convert.user(user_row, await a.eligible_organization_ids(session, user_id=user_id))
        return user, convert.auth_session(row)

    # -- auth sessions ----------------------------------------------------------------------------

    async def _valid_session(self, session: AsyncSession, name: str) -> Any:
        """The session row; raises NotFound, or Unauthenticated SESSION_REVOKED / SESSION_EXPIRED."""
        user_id, session_id = parse_auth_session(name, "name")
        row = await a.get_auth_session(session, session_id=session_id)
        if row is None or row.user_id != user_id:
            raise NotFound(f"auth session {name} not found", reason="SESSION_NOT_FOUND", domain=DOMAIN)
        if row.revoke_time is not None:
            raise session_invalid("SESSION_REVOKED", "the auth session was revoked")
        if row.expire_time <= clock.now():
            raise session_invalid("SESSION_EXPIRED", "the auth session expired")
        return row

    async def get_auth_session(self, name: str) -> tuple[user_pb2.AuthSession, user_pb2.User]:
        """A valid auth session and its user. Raises NotFound or Unauthenticated (see `_valid_session`)."""
        user_id, _ = parse_auth_session(name, "name")
        _caller.require_self_or_service(user_id)
        async with self._db.snapshot() as session:
            row = await self._valid_session(session, name)
            user_row = await a.get_user(session, user_id=row.user_id)
            eligible = await a.eligible_organization_ids(session, user_id=row.user_id)
        if user_row is None:
            raise _user_not_found(row.user_id)
        return convert.auth_session(row), convert.user(user_row, eligible)

    async def sign_out(self, name: str) -> user_pb2.AuthSession:
        """Revoke the auth session; revoking a revoked session succeeds. Raises NotFound."""
        user_id, session_id = parse_auth_session(name)
        _caller.require_self_or_service(user_id)
        async with self._db.transaction() as session:
            row = await a.get_auth_session(session, session_id=session_id)
            if row is None or row.user_id != user_id:
                raise NotFound(f"auth session {name} not found", reason="SESSION_NOT_FOUND", domain=DOMAIN)
            if row.revoke_time is None:
                await a.update_auth_session(session, session_id=session_id, revoke_time=clock.now())
                row = await a.get_auth_session(session, session_id=session_id)
                await app_feed.auth_session_changed(session, row=row)
        return convert.auth_session(row)

    # -- users ------------------------------------------------------------------------------------

    async def get_user(self, name: str) -> user_pb2.User:
        """`users/{id}` or `users/me`. Users may read themselves; services anyone. Raises NotFound."""
        user_id = _caller.user_id() if name == "users/me" else parse_user(name)
        _caller.require_self_or_service(user_id)
        async with self._db.snapshot() as session:
            row = await a.get_user(session, user_id=user_id)
            eligible = await a.eligible_organization_ids(session, user_id=user_id)
        if row is None:
            raise _user_not_found(user_id)
        return convert.user(row, eligible)

    # -- app shell --------------------------------------------------------------------------------

    async def _snapshot(self, session: AsyncSession, row: Any) -> app_snapshot_pb2.AppSnapshot:
        user_row = await a.get_user(session, user_id=row.user_id)
        eligible = await a.eligible_organization_ids(session, user_id=row.user_id)
        statuses = await q.get_sync_statuses(session, org_ids=eligible)
        orgs = [
            convert.organization(o, statuses.get(o.id))
            for o in await a.get_organizations(session, org_ids=eligible)
        ]
        names = [o.name for o in orgs]
        active = (
            row.active_organization
            if row.active_organization in names
            else (names[0] if len(names) == 1 else "")
        )
        snap = app_snapshot_pb2.AppSnapshot(
            name=app_snapshot_name(row.user_id),
            auth_status=SIGNED_IN,
            auth_session=convert.auth_session(row),
            organizations=orgs,
            active_organization=active,
        )
        if user_row is not None:
            snap.user.CopyFrom(convert.user(user_row, eligible))
        discovery = await g.get_discovery(session, user_id=row.user_id)
        if discovery is not None:
            snap.github_discovery.CopyFrom(convert.github_discovery(discovery))
        return snap

    async def get_app_snapshot(
        self, name: str, auth_session: str
    ) -> tuple[app_snapshot_pb2.AppSnapshot, str]:
        """The app shell `name` (`users/{user}/appSnapshot`, `users/me` = the caller) of
        `auth_session` and a WatchApp resume token ("" when signed out).

        An empty, unknown, expired or revoked session gives a signed-out snapshot. Raises
        InvalidArgument (bad name) and PermissionDenied (another user's snapshot or session).
        """
        owner = _app_snapshot_owner(name)
        if not auth_session:
            return app_snapshot_pb2.AppSnapshot(auth_status=SIGNED_OUT), ""
        user_id = _session_of(owner, auth_session, name)
        async with self._db.snapshot() as session:
            try:
                row = await self._valid_session(session, auth_session)
            except (NotFound, Unauthenticated):
                return app_snapshot_pb2.AppSnapshot(auth_status=SIGNED_OUT), ""
            version = (await read_scope(session, app_scope(user_id))).version
            snap = await self._snapshot(session, row)
        return snap, TokenCodec(app_scope(user_id)).encode(version)

    async def select_organization(
        self, *, auth_session: str, organization: str
    ) -> app_snapshot_pb2.AppSnapshot:
        """Make `organization` the session's active one; returns the new app shell at once.

        Raises PermissionDenied (not eligible), NotFound / Unauthenticated (bad session).
        """
        user_id, session_id = parse_auth_session(auth_session)
        org_id = parse_organization(organization, "organization")
        _caller.require_self_or_service(user_id)
        async with self._db.transaction() as session:
            await self._valid_session(session, auth_session)
            if org_id not in await a.eligible_organization_ids(session, user_id=user_id):
                raise not_a_member(organization_name(org_id), f"users/{user_id}")
            await a.update_auth_session(
                session, session_id=session_id, active_organization=organization_name(org_id)
            )
            row = await a.get_auth_session(session, session_id=session_id)
            await app_feed.auth_session_changed(session, row=row)
            return await self._snapshot(session, row)

    async def watch_app(
        self, name: str, auth_session: str, resume_token: str, wrap: Callable[[watch_pb2.WatchEvent], M]
    ) -> AsyncIterator[M]:
        """WatchApp of the singleton `name` (as in `get_app_snapshot`): items are the User, the user's
        AuthSessions and each eligible Organization (an organization that stops being eligible is a
        DELETE item). The session is checked before the first event (UNAUTHENTICATED) and at every
        bookmark (END `unauthorized`)."""
        user_id = _session_of(_app_snapshot_owner(name), auth_session, name)

        async def authorize() -> None:
            _caller.require_self_or_service(user_id)
            async with self._db.snapshot() as session:
                await self._valid_session(session, auth_session)

        async def snapshot(session: AsyncSession) -> list[tuple[str, Message]]:
            row = await a.get_auth_session(session, session_id=auth_session.rsplit("/", 1)[-1])
            snap = await self._snapshot(session, row)
            items: list[tuple[str, Message]] = [(snap.auth_session.name, snap.auth_session)]
            if snap.HasField("user"):
                items.insert(0, (snap.user.name, snap.user))
            items.extend((o.name, o) for o in snap.organizations)
            if snap.HasField("github_discovery"):
                items.append((snap.github_discovery.name, snap.github_discovery))
            return items

        async for response in self._hub.stream(
            app_scope(user_id), resume_token=resume_token, snapshot=snapshot, authorize=authorize, wrap=wrap
        ):
            yield response
