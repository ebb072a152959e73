"""GetOrganizationSummary and WatchOrganizationSummary: reads of the projection, for members only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from foundry.common.v1 import watch_pb2
from foundry.organization.v1 import organization_summary_pb2 as summary_pb2
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization.domain.names import organization_name, parse_summary, summary_scope
from services.organization.usecases.projection import read_summary, summary_items
from services.platform.authz import Membership
from services.platform.db import Database
from services.platform.watch import TokenCodec, WatchHub, read_scope

M = TypeVar("M", bound=Message)


class Summaries:
    """The organization summary projection as clients read it."""

    def __init__(self, db: Database, hub: WatchHub, membership: Membership) -> None:
        self._db = db
        self._hub = hub
        self._membership = membership

    async def get(self, name: str) -> tuple[summary_pb2.OrganizationSummary, str]:
        """The summary `organizations/{org}/summary` and the resume token of its version.

        Reads only this service's tables, in one snapshot transaction. Raises InvalidArgument (bad
        name) or PermissionDenied (caller not a member).
        """
        org_id = parse_summary(name)
        await self._membership.require(organization_name(org_id))
        scope = summary_scope(org_id)
        async with self._db.snapshot() as session:
            version = (await read_scope(session, scope)).version
            summary = await read_summary(session, org_id=org_id)
        return summary, TokenCodec(scope).encode(version)

    async def watch(
        self, name: str, resume_token: str, wrap: Callable[[watch_pb2.WatchEvent], M]
    ) -> AsyncIterator[M]:
        """The Watch stream of the summary (shared Watch contract; items are TaskSummary,
        RepositorySummary, PullRequestSummary and SyncStatus). Membership is checked before the
        first event (PERMISSION_DENIED) and at every bookmark (END `unauthorized`)."""
        org_id = parse_summary(name)
        org = organization_name(org_id)

        async def authorize() -> None:
            await self._membership.require(org)

        async def snapshot(session: AsyncSession) -> list[tuple[str, Message]]:
            return await summary_items(session, org_id=org_id)

        async for response in self._hub.stream(
            summary_scope(org_id),
            resume_token=resume_token,
            snapshot=snapshot,
            authorize=authorize,
            wrap=wrap,
        ):
            yield response
