"""Organizations' model API keys: set and cleared by admins (write-only), listed by name to members,
resolved with their values for service callers only (the task service hands them to its agents).

A key is stored sealed (`services.platform.secrets.SecretBox`: a Fernet token under
`Settings.credentials_key`) and bound to the organization and the variable, so a row copied to
another organization or variable does not open. Values never appear in a response other than
ResolveModelCredentials, in logs, or in the audit log.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable

from foundry.organization.v1 import member_pb2
from foundry.organization.v1 import organization_service_pb2 as pb
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization.convert import timestamp
from services.organization.domain.errors import DOMAIN, organization_not_found
from services.organization.domain.names import organization_name, parse_child, parse_organization
from services.organization.store import accounts as a
from services.organization.store import audit as audit_store
from services.organization.store import model_credentials as store
from services.organization.usecases import _caller
from services.platform import clock
from services.platform.authz import Membership
from services.platform.db import Database
from services.platform.errors import InvalidArgument, PermissionDenied, require
from services.platform.logging import get_logger
from services.platform.secrets import SecretBox, SecretUnreadable

log = get_logger(__name__)
_ADMINS = (member_pb2.MEMBER_ROLE_OWNER, member_pb2.MEMBER_ROLE_ADMIN)
COLLECTION = "modelCredentials"
_MAX_VALUE_CHARS = 16_384


class ModelCredentials:
    """SetModelCredential, DeleteModelCredential, ListModelCredentials, ResolveModelCredentials.

    Args:
        variables: the variable names an organization may set (every name of
            Settings.sandbox.agent_credentials).
        secret: Settings.credentials_key's value.
    """

    def __init__(
        self, db: Database, membership: Membership, *, variables: Iterable[str], secret: str
    ) -> None:
        self._db = db
        self._membership = membership
        self._variables = frozenset(variables)
        self._box = SecretBox(secret)

    def _check_variable(self, variable: str, field: str) -> None:
        if variable not in self._variables:
            raise InvalidArgument(
                f"{field}: {variable!r} is not a model API key variable of this mesh "
                f"(its variables: {', '.join(sorted(self._variables)) or 'none'})",
                domain=DOMAIN,
                field_violations={field: "unknown variable"},
            )

    async def _require_admin(self, session: AsyncSession, org_id: str) -> str:
        """The calling user's id ("" for a service); PermissionDenied `ADMIN_REQUIRED` otherwise."""
        if await a.get_organization(session, org_id=org_id) is None:
            raise organization_not_found(org_id)
        caller = _caller.current()
        if caller.is_service:
            return ""
        member = await a.get_member(session, org_id=org_id, user_id=caller.user_id)
        if member is None or member.state != member_pb2.MEMBER_STATE_ACTIVE or member.role not in _ADMINS:
            raise PermissionDenied(
                "only admins and owners change model API keys",
                reason="ADMIN_REQUIRED",
                domain=DOMAIN,
                metadata={"organization": organization_name(org_id)},
            )
        return caller.user_id

    @staticmethod
    async def _audit(session: AsyncSession, org_id: str, user_id: str, kind: str, variable: str) -> None:
        await audit_store.append(
            session,
            organization_id=org_id,
            event_id=uuid.uuid4().hex,
            kind=kind,
            repository="",
            task="",
            branch="",
            actor=f"users/{user_id}" if user_id else "",
            payload={"variable": variable},  # never the value
            create_time=clock.now(),
        )

    async def set(self, parent: str, variable: str, value: str) -> pb.ModelCredential:
        """Store `value` for `variable` (replacing it). Raises InvalidArgument, NotFound,
        PermissionDenied (`ADMIN_REQUIRED`)."""
        org_id = parse_organization(parent, "parent")
        self._check_variable(variable, "variable")
        require(bool(value.strip()), "value", "must not be empty", domain=DOMAIN)
        require(
            len(value) <= _MAX_VALUE_CHARS,
            "value",
            f"longer than {_MAX_VALUE_CHARS} characters",
            domain=DOMAIN,
        )
        require("\0" not in value and "\n" not in value, "value", "must be one line", domain=DOMAIN)
        secret = self._box.seal(value, org_id, variable)
        at = clock.now()
        async with self._db.transaction() as session:
            user_id = await self._require_admin(session, org_id)
            await store.upsert(
                session, org_id=org_id, variable=variable, secret=secret, update_user=user_id, update_time=at
            )
            await self._audit(session, org_id, user_id, "model_credential.set", variable)
        log.info("model_credential_set", organization=org_id, variable=variable)
        return self._message(org_id, variable, user_id, at)

    async def delete(self, name: str) -> None:
        """Clear one key (clearing an unset one succeeds). Raises InvalidArgument, NotFound,
        PermissionDenied (`ADMIN_REQUIRED`)."""
        org_id, variable = parse_child(name, COLLECTION)
        self._check_variable(variable, "name")
        async with self._db.transaction() as session:
            user_id = await self._require_admin(session, org_id)
            if await store.remove(session, org_id=org_id, variable=variable):
                await self._audit(session, org_id, user_id, "model_credential.deleted", variable)
        log.info("model_credential_deleted", organization=org_id, variable=variable)

    async def list(self, parent: str) -> list[pb.ModelCredential]:
        """Which variables are set, never their values. Raises NotFound, PermissionDenied (not a member)."""
        org_id = parse_organization(parent, "parent")
        await self._membership.require(organization_name(org_id))
        async with self._db.snapshot() as session:
            if await a.get_organization(session, org_id=org_id) is None:
                raise organization_not_found(org_id)
            rows = await store.list_for(session, org_id=org_id)
        return [self._message(org_id, r.variable, r.update_user, r.update_time) for r in rows]

    async def resolve(self, organization: str) -> dict[str, str]:
        """Variable -> key of the organization. Service callers only: PermissionDenied
        (`SERVICE_CALLER_REQUIRED`) otherwise. A key that does not decrypt (the credentials key
        changed) is left out and logged (without it)."""
        if not _caller.current().is_service:
            raise PermissionDenied(
                "only services read model API keys", reason="SERVICE_CALLER_REQUIRED", domain=DOMAIN
            )
        org_id = parse_organization(organization, "organization")
        async with self._db.snapshot() as session:
            rows = await store.list_for(session, org_id=org_id)
        keys: dict[str, str] = {}
        for row in rows:
            try:
                keys[row.variable] = self._box.open(row.secret, org_id, row.variable)
            except SecretUnreadable as exc:  # another key, or a row copied from elsewhere
                log.warning(
                    "model_credential_unreadable", organization=org_id, variable=row.variable, why=str(exc)
                )
        return keys

    @staticmethod
    def _message(org_id: str, variable: str, user_id: str, at: dt.datetime) -> pb.ModelCredential:
        return pb.ModelCredential(
            name=f"{organization_name(org_id)}/{COLLECTION}/{variable}",
            variable=variable,
            update_time=timestamp(at),
            update_user=f"users/{user_id}" if user_id else "",
        )
