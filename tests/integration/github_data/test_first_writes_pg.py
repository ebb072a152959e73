"""github_data's first rows of an organization or user written by several transactions at once, on
PostgreSQL (two Connect calls for a new organization, two discoveries of a new user): every write
succeeds (upserts), where a read-then-insert failed on the primary key and answered INTERNAL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select

from services.github_data.domain.models import Connection
from services.github_data.store import queries, user_accounts
from services.github_data.store.tables import connections, metadata, sync_status, user_discoveries
from services.platform.db import Database
from tests.helpers.infra import pg_tables

pytestmark = pytest.mark.integration
WRITERS = 8
NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)


async def _at_once(db: Database, write: Callable[[object, int], Awaitable[None]]) -> None:
    """`write(session, n)` in WRITERS transactions, each open before any writes."""
    gate = asyncio.Barrier(WRITERS)

    async def one(n: int) -> None:
        async with db.transaction() as session:
            await gate.wait()
            await write(session, n)

    await asyncio.gather(*(one(n) for n in range(WRITERS)))


async def test_concurrent_first_connects_and_discoveries_all_succeed() -> None:
    async with pg_tables(metadata) as db:

        async def connect(session: object, n: int) -> None:
            await queries.save_connection(
                session,  # type: ignore[arg-type]
                connection=Connection("acme", "local", root_path=f"/srv/repos-{n}"),
                now=NOW,
            )
            await queries.create_status(session, org="acme", now=NOW)  # type: ignore[arg-type]

        async def discover(session: object, n: int) -> None:
            await user_accounts.put_discovery(
                session,  # type: ignore[arg-type]
                user_id="alice",
                state="running",
                now=NOW + dt.timedelta(seconds=n),
            )

        await _at_once(db, connect)
        await _at_once(db, discover)
        async with db.transaction() as session:
            stored = (await session.execute(select(connections))).all()
            status = (await session.execute(select(sync_status))).all()
            discovery = (await session.execute(select(user_discoveries))).all()
        assert len(stored) == 1 and stored[0].root_path.startswith("/srv/repos-"), stored
        assert len(status) == 1 and status[0].state == "pending", status
        # Every write counted: the version went up once per write.
        assert len(discovery) == 1 and discovery[0].version == WRITERS, discovery
