"""The audit log: appended from the `organization.audit` work queue, listed newest first."""

from __future__ import annotations

import datetime as dt

from foundry.organization.v1 import audit_event_pb2
from foundry.organization.v1 import events_pb2 as org_events
from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization import convert
from services.organization.convert import to_time
from services.organization.domain.errors import DOMAIN
from services.organization.domain.names import organization_name, parse_child, parse_organization
from services.organization.store import audit as store
from services.platform import clock
from services.platform.authz import Membership
from services.platform.db import Database
from services.platform.errors import require


async def append(session: AsyncSession, message: org_events.AppendAuditEvent, *, fallback_id: str) -> int:
    """Store one AppendAuditEvent work item (`audit_event`, then each of `audit_events`) in the
    caller's transaction; returns how many entries were new (an event id already stored is skipped).
    `fallback_id` (the message id) is used when the sender gave no event id; the further entries are
    stored under `{event id}/{index}`.

    Raises InvalidArgument for a malformed organization or an empty kind (dead-lettered)."""
    org_id = parse_organization(message.organization, "organization")
    event_id = message.event_id or fallback_id
    entries = [message.audit_event, *message.audit_events]
    for index, event in enumerate(entries):
        field = "audit_event" if index == 0 else f"audit_events[{index - 1}]"
        require(bool(event.kind), f"{field}.kind", "is required", domain=DOMAIN)
    stored = 0
    for index, event in enumerate(entries):
        stored += await store.append(
            session,
            organization_id=org_id,
            event_id=event_id[:64] if index == 0 else f"{event_id[:56]}/{index}",
            kind=event.kind,
            repository=event.repository,
            task=event.task,
            branch=event.branch,
            actor=event.actor,
            payload=json_format.MessageToDict(event.payload) if event.HasField("payload") else {},
            create_time=to_time(event.create_time) or clock.now(),
        )
    return stored


_LATEST_US = clock.to_us(dt.datetime.max.replace(tzinfo=dt.UTC))  # a token's time is an instant


class AuditLog:
    """ListAuditEvents."""

    def __init__(self, db: Database, membership: Membership) -> None:
        self._db = db
        self._membership = membership

    async def list_events(
        self, *, parent: str, repository: str, branch: str, task: str, page_size: int, page_token: str
    ) -> tuple[list[audit_event_pb2.AuditEvent], str]:
        """Events newest first, filtered by repository, branch and task; page_size 0 → 20, max 500.

        Raises InvalidArgument (bad names or token), PermissionDenied (not a member)."""
        org_id = parse_organization(parent, "parent")
        if repository:
            parse_child(repository, "repositories", "repository")
        if task:
            parse_child(task, "tasks", "task")
        require(page_size >= 0, "page_size", "must not be negative", domain=DOMAIN)
        before: tuple[dt.datetime, int] | None = None
        if page_token:  # "{create_time in µs since the epoch}.{id}" of the last event of the page before
            at, _, row_id = page_token.partition(".")
            require(
                at.isdigit() and row_id.isdigit() and int(at) <= _LATEST_US,
                "page_token",
                "is not a token of this list",
                domain=DOMAIN,
            )
            before = (clock.from_us(int(at)), int(row_id))
        await self._membership.require(organization_name(org_id))
        limit = min(page_size or 20, 500)
        async with self._db.snapshot() as session:
            rows = await store.list_events(
                session,
                org_id=org_id,
                repository=repository,
                branch=branch,
                task=task,
                before=before,
                limit=limit + 1,
            )
        token = ""
        if len(rows) > limit:  # more after this page: resume after its last event
            last = rows[limit - 1]
            token = f"{clock.to_us(last.create_time)}.{last.id}"
        return [convert.audit_event(r) for r in rows[:limit]], token
