"""UpdateOrganization and UpdateUser: settings writes."""

from __future__ import annotations

from typing import Any

from foundry.organization.v1 import member_pb2, organization_pb2, user_pb2

from services.organization import convert
from services.organization.domain.errors import DOMAIN, organization_not_found
from services.organization.domain.names import (
    check_organization_id,
    organization_name,
    parse_organization,
    parse_user,
)
from services.organization.store import accounts as a
from services.organization.store import projection as q
from services.organization.usecases import _caller, app_feed
from services.platform import clock
from services.platform.db import Database
from services.platform.errors import InvalidArgument, NotFound, PermissionDenied, require

ORGANIZATION_FIELDS = (
    "display_name",
    "slug",
    "primary_domain",
    "default_model",
    "auto_import_repositories",
    "sandbox_egress",
    "permission_policy",
)
USER_FIELDS = ("display_name", "default_model")
_ADMINS = (member_pb2.MEMBER_ROLE_OWNER, member_pb2.MEMBER_ROLE_ADMIN)


def _mask(paths: list[str], allowed: tuple[str, ...]) -> list[str]:
    require(bool(paths), "update_mask", "must name at least one field", domain=DOMAIN)
    unknown = [p for p in paths if p not in allowed]
    if unknown:
        raise InvalidArgument(
            f"update_mask: unsupported fields {unknown}; allowed: {list(allowed)}",
            domain=DOMAIN,
            field_violations={"update_mask": "unsupported field"},
        )
    return paths


class SettingsWrites:
    """Writes of organization and user settings."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def update_organization(
        self, organization: organization_pb2.Organization, paths: list[str]
    ) -> organization_pb2.Organization:
        """Write the masked fields; admins, owners and services only.

        Raises InvalidArgument (mask or values), NotFound, PermissionDenied (`ADMIN_REQUIRED`)."""
        org_id = parse_organization(organization.name)
        values: dict[str, Any] = {p: getattr(organization, p) for p in _mask(paths, ORGANIZATION_FIELDS)}
        if "sandbox_egress" in values:
            require(
                values["sandbox_egress"] in organization_pb2.SandboxEgress.values(),
                "organization.sandbox_egress",
                f"unknown policy {values['sandbox_egress']}",
                domain=DOMAIN,
            )
        if "permission_policy" in values:
            require(
                values["permission_policy"] in organization_pb2.PermissionPolicy.values(),
                "organization.permission_policy",
                f"unknown policy {values['permission_policy']}",
                domain=DOMAIN,
            )
        if "slug" in values:
            check_organization_id(values["slug"], "organization.slug")
        if "display_name" in values:
            require(
                bool(values["display_name"].strip()),
                "organization.display_name",
                "must not be empty",
                domain=DOMAIN,
            )
        caller = _caller.current()
        async with self._db.transaction() as session:
            if await a.get_organization(session, org_id=org_id) is None:
                raise organization_not_found(org_id)
            if not caller.is_service:
                member = await a.get_member(session, org_id=org_id, user_id=caller.user_id)
                if (
                    member is None
                    or member.state != member_pb2.MEMBER_STATE_ACTIVE
                    or member.role not in _ADMINS
                ):
                    raise PermissionDenied(
                        "only admins and owners change settings",
                        reason="ADMIN_REQUIRED",
                        domain=DOMAIN,
                        metadata={"organization": organization_name(org_id)},
                    )
            await a.update_organization(session, org_id=org_id, update_time=clock.now(), **values)
            await app_feed.organization_changed(session, org_id=org_id)
            row = await a.get_organization(session, org_id=org_id)
            status = await q.get_sync_status(session, org_id=org_id)
        return convert.organization(row, status)

    async def update_user(self, user: user_pb2.User, paths: list[str]) -> user_pb2.User:
        """Write the caller's own `display_name` / `default_model`. Raises InvalidArgument, NotFound,
        PermissionDenied (another user)."""
        user_id = _caller.user_id() if user.name == "users/me" else parse_user(user.name, "user.name")
        _caller.require_self_or_service(user_id)
        values: dict[str, Any] = {p: getattr(user, p) for p in _mask(paths, USER_FIELDS)}
        async with self._db.transaction() as session:
            if await a.get_user(session, user_id=user_id) is None:
                raise NotFound(f"user {user_id!r} not found", reason="USER_NOT_FOUND", domain=DOMAIN)
            await a.update_user(session, user_id=user_id, update_time=clock.now(), **values)
            await app_feed.user_changed(session, user_id=user_id)
            row = await a.get_user(session, user_id=user_id)
            eligible = await a.eligible_organization_ids(session, user_id=user_id)
        return convert.user(row, eligible)
